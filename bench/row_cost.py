"""What one job row's swap costs inside SQLite's write lock, by the row's size.

    python bench/row_cost.py [--rows N --rounds R --out FILE --append]

The statement is the one the SQLite store runs for a batch's swaps (``UPDATE jobs ... FROM
(VALUES ...)``, 100 rows a transaction, WAL, synchronous=NORMAL), on the job table as
``orchestrator/tables.py`` defines it, against a table of a few small columns that a begin
could update instead (status and version, no document). A no-op two-stage job's document is
1.3-1.8 KB (``bench/job_size.py``).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import emit_table  # noqa: E402

from orchestrator.tables import schema  # noqa: E402

BATCH = 100
NARROW = "CREATE TABLE state (job_id TEXT PRIMARY KEY, status TEXT NOT NULL, version INTEGER NOT NULL) WITHOUT ROWID"


def swap_us(path: str, rows: int, doc_bytes: int | None) -> float:
    """µs per row of the batch swap; ``doc_bytes`` None: the narrow table."""
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    for statement in schema("sqlite").split(";"):
        if statement.strip():
            c.execute(statement)
    c.execute(NARROW)
    doc = "x" * (doc_bytes or 10)
    c.execute("BEGIN")
    c.executemany("INSERT INTO jobs VALUES (?,?,?,?,?,?)", [(f"j{i}", None, "PENDING", 1, i, doc) for i in range(rows)])
    c.executemany("INSERT INTO state VALUES (?,?,?)", [(f"j{i}", "PENDING", 1) for i in range(rows)])
    c.execute("COMMIT")
    values = ",".join(["(?,?,?,?,?)"] * BATCH) if doc_bytes else ",".join(["(?,?,?,?)"] * BATCH)
    sql = (f"UPDATE jobs SET status=v.column3, version=v.column4, doc=v.column5 FROM (VALUES {values}) AS v "
           "WHERE jobs.job_id=v.column1 AND jobs.version=v.column2" if doc_bytes else
           f"UPDATE state SET status=v.column3, version=v.column4 FROM (VALUES {values}) AS v "
           "WHERE state.job_id=v.column1 AND state.version=v.column2")
    start = time.perf_counter()
    for first in range(0, rows - BATCH + 1, BATCH):
        params: list[object] = []
        for i in range(first, first + BATCH):
            params += [f"j{i}", 1, "RUNNING", 2] + ([doc + "y"] if doc_bytes else [])
        c.execute("BEGIN IMMEDIATE")
        c.execute(sql, params)
        c.execute("COMMIT")
    took = time.perf_counter() - start
    c.close()
    return took / rows * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    cases: list[tuple[str, int | None]] = [("job row, 300 B document", 300), ("job row, 1.3 KB document", 1300),
                                           ("job row, 1.8 KB document", 1800), ("job row, 2.5 KB document", 2500),
                                           ("a narrow status row (no document)", None)]
    got: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.rounds):
        for name, size in cases:  # interleaved: the machine's pace drifts between rounds
            with tempfile.TemporaryDirectory() as tmp:
                got[name].append(swap_us(str(Path(tmp) / "rows.db"), args.rows, size))
    lines = [f"One job row's swap inside SQLite's write lock (batches of {BATCH}, {args.rows:,} rows, "
             f"median of {args.rounds} interleaved rounds; SQLite {sqlite3.sqlite_version})", "",
             "| row | µs per row (statement and COMMIT) |", "|---|---|"]
    lines += [f"| {name} | {statistics.median(v):.1f} |" for name, v in got.items()]
    emit_table("\n".join(lines), args.out, append=args.append)


if __name__ == "__main__":
    main()
