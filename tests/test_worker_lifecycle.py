"""A worker's end: SIGTERM with a hung handler, and its database deleted under it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator import JobStatus, Pipeline, Result, Worker
from orchestrator.backends import sqlite_backend
from orchestrator.controllers.worker import WORKER_GC_THRESHOLD
from orchestrator.errors import BackendUnavailable, DatabaseGone
from orchestrator.middleware import Middleware

HUNG = textwrap.dedent(
    """
    import os, time
    from orchestrator import Pipeline, Result, JobStatus

    pipeline = Pipeline("hung")

    @pipeline.stage("work", source="in", visibility_timeout_s=60, max_receives=5, wait_s=0.05, batch_size=1)
    def work(ctx, msg):
        if os.environ.get("HANG"):
            open(os.environ["HANG"], "w").close()  # tell the test the handler is running
            time.sleep(3600)
        return Result(status=JobStatus.COMPLETED, fields={"by": os.getpid()})
    """
)


def worker_cmd(db: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "worker", "hungpipe:pipeline", "--backend", f"sqlite:///{db}",
            "--stage", "work", "--log-level", "warning", *extra]


def test_sigterm_stops_a_worker_with_a_hung_handler_within_the_grace_period(tmp_path: Path) -> None:
    # Given a worker whose handler hangs, with a visibility timeout of a minute
    (tmp_path / "hungpipe.py").write_text(HUNG)
    db = tmp_path / "w.db"
    backend = sqlite_backend(db)
    import importlib.util

    spec = importlib.util.spec_from_file_location("hungpipe", tmp_path / "hungpipe.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.pipeline.setup(backend)
    mod.pipeline.submit(backend, job_id="j", payload={}, queue="in")
    flag = tmp_path / "running"
    env = dict(os.environ, PYTHONPATH=str(tmp_path), HANG=str(flag))
    proc = subprocess.Popen(worker_cmd(db, "--grace", "1"), cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists(), "the handler never started"
    # When it is sent SIGTERM
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    # Then it exits within the grace period (plus a little), the message is back in the queue
    # at once (not after the 60 s lease), and a healthy worker completes the job
    assert time.monotonic() - t0 < 5, err
    assert "handed back" in err
    assert backend.transport.depth("in").visible == 1
    healthy = dict(os.environ, PYTHONPATH=str(tmp_path))
    assert subprocess.run(worker_cmd(db, "--until-idle"), cwd=tmp_path, env=healthy, timeout=60).returncode == 0
    job = backend.store.get("j")
    assert job is not None and job.status == JobStatus.COMPLETED and job.commits("work") == 1
    backend.close()


def test_a_worker_stops_with_a_clear_error_when_its_database_is_deleted(tmp_path: Path) -> None:
    # Given a worker running (idle) on a SQLite file
    p = Pipeline("gone")
    p.stage("work", source="in", wait_s=0.05)(lambda ctx, msg: Result(status=JobStatus.COMPLETED))
    db = tmp_path / "w.db"
    backend = sqlite_backend(db)
    p.setup(backend)
    w = Worker(p, "work", backend, wait_s=0.05)
    w.start()
    time.sleep(0.3)
    # When the file is deleted under it
    for f in tmp_path.glob("w.db*"):
        f.unlink()
    # Then run() ends with DatabaseGone, naming the file, within moments
    t0 = time.monotonic()
    with pytest.raises(DatabaseGone, match="deleted or replaced"):
        w.run()
    assert time.monotonic() - t0 < 5


def test_the_cli_worker_exits_2_when_its_database_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "hungpipe.py").write_text(HUNG)
    db = tmp_path / "w.db"
    sqlite_backend(db).close()
    proc = subprocess.Popen(worker_cmd(db), cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)),
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    for f in tmp_path.glob("w.db*"):
        f.unlink()
    sqlite_backend(db).close()  # a new, empty database at the same path
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "was deleted or replaced" in err and "Traceback" not in err


SKEWED_SENDER = textwrap.dedent(
    """
    import sys, time
    real = time.time
    time.time = lambda: real() + 120.0  # this process's clock runs two minutes fast
    from orchestrator.backends import open_backend
    from orchestrator.base import Outgoing, QueueSpec
    b = open_backend(sys.argv[1])
    b.transport.ensure_queue(QueueSpec("skew"))
    for i in range(20):
        b.transport.send("skew", Outgoing(body="{}", message_id=f"m{i}"))
    b.close()
    """
)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_sender_whose_clock_runs_fast_does_not_delay_its_messages(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url") if kind == "postgres" else f"sqlite:///{tmp_path}/skew.db"
    # Given messages sent by a process whose clock is 120 s ahead
    out = subprocess.run([sys.executable, "-c", SKEWED_SENDER, url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # When a process with a correct clock receives
    from orchestrator.backends import open_backend

    b = open_backend(url)
    got = b.transport.receive("skew", max_messages=10, wait_s=0, visibility_s=30)
    got += b.transport.receive("skew", max_messages=10, wait_s=0, visibility_s=30)
    # Then every message is there now, not in two minutes
    assert len(got) == 20
    b.close()


class _Outage:
    """A transport whose receives, then first batch writes, meet an outage for a while."""

    def __init__(self, inner: object, receives: int, acks: int) -> None:
        self._inner, self.receives, self.acks = inner, receives, acks

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def receive(self, *args: object, **kw: object) -> object:
        if self.receives > 0:
            self.receives -= 1
            raise BackendUnavailable("the database is restarting")
        return self._inner.receive(*args, **kw)  # type: ignore[attr-defined]

    def ack_batch(self, *args: object, **kw: object) -> object:
        if self.acks > 0:
            self.acks -= 1
            raise BackendUnavailable("the database is restarting")
        return self._inner.ack_batch(*args, **kw)  # type: ignore[attr-defined]


def test_a_worker_backs_off_through_an_outage_counts_it_and_loses_nothing(tmp_path: Path) -> None:
    import dataclasses

    from prometheus_client import CollectorRegistry

    from orchestrator.controllers import worker as worker_module
    from orchestrator.ops.metrics import PrometheusMiddleware

    p = Pipeline("outage")

    @p.stage("work", source="in", visibility_timeout_s=2, wait_s=0.05)
    def work(ctx, msg):  # type: ignore[no-untyped-def]
        return Result(status=JobStatus.COMPLETED)

    real = sqlite_backend(tmp_path / "o.db")
    p.setup(real)
    for i in range(5):
        p.submit(real, job_id=f"j{i}", payload={}, queue="in")
    outage = _Outage(real.transport, receives=4, acks=1)
    backend = dataclasses.replace(real, transport=outage)  # type: ignore[arg-type]
    metrics = PrometheusMiddleware(CollectorRegistry())
    waits: list[float] = []

    class Waits(Middleware):
        def on_backend_unavailable(self, stage: object, error: BaseException, delay_s: float) -> None:
            waits.append(delay_s)

    w = Worker(p, "work", backend, middleware=[metrics, Waits()])
    w.run(until_idle=True)
    # every job done once, though the first receives and a batch's ack met the outage
    for i in range(5):
        rec = real.store.get(f"j{i}")
        assert rec is not None and rec.status == JobStatus.COMPLETED and rec.commits("work") == 1
    assert w.stats["unavailable"] == 5
    assert metrics.backend_unavailable.labels("work")._value.get() == 5
    # the receives' waits double while the outage lasts; after a good receive they start again
    first = worker_module.UNAVAILABLE_BACKOFF_S
    assert waits == [first, first * 2, first * 4, first * 8, first]


def test_a_worker_polling_an_empty_queue_without_waiting_leaves_the_other_threads_time(tmp_path: Path) -> None:
    # Given a stage that polls without waiting (wait_s=0), on a transport that answers at once
    p = Pipeline("idle")
    p.stage("work", source="in", wait_s=0)(lambda ctx, msg: Result(status=JobStatus.COMPLETED))
    backend = sqlite_backend(tmp_path / "i.db")
    p.setup(backend)
    polls = [0]
    receive = backend.transport.receive

    def counted(*a: object, **kw: object) -> object:
        polls[0] += 1
        return receive(*a, **kw)  # type: ignore[arg-type]

    backend.transport.receive = counted  # type: ignore[method-assign]
    w = Worker(p, "work", backend, concurrency=2)
    # When it runs on an empty queue for a second while this thread waits in short steps
    w.start()
    late = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        a = time.monotonic()
        time.sleep(0.01)
        late.append(time.monotonic() - a - 0.01)
    w.stop()
    # Then each thread polled at most about 50 times a second (not thousands), and this
    # thread's sleeps overran by little (a thread polling in a tight loop starves the others)
    assert 10 <= polls[0] <= 2 * 60, polls[0]
    assert max(late) < 0.2, max(late)
    # And work submitted afterwards is still picked up and done
    p.submit(backend, job_id="j", payload={}, queue="in")
    Worker(p, "work", backend).run(until_idle=True)
    rec = backend.store.get("j")
    assert rec is not None and rec.status == JobStatus.COMPLETED
    backend.close()


def _exiting(raised: BaseException) -> Pipeline:
    p = Pipeline("exits")

    @p.stage("s", source="in", max_receives=2, visibility_timeout_s=1, retry_base_s=0, retry_max_s=0, wait_s=0.05)
    def s(ctx, msg):  # type: ignore[no-untyped-def]
        if msg.job_id == "bad":
            raise raised
        return Result(status=JobStatus.COMPLETED)

    return p


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_handler_that_calls_sys_exit_fails_its_own_step_and_the_worker_works_on(concurrency: int) -> None:
    # a script turned into a handler often ends with sys.exit(n): in a worker thread that
    # ended the thread, its batch-mates with it, and a worker whose threads had all ended
    # returned as if its queue were done
    from orchestrator.backends import memory_backend
    from orchestrator.controllers.submit import submit_many

    p = _exiting(SystemExit(3))
    backend = memory_backend()
    p.setup(backend)
    submit_many(backend, [("bad", {}), ("good", {}), ("good2", {})], queue="in")
    w = Worker(p, "s", backend, concurrency=concurrency, wait_s=0.05)
    w.run(until_idle=True)
    status = {j: backend.store.get(j).status for j in ("bad", "good", "good2")}  # type: ignore[union-attr]
    assert status == {"bad": JobStatus.FAILED, "good": JobStatus.COMPLETED, "good2": JobStatus.COMPLETED}
    assert "SystemExit: 3" in (backend.store.get("bad").steps["s"].reason or "")  # type: ignore[union-attr]
    assert not w.died


def test_a_worker_whose_threads_all_ended_on_an_exception_says_so() -> None:
    from structlog.testing import capture_logs

    from orchestrator.backends import memory_backend
    from orchestrator.controllers.submit import submit_many
    from orchestrator.errors import WorkerDied

    p = _exiting(KeyboardInterrupt())  # raised in a worker thread: no signal, the handler's own
    backend = memory_backend()
    p.setup(backend)
    submit_many(backend, [("bad", {})], queue="in")
    w = Worker(p, "s", backend, concurrency=1, wait_s=0.05)
    with capture_logs() as logs, pytest.raises(WorkerDied, match="KeyboardInterrupt"):
        w.run(until_idle=True)
    assert [e for e in logs if e["event"].startswith("worker thread ended") and "KeyboardInterrupt" in e["exception"]]


GC_SEEN = textwrap.dedent(
    """
    import gc
    from orchestrator import Pipeline, Result, JobStatus

    pipeline = Pipeline("gcseen")

    @pipeline.stage("work", source="in", wait_s=0.05)
    def work(ctx, msg):
        return Result(status=JobStatus.COMPLETED,
                      fields={"gen0": gc.get_threshold()[0], "frozen": gc.get_freeze_count()})
    """
)


def test_the_cli_worker_readies_its_collector_before_it_runs(tmp_path: Path) -> None:
    # Given a pipeline whose handler reports the collector's settings as it runs
    (tmp_path / "gcseen.py").write_text(GC_SEEN)
    db = tmp_path / "w.db"
    backend = sqlite_backend(db)
    sys.path.insert(0, str(tmp_path))
    try:
        from gcseen import pipeline  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    pipeline.setup(backend)
    pipeline.submit(backend, job_id="j", payload={}, queue="in")
    # When `orchestrator worker` runs it
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    cmd = [sys.executable, "-m", "orchestrator", "worker", "gcseen:pipeline", "--backend", f"sqlite:///{db}",
           "--stage", "work", "--log-level", "warning", "--until-idle"]
    assert subprocess.run(cmd, cwd=tmp_path, env=env, timeout=60).returncode == 0
    # Then what it loaded was frozen and young collections run no more often than the
    # worker's threshold (not CPython's 700)
    job = backend.store.get("j")
    assert job is not None and job.status == JobStatus.COMPLETED
    assert job.fields["gen0"] == WORKER_GC_THRESHOLD
    assert job.fields["frozen"] > 1000
    backend.close()
