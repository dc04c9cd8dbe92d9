"""What every benchmark script shares: package versions for the header, writing its table."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

from orchestrator.middleware import Middleware


def versions(*packages: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in packages:
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} missing")
    return ", ".join(out)


def machine_pace(repeat: int = 3) -> str:
    """How fast this machine runs Python right now, for the table's header: the median time of
    a 10M-addition loop, and the load average. A shared machine's pace moves within a run,
    and the figures with it: this says which kind of stretch a table was measured on."""
    took = []
    for _ in range(repeat):
        start, total = time.perf_counter(), 0
        for i in range(10_000_000):
            total += i
        took.append(time.perf_counter() - start)
    return f"a 10M-addition loop {statistics.median(took):.2f} s, load average {os.getloadavg()[0]:.2f}"


def emit_table(table: str, out: Path | None, *, append: bool) -> None:
    """Print the markdown table, and write it to ``out`` (appended after a blank line)."""
    print(table)
    if out is not None:
        with out.open("a" if append else "w") as fh:
            fh.write(("\n" if append and not table.startswith("\n") else "") + table + "\n")


class Counting(Middleware):
    """Middleware counting committed messages into a shared counter, in the worker's own
    thread as the peers' loops count theirs (a polling thread woken every few ms to copy
    ``Worker.stats`` contended for the GIL with the worker: 15-20% of its throughput)."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter

    def on_commit(self, stage: Any, delivery: Any) -> None:
        self.counter.value += 1
