"""Submitting jobs: in bulk (one call for N jobs) and one at a time, beside the peers.

    python bench/submit.py [--jobs 5000] [--singles 1000] [--rounds 3] [--out bench/RESULTS.md --append]

Ours: ``submit_many`` (a few statements per 500 jobs, one transaction) and ``submit`` (a
transaction per job), on the SQLite default and PostgreSQL. Peers in the same run: huey's
``enqueue`` on SQLite (it has no bulk call), pgqueuer's list ``enqueue`` (bulk) and one job per
call on PostgreSQL. Each figure is the median of ``--rounds`` runs, each on a fresh database or
schema; a row is jobs per second and microseconds per job.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import emit_table, versions

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _timed(setup: Callable[[], Callable[[], None]]) -> float:
    run = setup()
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def ours_sqlite(n: int, bulk: bool) -> Callable[[], None]:
    from orchestrator.backends import sqlite_backend
    from orchestrator.base import QueueSpec
    from orchestrator.controllers.submit import submit, submit_many

    b = sqlite_backend(Path(tempfile.mkdtemp()) / "s.db")
    b.transport.ensure_queue(QueueSpec("in"))
    if bulk:
        return lambda: (submit_many(b, [(f"j{i}", {"i": i}) for i in range(n)], queue="in"), None)[1]
    return lambda: [submit(b, job_id=f"j{i}", payload={"i": i}, queue="in") for i in range(n)] and None


def ours_postgres(n: int, bulk: bool) -> Callable[[], None]:
    from orchestrator.backends import postgres_backend
    from orchestrator.base import QueueSpec
    from orchestrator.controllers.submit import submit, submit_many

    b = postgres_backend(f"{PG_URL}?schema=bsub_{uuid.uuid4().hex[:8]}")
    b.transport.ensure_queue(QueueSpec("in"))
    if bulk:
        return lambda: (submit_many(b, [(f"j{i}", {"i": i}) for i in range(n)], queue="in"), None)[1]
    return lambda: [submit(b, job_id=f"j{i}", payload={"i": i}, queue="in") for i in range(n)] and None


def huey_sqlite(n: int, bulk: bool) -> Callable[[], None]:
    from huey import SqliteHuey

    huey = SqliteHuey(filename=str(Path(tempfile.mkdtemp()) / "h.db"))

    @huey.task()
    def task(i: int) -> int:
        return i

    return lambda: [task(i) for i in range(n)] and None


def pgqueuer_postgres(n: int, bulk: bool) -> Callable[[], None]:
    import psycopg
    from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
    from pgqueuer.queries import Queries

    schema = f"bsubq_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {schema}")

    async def install() -> None:
        conn = await psycopg.AsyncConnection.connect(PG_URL, autocommit=True, options=f"-c search_path={schema}")
        await Queries(PsycopgDriver(conn)).install(create_schema=False)
        await conn.close()

    asyncio.run(install())

    def run() -> None:
        async def go() -> None:
            conn = await psycopg.AsyncConnection.connect(PG_URL, autocommit=True, options=f"-c search_path={schema}")
            q = Queries(PsycopgDriver(conn))
            if bulk:
                for start in range(0, n, 1000):
                    idx = range(start, min(n, start + 1000))
                    await q.enqueue(["one"] * len(idx), [str(i).encode() for i in idx], [0] * len(idx))
            else:
                for i in range(n):
                    await q.enqueue("one", str(i).encode(), 0)
            await conn.close()

        asyncio.run(go())

    return run


SYSTEMS = [
    ("orchestrator, SQLite default", ours_sqlite, True),
    ("huey (SqliteHuey)", huey_sqlite, False),
    ("orchestrator, PostgreSQL", ours_postgres, True),
    ("pgqueuer (PostgreSQL)", pgqueuer_postgres, True),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=5000, help="jobs per bulk submission")
    ap.add_argument("--singles", type=int, default=1000, help="jobs submitted one call each")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    runs: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):  # interleaved: every system once per round
        for name, make, has_bulk in SYSTEMS:
            for kind, n in (("bulk", args.jobs), ("one at a time", args.singles)):
                if kind == "bulk" and not has_bulk:
                    continue
                try:
                    secs = _timed(lambda make=make, n=n, kind=kind: make(n, kind == "bulk"))
                except ImportError as exc:
                    print(f"skipped {name}: {exc}", file=sys.stderr)
                    continue
                runs.setdefault((name, kind), []).append(n / secs)
    lines = [f"\nSubmitting jobs ({versions('huey', 'pgqueuer', 'psycopg')}): {args.jobs:,} in one call, "
             f"{args.singles:,} one call each; median of {args.rounds} interleaved rounds\n",
             "| system | how | jobs/s | µs per job |", "|---|---|---:|---:|"]
    for (name, kind), rates in runs.items():
        rate = statistics.median(rates)
        lines.append(f"| {name} | {kind} | {rate:,.0f} | {1e6 / rate:,.0f} |")
    emit_table("\n".join(lines), args.out, append=args.append)


if __name__ == "__main__":
    main()
