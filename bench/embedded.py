"""The embedded default beside the SQLite queues people would pick instead, in one run.

    python bench/embedded.py [--jobs N] [--rounds R] [--out bench/RESULTS.md]

Every system does the same two-stage lifecycle per job, one process per stage (two for the
"2 procs" rows), all processes started together: stage one takes a message, records the
job's status and enqueues a message for stage two (ours: commit + emit + ack in one
transaction); stage two takes it and records the final status. Jobs are enqueued before the
clock starts; msgs/s counts both stages' messages. Rounds are interleaved (every system once
per round) and the table shows medians, with each row's ratio to our default.

- ours: ``Worker`` on the SQLite default (``sqlite:///``): the default batches (sized to the
  handlers' pace, up to 100), and ``batch_size`` fixed at 10 (SQS's limit) and 1;
- huey ``SqliteHuey`` (WAL, synchronous=NORMAL), its consumer's dequeue/execute without the
  scheduler: a task records a result with ``put`` and enqueues the next task;
- persist-queue ``SQLiteAckQueue``: get, put to the next queue, ack (it has no status store);
- raw ``sqlite3`` (WAL, NORMAL), the bound for any SQLite queue in Python: a claim
  transaction and a commit transaction (status + next message + delete) per message, and per
  batch of 10;
- ours, the in-memory backend, one thread running both stages (no processes).

Peers are benchmark-only dependencies (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import Counting, emit_table, machine_pace, versions  # noqa: E402
from noop_pipeline import PIPELINES, pipeline  # noqa: E402

from orchestrator.logging import configure_logging  # noqa: E402

# (db, stage index, counter): a stage process runs until it is terminated, adding each message
# it finishes to its counter; the parent stops the clock when stage two's counters reach n.
Stage = Callable[[str, int, "Any"], None]


def _rss_kib(pid: int) -> int:
    """Memory process ``pid`` holds on its own (private clean + dirty pages), KiB: a forked
    process's plain RSS also counts every page it shares with its parent."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


# -- ours -------------------------------------------------------------------------------------
def ours_seed(db: str, n: int) -> None:
    from orchestrator.backends import sqlite_backend
    from orchestrator.controllers.submit import submit_many

    backend = sqlite_backend(db)
    pipeline.setup(backend)
    submit_many(backend, [(f"b{i}", {}) for i in range(n)], queue="bench_a")
    backend.close()  # its checkpointer thread would run on in this process beside the stages


def ours_stage(batch: int | None, begin: str = "deferred") -> Stage:
    """A ``Worker`` on one stage; ``batch`` None: the default, batches sized to the handlers' pace."""
    def run(db: str, stage: int, counter: Any) -> None:
        from orchestrator import Worker
        from orchestrator.backends import sqlite_backend
        from orchestrator.controllers.worker import settle_process

        configure_logging(level="error")
        w = Worker(PIPELINES[begin], ("one", "two")[stage], sqlite_backend(db), batch_size=batch,
                   wait_s=0.02)
        w.middleware.append(Counting(counter))
        settle_process()  # as `orchestrator worker` does before it runs
        w.run()
    return run


# -- huey -------------------------------------------------------------------------------------
def _hueys(db: str) -> tuple[object, object, object, object]:
    from huey import SqliteHuey
    from huey.storage import SqliteStorage

    class NormalSync(SqliteStorage):  # type: ignore[misc]
        def _create_connection(self) -> sqlite3.Connection:
            conn = super()._create_connection()
            conn.execute("pragma synchronous=1")  # NORMAL, as ours
            return conn  # type: ignore[no-any-return]

    class Huey(SqliteHuey):  # type: ignore[misc]
        storage_class = NormalSync

    a, b = Huey("bench_a", filename=db), Huey("bench_b", filename=db)

    @b.task()  # type: ignore[misc]
    def two(i: int) -> None:
        b.put(f"status-{i}", "COMPLETED")

    @a.task()  # type: ignore[misc]
    def one(i: int) -> None:
        a.put(f"status-{i}", "RUNNING")
        two(i)

    return a, b, one, two


def huey_seed(db: str, n: int) -> None:
    _, _, one, _ = _hueys(db)
    for i in range(n):
        one(i)  # type: ignore[operator]


def huey_stage(db: str, stage: int, counter: Any) -> None:
    h = _hueys(db)[stage]
    while True:
        task = h.dequeue()  # type: ignore[attr-defined]
        if task is None:
            time.sleep(0.001)
            continue
        h.execute(task)  # type: ignore[attr-defined]
        counter.value += 1


# -- persist-queue ----------------------------------------------------------------------------
def _pq(db: str, name: str) -> object:
    from persistqueue import SQLiteAckQueue

    return SQLiteAckQueue(os.path.dirname(db), db_file_name=os.path.basename(db), name=name,
                          multithreading=True, auto_commit=True)


def pq_seed(db: str, n: int) -> None:
    q = _pq(db, "bench_a")
    _pq(db, "bench_b")
    for i in range(n):
        q.put({"job_id": i})  # type: ignore[attr-defined]


def pq_stage(db: str, stage: int, counter: Any) -> None:
    import persistqueue

    src = _pq(db, ("bench_a", "bench_b")[stage])
    dst = _pq(db, "bench_b") if stage == 0 else None
    while True:
        try:
            item = src.get(block=False)  # type: ignore[attr-defined]
        except persistqueue.Empty:
            time.sleep(0.001)
            continue
        if dst is not None:
            dst.put(item)  # type: ignore[attr-defined]
        src.ack(item)  # type: ignore[attr-defined]
        counter.value += 1


# -- raw sqlite3 ------------------------------------------------------------------------------
def _raw(db: str) -> sqlite3.Connection:
    c = sqlite3.connect(db, isolation_level=None, timeout=30)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    return c


def raw_seed(db: str, n: int) -> None:
    c = _raw(db)
    c.executescript("""
        CREATE TABLE q (seq INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT, job TEXT, visible_at REAL, receipt TEXT);
        CREATE INDEX q_ready ON q(queue, visible_at, seq);
        CREATE TABLE jobs (job TEXT PRIMARY KEY, status TEXT);""")
    c.execute("BEGIN")
    c.executemany("INSERT INTO jobs VALUES (?, 'PENDING')", [(f"b{i}",) for i in range(n)])
    c.executemany("INSERT INTO q(queue, job, visible_at) VALUES ('a', ?, 0)", [(f"b{i}",) for i in range(n)])
    c.execute("COMMIT")


def raw_stage(batch: int) -> Stage:
    def run(db: str, stage: int, counter: Any) -> None:
        c = _raw(db)
        src, status = ("a", "RUNNING") if stage == 0 else ("b", "COMPLETED")
        while True:
            now = time.time()
            c.execute("BEGIN IMMEDIATE")  # claim: a lease, as a visibility timeout
            rows = c.execute("UPDATE q SET visible_at=?, receipt='r' WHERE seq IN (SELECT seq FROM q WHERE queue=? "
                             "AND visible_at<=? ORDER BY visible_at, seq LIMIT ?) RETURNING seq, job",
                             (now + 30, src, now, batch)).fetchall()
            c.execute("COMMIT")
            if not rows:
                time.sleep(0.001)
                continue
            c.execute("BEGIN IMMEDIATE")  # commit: status, next message, delete
            for seq, job in rows:
                c.execute("UPDATE jobs SET status=? WHERE job=?", (status, job))
                if stage == 0:
                    c.execute("INSERT INTO q(queue, job, visible_at) VALUES ('b', ?, ?)", (job, now))
                c.execute("DELETE FROM q WHERE seq=?", (seq,))
            c.execute("COMMIT")
            counter.value += len(rows)
    return run


# -- running ----------------------------------------------------------------------------------
SYSTEMS: dict[str, tuple[Callable[[str, int], None], Stage, int]] = {
    "ours, SQLite default, 1 proc/stage": (ours_seed, ours_stage(None), 1),
    "ours, SQLite default, 2 procs/stage": (ours_seed, ours_stage(None), 2),
    "ours, SQLite default, batch_size=10, 1 proc/stage": (ours_seed, ours_stage(10), 1),
    "ours, SQLite default, batch_size=1, 1 proc/stage": (ours_seed, ours_stage(1), 1),
    "ours, SQLite default, begin=lazy, 1 proc/stage": (ours_seed, ours_stage(None, "lazy"), 1),
    "ours, SQLite default, begin=eager, 1 proc/stage": (ours_seed, ours_stage(None, "eager"), 1),
    "huey SqliteHuey, 1 proc/stage": (huey_seed, huey_stage, 1),
    "persist-queue SQLiteAckQueue, 1 proc/stage": (pq_seed, pq_stage, 1),
    "raw sqlite3, per message, 1 proc/stage": (raw_seed, raw_stage(1), 1),
    "raw sqlite3, per batch of 10, 1 proc/stage": (raw_seed, raw_stage(10), 1),
}


REFERENCE = "ours, SQLite default, 1 proc/stage"


def _frozen(stage: Stage, db: str, index: int, counter: Any) -> None:
    """``stage`` in a forked child whose inherited objects the garbage collector leaves alone,
    as ``orchestrator worker`` freezes what it loaded: a child's full collections would walk
    the bench process's whole heap, and (writing to every object) copy it into the child's
    private memory."""
    gc.freeze()
    stage(db, index, counter)


def run_system(name: str, n: int) -> tuple[float, int]:
    seed, stage, procs = SYSTEMS[name]
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.db")
        seed(db, n)
        ctx = mp.get_context("fork")
        counters = [(s, ctx.Value("q", 0, lock=False)) for s in (0, 1) for _ in range(procs)]
        ps = [ctx.Process(target=_frozen, args=(stage, db, s, c), daemon=True) for s, c in counters]
        start = time.perf_counter()
        for p in ps:
            p.start()
        while sum(c.value for s, c in counters if s == 1) < n:
            if time.perf_counter() - start > 600 or any(p.exitcode is not None for p in ps):
                raise RuntimeError(f"{name}: did not finish (exit codes {[p.exitcode for p in ps]})")
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        peak = max(_rss_kib(p.pid) for p in ps if p.pid is not None)
        for p in ps:
            p.terminate()
            p.join()
        return 2 * n / elapsed, peak


def in_child(fn: Callable[[int], float], n: int) -> float:
    """``fn(n)`` in a forked process, its inherited heap frozen as the stage processes' is. The
    stage processes are forked from this one: a run in this process would grow its heap, and
    every later child's garbage collector would walk the inherited objects (our rows fell 25%
    from the first round to the third)."""
    ctx = mp.get_context("fork")
    out = ctx.Value("d", 0.0, lock=False)

    def run() -> None:
        gc.freeze()
        out.value = fn(n)

    p = ctx.Process(target=run)
    p.start()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"{fn.__name__} failed (exit code {p.exitcode})")
    return float(out.value)


def memory_single_thread(n: int) -> float:
    from orchestrator.backends import memory_backend
    from orchestrator.controllers.batching import BatchSizer
    from orchestrator.controllers.controller import Controller
    from orchestrator.controllers.submit import submit_many
    from orchestrator.controllers.worker import settle_process

    backend = memory_backend()
    pipeline.setup(backend)
    submit_many(backend, [(f"b{i}", {}) for i in range(n)], queue="bench_a")
    settle_process()  # as a worker process is readied
    start = time.perf_counter()
    for stage in ("one", "two"):
        st = pipeline.get(stage)
        ctrl = Controller(pipeline, st, backend)
        sizer = BatchSizer(limit=backend.transport.max_batch)  # as a worker sizes its receives
        while got := backend.transport.receive(st.source, max_messages=sizer.size, wait_s=0, visibility_s=30):
            handled_before = ctrl.handler_seconds
            ctrl.handle_batch(got)
            sizer.record(len(got), ctrl.handler_seconds - handled_before)
    return 2 * n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="write the table as markdown here too")
    args = ap.parse_args()
    configure_logging(level="error")
    rates: dict[str, list[float]] = {name: [] for name in SYSTEMS}
    rss: dict[str, list[int]] = {name: [] for name in SYSTEMS}
    mem: list[float] = []
    pace_before = machine_pace()
    for r in range(args.rounds):
        for name in SYSTEMS:
            rate, peak = run_system(name, args.jobs)
            rates[name].append(rate)
            rss[name].append(peak)
            print(f"round {r + 1}: {name:58s} {rate:8.0f} msgs/s", flush=True)
        mem.append(in_child(memory_single_thread, args.jobs))
        print(f"round {r + 1}: {'ours, memory backend, 1 thread':58s} {mem[-1]:8.0f} msgs/s", flush=True)
    ref = statistics.median(rates[REFERENCE])
    lines = [
        f"Embedded, {args.jobs} jobs ({2 * args.jobs} messages), median of {args.rounds} interleaved rounds; "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}; {versions('huey', 'persist-queue', 'pydantic')}",
        "",
        f"The machine's pace before the rounds: {pace_before}; after: {machine_pace()}",
        "",
        "| system | msgs/s | ours (default, 1 proc) ÷ this | private memory per process |",
        "|---|---|---|---|",
    ]
    for name in SYSTEMS:
        med = statistics.median(rates[name])
        lines.append(f"| {name} | {med:,.0f} | {ref / med:.2f}x | {statistics.median(rss[name]) / 1024:.0f} MiB |")
    lines.append(f"| ours, memory backend, 1 thread, both stages | {statistics.median(mem):,.0f} | "
                 f"{ref / statistics.median(mem):.2f}x | (in the bench process) |")
    table = "\n".join(lines)
    print()
    emit_table(table, args.out, append=False)


if __name__ == "__main__":
    main()
