"""SIGTERM stops a worker and a supervisor wherever it lands, even while the main thread holds
the lock of the worker's stop Event, whether the handler is ours (``stop_on_signals``) or a
program's own calling ``request_stop``: a handler that set that Event there would wait for its
own thread forever, and the process would outlive every grace period."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading
    from orchestrator import JobStatus, Pipeline, Result
    from orchestrator.backends import memory_backend
    from orchestrator.controllers.worker import Worker
    from orchestrator.supervisor import Supervisor

    p = Pipeline("signals")

    @p.stage("s", source="in")
    def s(ctx, msg):
        return Result(status=JobStatus.COMPLETED)

    runner_kind, moment = sys.argv[1], sys.argv[2]
    if runner_kind == "supervisor":
        runner = Supervisor(lambda stage: [sys.executable, "-c", "import time; time.sleep(60)"], ["s"], grace_s=5)
        runner.install_signals()
    else:
        backend = memory_backend()
        p.setup(backend)
        runner = Worker(p, "s", backend, wait_s=0.05)
        if runner_kind == "worker":
            runner.stop_on_signals()
        else:  # a program's own handler, as an embedding program writes it
            signal.signal(signal.SIGTERM, lambda *_: runner.request_stop())
    term = lambda: os.kill(os.getpid(), signal.SIGTERM)
    if moment == "holding the stop event's lock":
        # as the main thread does on its way into and out of Event.wait; the handler runs here
        with runner.stopping_event._cond:
            term()
    elif moment == "before run":
        term()
    else:
        threading.Timer(0.5, term).start()
    runner.run()
    print("stopped", flush=True)
    """
)

WORKERS = ["worker", "worker, the program's own handler calling request_stop"]
CASES = [(w, m) for w in WORKERS for m in ("holding the stop event's lock", "before run", "while run waits")]
CASES += [("supervisor", m) for m in ("before run", "while run waits")]


@pytest.mark.parametrize(("runner_kind", "moment"), CASES)
def test_sigterm_stops_the_process_wherever_the_main_thread_is(runner_kind: str, moment: str) -> None:
    # Given a worker (or a supervisor) with a stop signal handler
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    started = time.monotonic()
    # When SIGTERM lands at this moment of its main thread
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT, runner_kind, moment], env=env, capture_output=True,
                              text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the {runner_kind} never stopped after SIGTERM {moment}")
    # Then it stops, cleanly and well inside its grace period
    assert done.stdout.strip().splitlines()[-1:] == ["stopped"], done.stderr
    assert time.monotonic() - started < 30
