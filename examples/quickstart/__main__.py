"""Demo: 200 jobs through two stages on the SQLite default, one worker SIGKILLed mid-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from examples.quickstart import pipeline
from orchestrator.backends import sqlite_backend
from orchestrator.status import JobStatus

N_JOBS = 200


def worker(db: Path, stage: str, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "worker", "examples.quickstart:pipeline", "--backend",
         f"sqlite:///{db}", "--stage", stage, "--log-level", "error", *extra],
        env=env, stderr=subprocess.DEVNULL,
    )


def main() -> int:
    data = Path("demo-data")
    data.mkdir(exist_ok=True)
    db = data / "quickstart.db"
    for p in data.glob("quickstart.db*"):
        if p.is_file():
            p.unlink()
    backend = sqlite_backend(db)
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
