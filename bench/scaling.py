"""Backlog scaling on the SQLite default: the cost per message with 1k, 100k and 1M queued.

    python bench/scaling.py [--backlogs 1000,100000,1000000] [--measure 2000] [--out FILE --append]

For each backlog, a fresh database gets that many jobs queued for stage one (in one
transaction, before the clock starts); then one process handles ``--measure`` messages of
them (batch 10, the no-op two-stage pipeline's first stage: commit + emit + ack) and we report
microseconds per message. A receive reads the first ready rows from the ``(queue,
visible_at, seq)`` index, and every other statement goes by primary key, so the cost should not
grow with the backlog. Target (issue 9): at 1M within 1.5x of the cost at 1k.
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


def per_message_us(backlog: int, measure: int, rounds: int) -> tuple[float, float]:
    """(median µs per message, seconds the seeding took)."""
    with tempfile.TemporaryDirectory() as tmp:
        b = sqlite_backend(Path(tmp) / "scale.db")
        pipeline.setup(b)
        t0 = time.perf_counter()
        seed(b, backlog)
        seeded = time.perf_counter() - t0
        st = pipeline.get("one")
        ctrl = Controller(pipeline, st, b)
        samples = []
        for _ in range(rounds):
            done, t = 0, time.perf_counter()
            while done < measure:
                got = b.transport.receive(st.source, max_messages=10, wait_s=0, visibility_s=30)
                if not got:
                    break
                outcomes = ctrl.handle_batch(got)
                # the copied jobs must really run the protocol, not be dead-lettered cheaply
                assert all(o.value == "committed" for o in outcomes), outcomes
                done += len(got)
            samples.append((time.perf_counter() - t) / max(1, done) * 1e6)
        b.close()
        return statistics.median(samples), seeded


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backlogs", default="1000,100000,1000000")
    ap.add_argument("--measure", type=int, default=300, help="messages handled per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    configure_logging(level="error")
    rows = []
    for backlog in (int(x) for x in args.backlogs.split(",")):
        us, seeded = per_message_us(backlog, min(args.measure, backlog // args.rounds), args.rounds)
        rows.append((backlog, us, seeded))
        print(f"backlog {backlog:>9,}: {us:7.0f} µs/message (seeded in {seeded:.1f}s)", flush=True)
    base = rows[0][1]
    lines = ["", f"Backlog scaling, SQLite default, one process, stage one of the no-op pipeline, batch 10; median of "
             f"{args.rounds} rounds of {args.measure} messages each", "",
             "| queued messages | µs per message | ÷ the smallest backlog |", "|---|---|---|"]
    lines += [f"| {n:,} | {us:,.0f} | {us / base:.2f}x |" for n, us, _ in rows]
    emit_table("\n".join(lines), args.out, append=args.append)


if __name__ == "__main__":
    main()
