"""Latency on PostgreSQL: submit -> final status for a trickle of jobs, beside pgqueuer.

    python bench/latency.py [--url postgresql://postgres@127.0.0.1/test] [--rate 50] [--jobs 500]
                            [--rounds 3] [--out bench/RESULTS.md --append]

The two-stage lifecycle of ``bench/postgres.py`` (one worker process per stage, started and
warmed up first), fed ``--rate`` jobs a second, one submit each, for ``--jobs`` jobs. A job's
latency runs from just before its submit call to the moment its final status is written:
ours, the commit of stage two (the job record's ``updated_at``, the server's clock); pgqueuer,
stage two's status upsert (its ``clock_timestamp()``). Client and server share this machine's
clock. Rounds are interleaved; the table shows the median of each round's p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import emit_table, versions  # noqa: E402
from noop_pipeline import pipeline  # noqa: E402
from postgres import DEFAULT_URL, _drop, _with_path, ours_stage  # noqa: E402

DONE_TABLE = "CREATE TABLE IF NOT EXISTS bench_done (job INT PRIMARY KEY, done_at FLOAT8 NOT NULL)"


def _percentiles(values: list[float]) -> tuple[float, float]:
    qs = statistics.quantiles(values, n=100, method="inclusive")
    return qs[49], qs[98]


# -- ours -------------------------------------------------------------------------------------
def ours(url: str, schema: str, n: int, rate: float) -> list[float]:
    from orchestrator.backends import postgres_backend

    backend = postgres_backend(f"{url}{'&' if '?' in url else '?'}schema={schema}")
    pipeline.setup(backend)
    ctx = mp.get_context("fork")
    ps = [ctx.Process(target=ours_stage(None), args=(url, schema, s, ctx.Value("q", 0, lock=False)), daemon=True)
          for s in (0, 1)]
    for p in ps:
        p.start()
    try:
        def done(job_id: str) -> float | None:
            rec = backend.store.get(job_id)
            return rec.updated_at if rec is not None and rec.status.value == "COMPLETED" else None

        _warm_up(lambda i: pipeline.submit(backend, job_id=f"w{i}", payload={}, queue="bench_a"),
                 lambda i: done(f"w{i}"))
        sent = _trickle(n, rate, lambda i: pipeline.submit(backend, job_id=f"j{i}", payload={}, queue="bench_a"))
        finished = _collect(n, lambda: {int(r.job_id[1:]): r.updated_at for r in backend.store.query()
                                        if r.job_id.startswith("j") and r.status.value == "COMPLETED"})
        return [finished[i] - sent[i] for i in range(n)]
    finally:
        for p in ps:
            p.terminate()
            p.join()
        backend.close()


# -- pgqueuer ---------------------------------------------------------------------------------
def _pgqueuer_stage(url: str, schema: str, stage: int) -> None:
    import psycopg
    from pgqueuer import PgQueuer
    from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
    from pgqueuer.queries import Queries

    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(_with_path(url, schema), autocommit=True)
        work = await psycopg.AsyncConnection.connect(_with_path(url, schema), autocommit=True)
        pgq = PgQueuer(PsycopgDriver(conn))
        queries = Queries(PsycopgDriver(work))
        upsert = ("INSERT INTO bench_done(job, done_at) VALUES (%s, extract(epoch from clock_timestamp())) "
                  "ON CONFLICT (job) DO UPDATE SET done_at=excluded.done_at")

        if stage == 0:
            @pgq.entrypoint("one")  # type: ignore[misc]
            async def one(job: Any) -> None:
                await queries.enqueue("two", job.payload, 0)
        else:
            @pgq.entrypoint("two")  # type: ignore[misc]
            async def two(job: Any) -> None:
                await work.execute(upsert, (int(job.payload),))  # the job's final status

        await pgq.run(batch_size=10)

    asyncio.run(main())


def pgqueuer(url: str, schema: str, n: int, rate: float) -> list[float]:
    import psycopg
    from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
    from pgqueuer.queries import Queries

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {schema}")
        c.execute(f"SET search_path TO {schema}")
        c.execute(DONE_TABLE)
    loop = asyncio.new_event_loop()
    aconn = loop.run_until_complete(psycopg.AsyncConnection.connect(_with_path(url, schema), autocommit=True))
    q = Queries(PsycopgDriver(aconn))
    loop.run_until_complete(q.install(create_schema=False))
    ctx = mp.get_context("fork")
    ps = [ctx.Process(target=_pgqueuer_stage, args=(url, schema, s), daemon=True) for s in (0, 1)]
    for p in ps:
        p.start()
    read = psycopg.connect(_with_path(url, schema), autocommit=True)
    try:
        def done_at(job: int) -> float | None:
            row = read.execute("SELECT done_at FROM bench_done WHERE job=%s", (job,)).fetchone()
            return row[0] if row else None

        _warm_up(lambda i: loop.run_until_complete(q.enqueue("one", str(-1 - i).encode(), 0)),
                 lambda i: done_at(-1 - i))
        sent = _trickle(n, rate, lambda i: loop.run_until_complete(q.enqueue("one", str(i).encode(), 0)))
        finished = _collect(n, lambda: dict(read.execute("SELECT job, done_at FROM bench_done WHERE job >= 0")
                                            .fetchall()))
        return [finished[i] - sent[i] for i in range(n)]
    finally:
        for p in ps:
            p.terminate()
            p.join()
        read.close()
        loop.run_until_complete(aconn.close())
        loop.close()


# -- the trickle --------------------------------------------------------------------------------
def _warm_up(submit: Callable[[int], object], done: Callable[[int], float | None]) -> None:
    """Submit jobs one by one until one completes within a second (the workers are up)."""
    for i in range(60):
        submit(i)
        deadline = time.time() + 1.0
        while time.time() < deadline:
            if done(i) is not None:
                return
            time.sleep(0.01)
    raise RuntimeError("the workers never completed a job")


def _trickle(n: int, rate: float, submit: Callable[[int], object]) -> list[float]:
    """Submit ``n`` jobs at ``rate`` a second; each one's time just before its submit."""
    sent, start = [], time.time()
    for i in range(n):
        wait = start + i / rate - time.time()
        if wait > 0:
            time.sleep(wait)
        sent.append(time.time())
        submit(i)
    return sent


def _collect(n: int, read: Callable[[], dict[int, float]]) -> dict[int, float]:
    deadline = time.time() + 120
    while time.time() < deadline:
        got = read()
        if len(got) >= n:
            return got
        time.sleep(0.05)
    raise RuntimeError("jobs did not finish within 120 s")


SYSTEMS: dict[str, Callable[[str, str, int, float], list[float]]] = {
    "ours, PostgreSQL, 1 proc/stage": ours,
    "pgqueuer, batch 10, 1 proc/stage": pgqueuer,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=DEFAULT_URL)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    from orchestrator.logging import configure_logging

    configure_logging(level="error")
    p50s: dict[str, list[float]] = {name: [] for name in SYSTEMS}
    p99s: dict[str, list[float]] = {name: [] for name in SYSTEMS}
    for _ in range(args.rounds):
        for name, run in SYSTEMS.items():
            schema = f"blat_{uuid.uuid4().hex[:10]}"
            try:
                p50, p99 = _percentiles(run(args.url, schema, args.jobs, args.rate))
            finally:
                _drop(args.url, schema)
            p50s[name].append(p50)
            p99s[name].append(p99)
            print(f"{name}: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms", file=sys.stderr)
    lines = [f"\nLatency on PostgreSQL, submit -> final status, two stages ({versions('pgqueuer', 'psycopg')}): "
             f"{args.jobs} jobs at {args.rate:g}/s, one submit each; median of {args.rounds} interleaved rounds\n",
             "| system | p50 | p99 |", "|---|---:|---:|"]
    for name in SYSTEMS:
        lines.append(f"| {name} | {statistics.median(p50s[name]) * 1000:.1f} ms | "
                     f"{statistics.median(p99s[name]) * 1000:.1f} ms |")
    emit_table("\n".join(lines), args.out, append=args.append)


if __name__ == "__main__":
    main()
