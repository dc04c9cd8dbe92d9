"""Messages per second through a no-op two-stage pipeline.

    python bench/throughput.py [--jobs N]

Prints msgs/s (two messages per job) for: the SQLite default with 1 and 2 worker processes
per stage, and the in-memory backend with one thread per stage. Jobs are submitted first;
the clock runs from worker start until every job is COMPLETED.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from noop_pipeline import pipeline  # noqa: E402

from orchestrator import JobStatus, Worker  # noqa: E402
from orchestrator.backends import Backend, memory_backend, sqlite_backend  # noqa: E402
from orchestrator.logging import configure_logging  # noqa: E402


def submit(backend: Backend, n: int) -> None:
    pipeline.setup(backend)
    for i in range(n):
        pipeline.submit(backend, job_id=f"b{i}", payload={}, queue="bench_a")


def wait_done(backend: Backend, n: int, timeout: float = 600) -> float:
    # Poll the queue depths (cheap), then confirm with one full query.
    start = time.perf_counter()
    while True:
        if sum(backend.transport.depth(q).total for q in ("bench_a", "bench_b")) == 0:
            end = time.perf_counter()
            if len(backend.store.query(status=JobStatus.COMPLETED)) == n:
                return end
        if time.perf_counter() - start > timeout:
            raise TimeoutError("benchmark did not finish")
        time.sleep(0.02)


def sqlite_run(n: int, procs_per_stage: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        backend = sqlite_backend(db)
        submit(backend, n)
        env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{HERE.parent}")
        cmd = [sys.executable, "-m", "orchestrator", "worker", "noop_pipeline:pipeline", "--backend",
               f"sqlite:///{db}", "--log-level", "error", "--wait", "0.05", "--stage"]
        start = time.perf_counter()
        procs = [subprocess.Popen([*cmd, stage], env=env, cwd=HERE, stderr=subprocess.DEVNULL)
                 for stage in ("one", "two") for _ in range(procs_per_stage)]
        try:
            end = wait_done(backend, n)
        finally:
            for p in procs:
                p.terminate()
                p.wait()
        return 2 * n / (end - start)


def memory_run(n: int) -> float:
    backend = memory_backend()
    submit(backend, n)
    workers = [Worker(pipeline, s, backend, wait_s=0.01) for s in ("one", "two")]
    start = time.perf_counter()
    for w in workers:
        w.start()
    end = wait_done(backend, n)
    for w in workers:
        w.stop()
    return 2 * n / (end - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2000)
    args = ap.parse_args()
    configure_logging(level="error")
    print(f"no-op two-stage pipeline, {args.jobs} jobs ({2 * args.jobs} messages); process start-up included")
    print(f"sqlite, 1 worker process per stage : {sqlite_run(args.jobs, 1):8.0f} msgs/s")
    print(f"sqlite, 2 worker processes per stage: {sqlite_run(args.jobs, 2):8.0f} msgs/s")
    print(f"memory, 1 thread per stage          : {memory_run(args.jobs):8.0f} msgs/s")


if __name__ == "__main__":
    main()
