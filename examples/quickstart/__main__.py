"""Demo: 200 jobs through two stages, one worker SIGKILLed mid-way.

    python -m examples.quickstart [--backend postgresql://user@host/db?schema=demo]

Runs on the SQLite default (``demo-data/quickstart.db``, recreated each run) or on any backend
URL whose store is empty (a fresh PostgreSQL ``?schema=``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from examples.quickstart import pipeline
from orchestrator.backends import open_backend
from orchestrator.status import JobStatus

N_JOBS = 200


def worker(url: str, stage: str, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "worker", "examples.quickstart:pipeline", "--backend",
         url, "--stage", stage, "--log-level", "error", *extra],
        env=env, stderr=subprocess.DEVNULL,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", help="backend URL with an empty store (default: a fresh SQLite file)")
    args = parser.parse_args(argv)
    if args.backend:
        db = args.backend
    else:
        data = Path("demo-data")
        data.mkdir(exist_ok=True)
        for p in data.glob("quickstart.db*"):
            if p.is_file():
                p.unlink()
        db = f"sqlite:///{data / 'quickstart.db'}"
    backend = open_backend(db)
    if backend.store.query():
        print(f"{db} already holds jobs: give the demo an empty one (e.g. a new ?schema=)", file=sys.stderr)
        return 2
    pipeline.setup(backend)
    for i in range(N_JOBS):
        pipeline.submit(backend, job_id=f"job-{i:03d}", payload={"x": i}, queue="numbers", user_id="demo")
    print(f"submitted {N_JOBS} jobs to {db}")
    procs = [worker(db, "square"), worker(db, "square"), worker(db, "plus_one")]
    time.sleep(0.8)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    done = len(backend.store.query(status=JobStatus.COMPLETED))
    print(f"SIGKILLed a 'square' worker with {done}/{N_JOBS} jobs completed; its leased messages come back in 5 s")
    finishers = [worker(db, "square", "--until-idle"), worker(db, "plus_one", "--until-idle")]
    for p in finishers:
        p.wait()
    for p in procs[1:]:
        p.send_signal(signal.SIGTERM)
        p.wait()
    jobs = backend.store.query()
    print(f"\n{'JOB':<10} {'STATUS':<10} {'ANSWER':>8}")
    for j in jobs[:5] + jobs[-5:]:
        print(f"{j.job_id:<10} {j.status.value:<10} {j.fields.get('answer', '-'):>8}")
    completed = [j for j in jobs if j.status == JobStatus.COMPLETED and j.fields["answer"] == int(j.job_id[4:]) ** 2 + 1]
    twice = [j for j in jobs if j.commits("square") != 1 or j.commits("plus_one") != 1]
    print(f"\n{len(completed)}/{N_JOBS} completed correctly, {N_JOBS - len(completed)} lost, {len(twice)} committed twice")
    return 0 if len(completed) == N_JOBS and not twice else 1


if __name__ == "__main__":
    sys.exit(main())
