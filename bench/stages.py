"""Which stage bounds the embedded two-stage pipeline, and what one message costs each stage.

    python bench/stages.py [--jobs N] [--rounds R] [--out FILE --append]

Three measurements, each printed as a table:

- the pipeline of ``embedded.py`` (one process a stage), with each stage process's CPU time
  (user + system, from ``/proc``) as a share of the run, beside the raw batched bound's:
  a process near 1.0 is running at its core's pace, and the other stage can only follow it;
- each stage alone in this process (no other writer, the checkpointer held off): µs a
  message, and write-ahead-log frames a message (the log's growth, in frames of one page);
- what one log frame costs the kernel to write: appended to a growing file (a new database's
  log, as every benchmark round starts with) and written over a file already that long (a
  log that has been restarted).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import embedded  # noqa: E402
from common import Counting, emit_table  # noqa: E402

from orchestrator.backends import sqlite_db  # noqa: E402
from orchestrator.logging import configure_logging  # noqa: E402

OURS = embedded.REFERENCE
RAW = "raw sqlite3, per batch of 10, 1 proc/stage"
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def pipeline_shares(name: str, n: int) -> tuple[float, list[float]]:
    """(msgs/s, each stage process's CPU share of the run). ``run_system`` reads each process's
    memory just before it stops them: their CPU time is read there too."""
    spent: list[float] = []
    rss = embedded._rss_kib

    def reading(pid: int) -> int:
        spent.append(_cpu_s(pid))
        return rss(pid)

    embedded._rss_kib = reading
    try:
        rate, _ = embedded.run_system(name, n)
    finally:
        embedded._rss_kib = rss
    elapsed = 2 * n / rate
    return rate, [s / elapsed for s in spent]


def alone(n: int) -> dict[str, tuple[float, float]]:
    """stage -> (µs a message, log frames a message), each stage run by itself: a ``Worker``
    as the pipeline's stage processes run it, timed until it has committed ``n`` messages."""
    from orchestrator import Worker
    from orchestrator.backends import sqlite_backend
    from orchestrator.controllers.worker import settle_process

    interval, sqlite_db.CHECKPOINT_INTERVAL_S = sqlite_db.CHECKPOINT_INTERVAL_S, 1e9  # growth = frames written
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = f"{tmp}/bench.db"
        embedded.ours_seed(db, n)
        with sqlite3.connect(db) as c:
            frame = c.execute("PRAGMA page_size").fetchone()[0] + 24
        for name in ("one", "two"):
            counter = _Count()
            worker = Worker(embedded.pipeline, name, sqlite_backend(db), wait_s=0.02)
            worker.middleware.append(Counting(counter))
            settle_process()  # as `orchestrator worker` does before it runs
            wal0, start = os.path.getsize(f"{db}-wal"), time.perf_counter()
            worker.start()
            while counter.value < n:
                time.sleep(0.001)
            took = time.perf_counter() - start
            out[name] = (1e6 * took / n, (os.path.getsize(f"{db}-wal") - wal0) / frame / n)
            worker.stop()
    sqlite_db.CHECKPOINT_INTERVAL_S = interval
    return out


class _Count:
    value = 0


def frame_write_us(frames: int = 5000, page: int = sqlite_db.PAGE_SIZE) -> dict[str, float]:
    """µs a log frame (a 24-byte header and a page, two writes, as SQLite writes one)."""
    header, data = os.urandom(24), os.urandom(page)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/frames"
        for how in ("appended (the file grows)", "written over (the file was that long)"):
            fd = os.open(path, os.O_RDWR | os.O_CREAT)
            try:
                start, offset = time.perf_counter(), 32
                for _ in range(frames):
                    os.pwrite(fd, header, offset)
                    os.pwrite(fd, data, offset + 24)
                    offset += 24 + page
                out[how] = 1e6 * (time.perf_counter() - start) / frames
            finally:
                os.close(fd)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    configure_logging(level="error")
    runs: dict[str, list[tuple[float, list[float]]]] = {OURS: [], RAW: []}
    for r in range(args.rounds):
        for name in runs:
            runs[name].append(pipeline_shares(name, args.jobs))
            rate, shares = runs[name][-1]
            print(f"round {r + 1}: {name:45s} {rate:8.0f} msgs/s, CPU share {shares}", flush=True)
    lines = [f"Which stage bounds the pipeline: {args.jobs} jobs, median of {args.rounds} interleaved rounds "
             "(`bench/stages.py`)", "", "| system | msgs/s | stage one's CPU share | stage two's |", "|---|---:|---:|---:|"]
    for name, got in runs.items():
        med = [statistics.median(s[i] for _, s in got) for i in (0, 1)]
        lines.append(f"| {name} | {statistics.median(r for r, _ in got):,.0f} | {med[0]:.2f} | {med[1]:.2f} |")
    each = [alone(args.jobs) for _ in range(args.rounds)]
    lines += ["", "| each stage alone (a worker in this process) | µs a message | log frames a message |",
              "|---|---:|---:|"]
    lines += [f"| stage {name} | {statistics.median(e[name][0] for e in each):.1f} | "
              f"{statistics.median(e[name][1] for e in each):.2f} |" for name in ("one", "two")]
    writes: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for how, us in frame_write_us().items():
            writes.setdefault(how, []).append(us)
    lines += ["", f"| a log frame ({sqlite_db.PAGE_SIZE}-byte page) | µs to write |", "|---|---:|"]
    lines += [f"| {how} | {statistics.median(us):.1f} |" for how, us in writes.items()]
    emit_table("\n".join(lines), args.out, append=args.append)


if __name__ == "__main__":
    main()
