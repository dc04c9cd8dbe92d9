"""``orchestrator worker P --stage all``: a process per stage, restarted when one dies."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.backends import open_backend
from orchestrator.cli import main
from orchestrator.status import JobStatus

PIPELINE = textwrap.dedent(
    """
    import time
    from orchestrator import JobStatus, Pipeline, Result

    pipeline = Pipeline("sup")

    @pipeline.stage("first", source="in", emit_to="mid", visibility_timeout_s=2, batch_size=1)
    def first(ctx, msg):
        time.sleep(0.02)
        return Result(status=JobStatus.RUNNING, emit=[{"n": msg.payload["n"]}])

    @pipeline.stage("second", source="mid", visibility_timeout_s=2, batch_size=1)
    def second(ctx, msg):
        time.sleep(0.02)
        return Result(status=JobStatus.COMPLETED)
    """
)


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def wait_for(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads children from /proc")
def test_a_killed_stage_process_is_restarted_and_sigterm_stops_them_all(tmp_path: Path) -> None:
    # Given 60 jobs and a supervisor running both stages, two processes each
    (tmp_path / "suppipe.py").write_text(PIPELINE)
    db = f"sqlite:///{tmp_path / 'sup.db'}"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}"}
    sup = subprocess.Popen([sys.executable, "-m", "orchestrator", "worker", "suppipe:pipeline", "--stage", "all",
                            "--processes", "2", "--backend", db, "--log-level", "warning", "--grace", "3"],
                           cwd=tmp_path, env=env, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(children(sup.pid)) == 4, 30, "four worker processes")
        backend = open_backend(db)
        sys.path.insert(0, str(tmp_path))
        pipeline = importlib.import_module("suppipe").pipeline
        for n in range(60):
            pipeline.submit(backend, job_id=f"j{n}", payload={"n": n}, queue="in")
        # When one child is SIGKILLed mid-run
        victim = children(sup.pid)[0]
        os.kill(victim, signal.SIGKILL)
        # Then another takes its place, and every job completes once
        wait_for(lambda: len(children(sup.pid)) == 4 and victim not in children(sup.pid), 30, "a restarted child")

        def done() -> bool:
            return all(r.status == JobStatus.COMPLETED for r in backend.store.query()) and \
                len(backend.store.query()) == 60

        wait_for(done, 60, "every job COMPLETED")
        assert all(r.commits("first") == 1 and r.commits("second") == 1 for r in backend.store.query())
        backend.close()
        # When the supervisor gets SIGTERM, Then it and every child exit within the grace period
        kids = children(sup.pid)
        started = time.monotonic()
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=15) == 0
        assert time.monotonic() - started < 3 + 5
        assert not any(Path(f"/proc/{k}").exists() and "zombie" not in Path(f"/proc/{k}/status").read_text().lower()
                       for k in kids)
        assert b"worker process exited; restarting" in (sup.stderr.read() if sup.stderr else b"")
    finally:
        if sup.poll() is None:
            sup.kill()
        sys.path[:] = [p for p in sys.path if p != str(tmp_path)]
        sys.modules.pop("suppipe", None)


def test_until_idle_stops_once_the_whole_pipeline_is_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "suppipe.py").write_text(PIPELINE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.getcwd()}")
    db = f"sqlite:///{tmp_path / 'sup.db'}"
    for n in range(10):
        assert main(["submit", "suppipe:pipeline", "--queue", "in", "--job-id", f"j{n}", "--payload", f'{{"n": {n}}}',
                     "--backend", db]) == 0
    assert main(["worker", "suppipe:pipeline", "--stage", "all", "--until-idle", "--backend", db,
                 "--log-level", "warning"]) == 0
    backend = open_backend(db)
    assert sorted(r.status for r in backend.store.query()) == [JobStatus.COMPLETED] * 10
    backend.close()


def test_the_supervisor_refuses_what_one_process_would_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "suppipe.py").write_text(PIPELINE)
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path / 'sup.db'}"
    assert main(["worker", "suppipe:pipeline", "--stage", "all", "--metrics-port", "0", "--backend", db]) == 2
    assert "--metrics-port serves one worker process" in capsys.readouterr().err
    assert main(["worker", "suppipe:pipeline", "--stage", "first", "--processes", "65", "--backend", db]) == 2
    assert "at most 64" in capsys.readouterr().err
