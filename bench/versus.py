"""This code against an earlier commit, one benchmark system each, interleaved in one run.

    python bench/versus.py REV [--suite embedded|postgres] [--system NAME] [--rounds R] [--jobs N]
                           [--out FILE --append]

Absolute rates on a shared machine move by tens of percent within an hour, so a figure
measured on another day says little about a change; a ratio measured in one run, rounds
interleaved, does. REV is checked out into a temporary git worktree; each round runs the
system once from it and once from this tree, each in a fresh interpreter that imports only its
own tree's ``orchestrator`` (the editable install's finder is removed). The table shows the
medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import emit_table  # noqa: E402

SUITES = {"embedded": "ours, SQLite default, 1 proc/stage", "postgres": "ours, PostgreSQL, 1 proc/stage"}

CHILD = r'''
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
tree, suite, name, jobs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path[:0] = [tree, tree + "/bench"]
import importlib
from orchestrator.logging import configure_logging
configure_logging(level="error")
bench = importlib.import_module(suite)
rate = bench.run_system(name, bench.DEFAULT_URL, jobs) if suite == "postgres" else bench.run_system(name, jobs)
print(rate[0] if isinstance(rate, tuple) else rate)
'''


def run_once(tree: Path, suite: str, name: str, jobs: int) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, str(tree), suite, name, str(jobs)],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{name} from {tree} failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("rev", help="the earlier commit (anything git rev-parse takes)")
    ap.add_argument("--suite", choices=sorted(SUITES), default="embedded")
    ap.add_argument("--system", default=None, help="a row name of the suite's table (default: ours, default)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=None, help="default: 4000 embedded, 1500 postgres")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    name = args.system or SUITES[args.suite]
    jobs = args.jobs or (4000 if args.suite == "embedded" else 1500)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.rev], capture_output=True,
                            text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), commit], check=True)
        try:
            rates: dict[str, list[float]] = {"then": [], "now": []}
            for r in range(args.rounds):
                rates["then"].append(run_once(old, args.suite, name, jobs))
                rates["now"].append(run_once(ROOT, args.suite, name, jobs))
                print(f"round {r + 1}: {commit} {rates['then'][-1]:8.0f}  this tree {rates['now'][-1]:8.0f} msgs/s",
                      flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    then, now = statistics.median(rates["then"]), statistics.median(rates["now"])
    table = "\n".join([
        f"{name}, {jobs} jobs: this tree against commit {commit}, median of {args.rounds} interleaved rounds "
        "(fresh processes)", "",
        "| code | msgs/s | ÷ the earlier commit |", "|---|---|---|",
        f"| {name}, commit {commit} | {then:,.0f} | 1.00x |",
        f"| {name}, this tree | {now:,.0f} | {now / then:.2f}x |",
    ])
    emit_table(table, args.out, append=args.append)


if __name__ == "__main__":
    main()
