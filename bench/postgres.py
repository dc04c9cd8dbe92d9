"""Our PostgreSQL backend beside the PostgreSQL job queues people would pick instead, in one run.

    python bench/postgres.py [--url postgresql://postgres@127.0.0.1/test] [--jobs N] [--rounds R]
                             [--out bench/RESULTS-postgres.md]

The same two-stage lifecycle as ``bench/embedded.py``, one worker process per stage, all started
together: stage one takes a message, records the job's status and enqueues a message for stage
two; stage two takes it and records the final status. Jobs are enqueued before the clock
starts; msgs/s counts both stages' messages. Each system runs in a fresh schema of one database
(logged tables: durable, as ours); rounds are interleaved and the table shows medians.

- ours: ``Worker`` on ``postgresql://...?schema=...``, default batches (and batch_size=10), commit + emit + ack in one
  transaction;
- procrastinate (async tasks, its worker with LISTEN/NOTIFY, concurrency 1 and 10): a task
  upserts its status row and defers the next task;
- pgqueuer (durable tables, batch 10): an entrypoint upserts its status row and enqueues the
  next job.

Peers are benchmark-only dependencies (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import Counting, emit_table, versions  # noqa: E402
from noop_pipeline import PIPELINES, pipeline  # noqa: E402

from orchestrator.logging import configure_logging  # noqa: E402

DEFAULT_URL = os.environ.get("ORCHESTRATOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
Stage = Callable[[str, str, int, Any], None]  # (server url, schema, stage index, counter)


def _with_path(url: str, schema: str) -> str:
    """A libpq URL whose sessions use ``schema`` first (for the peers, which read search_path)."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def _drop(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


STATUS_TABLE = "CREATE TABLE IF NOT EXISTS bench_status (job INT PRIMARY KEY, status TEXT NOT NULL)"
UPSERT = "INSERT INTO bench_status(job, status) VALUES ({}, {}) ON CONFLICT (job) DO UPDATE SET status=excluded.status"


# -- ours -------------------------------------------------------------------------------------
def ours_seed(url: str, schema: str, n: int) -> None:
    from orchestrator.backends import postgres_backend
    from orchestrator.controllers.submit import submit_many

    backend = postgres_backend(f"{url}{'&' if '?' in url else '?'}schema={schema}")
    pipeline.setup(backend)
    submit_many(backend, [(f"b{i}", {}) for i in range(n)], queue="bench_a")
    backend.close()


def ours_stage(batch: int | None, begin: str = "deferred") -> Stage:
    """A ``Worker`` on one stage; ``batch`` None: the default, batches sized to the handlers' pace."""
    def run(url: str, schema: str, stage: int, counter: Any) -> None:
        from orchestrator import Worker
        from orchestrator.backends import postgres_backend

        configure_logging(level="error")
        backend = postgres_backend(f"{url}{'&' if '?' in url else '?'}schema={schema}")
        w = Worker(PIPELINES[begin], ("one", "two")[stage], backend, batch_size=batch, wait_s=0.5)
        w.middleware.append(Counting(counter))
        w.run()
    return run


# -- procrastinate ----------------------------------------------------------------------------
def _procrastinate(url: str, schema: str) -> tuple[Any, Any, Any]:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=_with_path(url, schema)))
    counter: list[Any] = [None]

    @app.task(queue="b", name="two")  # type: ignore[misc]
    async def two(i: int) -> None:
        await app.connector.execute_query_async(UPSERT.format("%(i)s", "'COMPLETED'"), i=i)  # type: ignore[arg-type]
        counter[0].value += 1

    @app.task(queue="a", name="one")  # type: ignore[misc]
    async def one(i: int) -> None:
        await app.connector.execute_query_async(UPSERT.format("%(i)s", "'RUNNING'"), i=i)  # type: ignore[arg-type]
        await two.defer_async(i=i)
        counter[0].value += 1

    return app, one, counter


def procrastinate_seed(url: str, schema: str, n: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {schema}")
        c.execute(f"SET search_path TO {schema}")
        c.execute(STATUS_TABLE)
    app, one, _ = _procrastinate(url, schema)

    async def seed() -> None:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            await one.batch_defer_async(*[{"i": i} for i in range(n)])

    asyncio.run(seed())


def procrastinate_stage(concurrency: int) -> Stage:
    def run(url: str, schema: str, stage: int, counter: Any) -> None:
        app, _, slot = _procrastinate(url, schema)
        slot[0] = counter
        app.run_worker(queues=["ab"[stage]], concurrency=concurrency, wait=True, install_signal_handlers=False,
                       delete_jobs="successful")
    return run


# -- pgqueuer ---------------------------------------------------------------------------------
def pgqueuer_seed(url: str, schema: str, n: int) -> None:
    import psycopg
    from pgqueuer.queries import Queries

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {schema}")
        c.execute(f"SET search_path TO {schema}")
        c.execute(STATUS_TABLE)

    async def seed() -> None:
        from pgqueuer.adapters.drivers.psycopg import PsycopgDriver

        conn = await psycopg.AsyncConnection.connect(_with_path(url, schema), autocommit=True)
        q = Queries(PsycopgDriver(conn))
        await q.install(create_schema=False)
        for start in range(0, n, 1000):
            idx = range(start, min(n, start + 1000))
            await q.enqueue(["one"] * len(idx), [str(i).encode() for i in idx], [0] * len(idx))
        await conn.close()

    asyncio.run(seed())


def pgqueuer_stage(url: str, schema: str, stage: int, counter: Any) -> None:
    import psycopg
    from pgqueuer import PgQueuer
    from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
    from pgqueuer.queries import Queries

    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(_with_path(url, schema), autocommit=True)
        work = await psycopg.AsyncConnection.connect(_with_path(url, schema), autocommit=True)
        driver = PsycopgDriver(conn)
        pgq = PgQueuer(driver)
        queries = Queries(PsycopgDriver(work))

        if stage == 0:
            @pgq.entrypoint("one")  # type: ignore[misc]
            async def one(job: Any) -> None:
                i = int(job.payload)
                await work.execute(UPSERT.format("%s", "'RUNNING'"), (i,))  # type: ignore[arg-type]
                await queries.enqueue("two", job.payload, 0)
                counter.value += 1
        else:
            @pgq.entrypoint("two")  # type: ignore[misc]
            async def two(job: Any) -> None:
                await work.execute(UPSERT.format("%s", "'COMPLETED'"), (int(job.payload),))  # type: ignore[arg-type]
                counter.value += 1

        await pgq.run(batch_size=10)

    asyncio.run(main())


# -- running ----------------------------------------------------------------------------------
SYSTEMS: dict[str, tuple[Callable[[str, str, int], None], Stage, int]] = {
    "ours, PostgreSQL, 1 proc/stage": (ours_seed, ours_stage(None), 1),
    "ours, PostgreSQL, 2 procs/stage": (ours_seed, ours_stage(None), 2),
    "ours, PostgreSQL, batch_size=10, 1 proc/stage": (ours_seed, ours_stage(10), 1),
    "ours, PostgreSQL, begin=lazy, 1 proc/stage": (ours_seed, ours_stage(None, "lazy"), 1),
    "ours, PostgreSQL, begin=eager, 1 proc/stage": (ours_seed, ours_stage(None, "eager"), 1),
    "procrastinate, concurrency 1, 1 proc/stage": (procrastinate_seed, procrastinate_stage(1), 1),
    "procrastinate, concurrency 10, 1 proc/stage": (procrastinate_seed, procrastinate_stage(10), 1),
    "pgqueuer, batch 10, 1 proc/stage": (pgqueuer_seed, pgqueuer_stage, 1),
}
REFERENCE = "ours, PostgreSQL, 1 proc/stage"


def run_system(name: str, url: str, n: int) -> float:
    seed, stage, procs = SYSTEMS[name]
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        seed(url, schema, n)
        ctx = mp.get_context("fork")
        counters = [(s, ctx.Value("q", 0, lock=False)) for s in (0, 1) for _ in range(procs)]
        ps = [ctx.Process(target=stage, args=(url, schema, s, c), daemon=True) for s, c in counters]
        for p in ps:
            p.start()
        # spawned interpreters take a moment to import: start the clock at the first message
        while sum(c.value for _, c in counters) == 0:
            if any(p.exitcode is not None for p in ps):
                raise RuntimeError(f"{name}: a stage exited ({[p.exitcode for p in ps]})")
            time.sleep(0.001)
        start, done0 = time.perf_counter(), sum(c.value for _, c in counters)
        while sum(c.value for s, c in counters if s == 1) < n:
            if time.perf_counter() - start > 600 or any(p.exitcode is not None for p in ps):
                raise RuntimeError(f"{name}: did not finish (exit codes {[p.exitcode for p in ps]})")
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        for p in ps:
            p.terminate()
            p.join()
        return (2 * n - done0) / elapsed
    finally:
        _drop(url, schema)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=DEFAULT_URL)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="write the table as markdown here too")
    ap.add_argument("--append", action="store_true", help="append to --out (after bench/embedded.py's table)")
    args = ap.parse_args()
    configure_logging(level="error")
    logging.getLogger("procrastinate").setLevel(logging.ERROR)  # its advice about where App lives
    rates: dict[str, list[float]] = {name: [] for name in SYSTEMS}
    for r in range(args.rounds):
        for name in SYSTEMS:
            rates[name].append(run_system(name, args.url, args.jobs))
            print(f"round {r + 1}: {name:55s} {rates[name][-1]:8.0f} msgs/s", flush=True)
    ref = statistics.median(rates[REFERENCE])
    import psycopg

    with psycopg.connect(args.url) as c:
        server = str(c.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    lines = [
        f"PostgreSQL {server} on this machine, {args.jobs} jobs ({2 * args.jobs} messages), median of {args.rounds} "
        f"interleaved rounds; {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{versions('psycopg', 'procrastinate', 'pgqueuer')}",
        "",
        "| system | msgs/s | ours (default, 1 proc) ÷ this |",
        "|---|---|---|",
    ]
    for name in SYSTEMS:
        med = statistics.median(rates[name])
        lines.append(f"| {name} | {med:,.0f} | {ref / med:.2f}x |")
    table = "\n".join(lines)
    print()
    emit_table(table, args.out, append=args.append)


if __name__ == "__main__":
    main()
