"""Backlog scaling on the SQLite default: the cost per message with 1k, 100k and 1M queued.

    python bench/scaling.py [--backlogs 1000,100000,1000000] [--measure 500] [--rounds 5] [--out FILE --append]

For each backlog, a fresh database gets that many jobs queued for stage one (in one
transaction, before the clock starts); then one process handles ``--measure`` messages of
them (batch 10, the no-op two-stage pipeline's first stage: commit + emit + ack) and we report
microseconds per message. A receive reads the first ready rows from the ``(queue,
visible_at, seq)`` index, and every other statement goes by primary key, so the cost should not
grow with the backlog. Target: at 1M within 1.5x of the cost at 1k.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import emit_table  # noqa: E402
from noop_pipeline import pipeline  # noqa: E402

from orchestrator.backends import sqlite_backend  # noqa: E402
from orchestrator.controllers.controller import Controller  # noqa: E402
from orchestrator.controllers.submit import submit_many  # noqa: E402
from orchestrator.logging import configure_logging  # noqa: E402


def seed(b: object, backlog: int) -> None:
    """``backlog`` jobs as ``submit`` makes them, copied in SQL from one real submission (the
    protocol's own submit takes ~0.1 ms a job: 1M would take minutes), each with its own job
    id and message id."""
    from orchestrator.backends import Backend

    assert isinstance(b, Backend)
    submit_many(b, [("tmpl", {})], queue="bench_a")
    db = b.transport.db  # type: ignore[attr-defined]
    env_id = db.read("SELECT message_id FROM messages WHERE queue='bench_a'")[0][0]

    def tx(c: object) -> None:
        ids = "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        c.execute(ids + "INSERT INTO jobs(job_id, user_id, status, version, created_at, doc) "  # type: ignore[attr-defined]
                  "SELECT 'b' || i, user_id, status, version, created_at, "
                  "replace(replace(doc, '\"tmpl\"', '\"b' || i || '\"'), ?, printf('%032x', i)) "
                  "FROM n, jobs WHERE job_id = 'tmpl'", (backlog - 1, env_id))
        c.execute(ids + "INSERT INTO messages(queue, message_id, body, attrs, visible_at, enqueued_at) "  # type: ignore[attr-defined]
                  "SELECT queue, printf('%032x', i), replace(replace(body, '\"tmpl\"', '\"b' || i || '\"'), ?, "
                  "printf('%032x', i)), attrs, visible_at, enqueued_at FROM n, messages WHERE message_id = ?",
                  (backlog - 1, env_id, env_id))
        c.execute("DELETE FROM messages WHERE message_id = ?", (env_id,))  # type: ignore[attr-defined]
        c.execute("DELETE FROM jobs WHERE job_id = 'tmpl'")  # type: ignore[attr-defined]

    db.run(tx)


class Backlog:
    """A database holding ``size`` queued jobs. A small one is seeded afresh for every round (a
    round would use up a good part of it); a large one once."""

    def __init__(self, size: int, tmp: str) -> None:
        self.size, self.tmp, self.rounds, self.seeded_s = size, tmp, 0, 0.0
        self.b: object = None
        if size > 10_000:
            self._seed()

    def _seed(self) -> None:
        if self.b is not None:
            self.b.close()  # type: ignore[attr-defined]
        self.b = sqlite_backend(Path(self.tmp) / f"scale-{self.size}-{self.rounds}.db")
        pipeline.setup(self.b)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        seed(self.b, self.size)
        self.seeded_s = time.perf_counter() - t0

    def measure(self, n: int) -> float:
        """µs per message over ``n`` messages."""
        if self.size <= 10_000:
            self._seed()
        self.rounds += 1
        st = pipeline.get("one")
        ctrl = Controller(pipeline, st, self.b)  # type: ignore[arg-type]
        transport = self.b.transport  # type: ignore[attr-defined]
        done, t = 0, time.perf_counter()
        while done < n:
            got = transport.receive(st.source, max_messages=10, wait_s=0, visibility_s=30)
            if not got:
                break
            outcomes = ctrl.handle_batch(got)
            # the copied jobs must really run the protocol, not be dead-lettered cheaply
            assert all(o.value == "committed" for o in outcomes), outcomes
            done += len(got)
        return (time.perf_counter() - t) / max(1, done) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backlogs", default="1000,100000,1000000")
    ap.add_argument("--measure", type=int, default=500, help="messages handled per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    configure_logging(level="error")
    sizes = [int(x) for x in args.backlogs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        backlogs = [Backlog(n, tmp) for n in sizes]
        for b in backlogs:
            print(f"backlog {b.size:>9,}: seeded in {b.seeded_s:.1f}s", flush=True)
        samples: dict[int, list[float]] = {n: [] for n in sizes}
        for r in range(args.rounds):  # interleaved: every backlog once per round
            for b in backlogs:
                samples[b.size].append(b.measure(min(args.measure, b.size // 2)))
                print(f"round {r + 1}: backlog {b.size:>9,}: {samples[b.size][-1]:7.0f} µs/message", flush=True)
    rows = [(n, statistics.median(samples[n])) for n in sizes]
    base = rows[0][1]
    lines = ["", f"Backlog scaling, SQLite default, one process, stage one of the no-op pipeline, batch 10; median of "
             f"{args.rounds} interleaved rounds of {args.measure} messages each (a backlog of 10,000 or fewer is "
             "seeded afresh for each round)", "",
             "| queued messages | µs per message | ÷ the smallest backlog |", "|---|---|---|"]
    lines += [f"| {n:,} | {us:,.0f} | {us / base:.2f}x |" for n, us in rows]
    emit_table("\n".join(lines), args.out, append=args.append)


if __name__ == "__main__":
    main()
