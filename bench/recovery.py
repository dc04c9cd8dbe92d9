"""Recovery after SIGKILL on the SQLite default: a worker dies holding a message; how long until
another worker has it, and until the job completes?

    python bench/recovery.py [--combos 2:1,2:30,10:1,10:30] [--out FILE --append]

For each (visibility timeout, handler seconds): worker A takes the job and starts its handler
(heartbeat on: the lease is extended every third of the visibility timeout); worker B is
running and idle; A is SIGKILLed. We time, from the kill, B's begin of the step (the
redelivery) and the job's completion. Target: redelivery within the visibility
timeout + 2 s, whatever the handler's length (the heartbeat must not leave a dead holder's
lease longer than one timeout).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

sys.path.insert(0, str(HERE))

from common import emit_table  # noqa: E402

from orchestrator.backends import sqlite_backend  # noqa: E402

PIPELINE = textwrap.dedent(
    """
    import os, time
    from orchestrator import JobStatus, Pipeline, Result

    pipeline = Pipeline("recovery")

    @pipeline.stage("work", source="in", visibility_timeout_s=float(os.environ["VIS"]), batch_size=1, wait_s=0.05,
                    max_receives=5)
    def work(ctx, msg):
        time.sleep(float(os.environ["HANDLER_S"]))
        return Result(status=JobStatus.COMPLETED, fields={"by": os.getpid()})
    """
)


def measure(vis: float, handler_s: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "recoverypipe.py").write_text(PIPELINE)
        env = dict(os.environ, VIS=str(vis), HANDLER_S=str(handler_s),
                   PYTHONPATH=os.pathsep.join([tmp, str(HERE.parent)]))
        sys.path.insert(0, tmp)
        os.environ.update(VIS=str(vis), HANDLER_S=str(handler_s))
        import importlib

        mod = importlib.import_module("recoverypipe")
        mod = importlib.reload(mod)
        sys.path.remove(tmp)
        db = Path(tmp) / "r.db"
        backend = sqlite_backend(db)
        mod.pipeline.setup(backend)
        cmd = [sys.executable, "-m", "orchestrator", "worker", "recoverypipe:pipeline", "--backend", f"sqlite:///{db}",
               "--stage", "work", "--log-level", "error", "--wait", "0.05"]
        a = subprocess.Popen(cmd, cwd=tmp, env=env, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # A is up before the job exists, so A takes it
        mod.pipeline.submit(backend, job_id="j", payload={}, queue="in")
        while backend.transport.depth("in").in_flight == 0:  # A has received it (its begin is deferred)
            time.sleep(0.01)
        b = subprocess.Popen(cmd, cwd=tmp, env=env, stderr=subprocess.DEVNULL)
        time.sleep(min(1.5, handler_s * 0.8) if handler_s > 1 else 0.5)  # B is idle and polling
        a.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        a.wait()
        redelivered = done = None
        while done is None and time.monotonic() - killed < vis + handler_s + 60:
            job = backend.store.get("j")
            assert job is not None
            step = job.steps.get("work")
            if redelivered is None and step is not None and step.attempt >= 2:
                redelivered = time.monotonic() - killed
            if job.status.value == "COMPLETED":
                done = time.monotonic() - killed
            time.sleep(0.02)
        b.send_signal(signal.SIGTERM)
        b.wait(60)
        backend.close()
        if redelivered is None or done is None:
            raise RuntimeError(f"vis {vis}, handler {handler_s}: not recovered")
        return redelivered, done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--combos", default="2:1,2:30,10:1,10:30", help="visibility:handler seconds, comma-separated")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    rows = []
    for combo in args.combos.split(","):
        vis, handler = (float(x) for x in combo.split(":"))
        redelivered, done = measure(vis, handler)
        rows.append((vis, handler, redelivered, done))
        print(f"vis {vis:g}s handler {handler:g}s: redelivered after {redelivered:.2f}s, done after {done:.2f}s",
              flush=True)
    lines = ["", "Recovery after SIGKILL (SQLite default, heartbeat on): from the kill of the worker holding the "
             "message to another worker's begin of it, and to the job's completion", "",
             "| visibility timeout | handler | redelivered after | completed after | target (vis + 2 s) |",
             "|---|---|---|---|---|"]
    lines += [f"| {v:g} s | {h:g} s | {r:.2f} s | {d:.2f} s | {'met' if r <= v + 2 else 'MISSED'} |"
              for v, h, r, d in rows]
    emit_table("\n".join(lines), args.out, append=args.append)


if __name__ == "__main__":
    main()
