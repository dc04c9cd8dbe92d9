"""Finding and forgetting jobs: status filters and limits, purge, the pipeline's retention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import drain

from orchestrator import JobStatus, Pipeline, Result
from orchestrator.backends import Backend, sqlite_backend
from orchestrator.cli import main
from orchestrator.clock import SimClock
from orchestrator.errors import ConfigError
from orchestrator.ops.purge import purge
from orchestrator.ops.sweep import sweep

DAY = 86_400.0


def pipeline(retention: object = None) -> Pipeline:
    p = Pipeline("keep", retention=retention)  # type: ignore[arg-type]

    @p.stage("work", source="in", max_receives=1)
    def work(ctx, msg):  # type: ignore[no-untyped-def]
        if msg.payload.get("fail"):
            raise RuntimeError("no")
        return Result(status=JobStatus.COMPLETED)

    return p


def finished_jobs(backend: Backend, p: Pipeline, prefix: str, n: int, *, fail: bool = False) -> None:
    for i in range(n):
        p.submit(backend, job_id=f"{prefix}{i}", payload={"fail": fail}, queue="in")
    drain(backend, p, "work")


def test_purge_removes_old_finished_jobs_and_their_dead_letters_only(backend: Backend) -> None:
    # Given old COMPLETED and FAILED (dead-lettered) jobs, recent ones, and an old job still waiting
    p = pipeline()
    p.setup(backend)
    finished_jobs(backend, p, "old-ok-", 3)
    finished_jobs(backend, p, "old-bad-", 2, fail=True)
    assert backend.transport.depth("in-dlq").total == 2
    clock = backend.clock
    assert isinstance(clock, SimClock)
    backend.store.create("waiting")  # PENDING, untouched for as long as the others
    clock.advance(31 * DAY)
    finished_jobs(backend, p, "new-ok-", 2)
    # When a dry run, then a purge of what finished more than 30 days ago
    dry = purge(p, backend, older_than_s=30 * DAY, dry_run=True)
    assert sorted(dry.jobs) == ["old-bad-0", "old-bad-1", "old-ok-0", "old-ok-1", "old-ok-2"]
    assert len(backend.store.query()) == 8
    done = purge(p, backend, older_than_s=30 * DAY)
    # Then exactly those are gone, with their dead letters; the rest stay
    assert sorted(done.jobs) == sorted(dry.jobs) and done.dead_letters == 2
    assert sorted(r.job_id for r in backend.store.query()) == ["new-ok-0", "new-ok-1", "waiting"]
    assert backend.transport.depth("in-dlq").total == 0
    # and only FAILED ones when asked
    finished_jobs(backend, p, "late-bad-", 1, fail=True)
    clock.advance(31 * DAY)
    assert purge(p, backend, older_than_s=30 * DAY, statuses=[JobStatus.FAILED]).jobs == ["late-bad-0"]
    with pytest.raises(ValueError, match="finished jobs only"):
        purge(p, backend, older_than_s=1, statuses=[JobStatus.RUNNING])


def test_a_job_changed_since_it_was_read_is_not_purged(backend: Backend) -> None:
    p = pipeline()
    p.setup(backend)
    finished_jobs(backend, p, "j", 1)
    old = backend.store.get("j0")
    assert old is not None
    backend.store.update_fields("j0", {"touched": True})  # a post-completion stage wrote since
    assert backend.store.delete("j0", version=old.version) is False
    assert backend.store.get("j0") is not None


def test_retention_is_applied_by_the_sweeper(backend: Backend) -> None:
    p = pipeline(retention="7d")
    p.setup(backend)
    finished_jobs(backend, p, "a", 2)
    clock = backend.clock
    assert isinstance(clock, SimClock)
    clock.advance(8 * DAY)
    finished_jobs(backend, p, "b", 1)
    report = sweep(p, backend)
    assert any("purged 2 finished jobs" in a for a in report.actions), report.actions
    assert [r.job_id for r in backend.store.query()] == ["b0"]


@pytest.mark.parametrize("bad", ["soon", -5, 0])
def test_a_retention_that_is_not_a_positive_duration_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="retention"):
        pipeline(retention=bad)


def test_status_filters_and_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keeppipe.py").write_text(
        "from orchestrator import JobStatus, Pipeline, Result\n"
        "pipeline = Pipeline('keep')\n"
        "@pipeline.stage('work', source='in', max_receives=1)\n"
        "def work(ctx, msg):\n"
        "    if msg.payload.get('fail'):\n"
        "        raise RuntimeError('no')\n"
        "    return Result(status=JobStatus.COMPLETED)\n"
        "@pipeline.stage('other', source='other')\n"
        "def other(ctx, msg):\n"
        "    return Result(status=JobStatus.COMPLETED)\n")
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "k.db"
    backend = sqlite_backend(db)
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        from keeppipe import pipeline as keep  # type: ignore[import-not-found]

        keep.setup(backend)
        for i in range(60):
            keep.submit(backend, job_id=f"j{i:02d}", payload={"fail": i % 10 == 0}, queue="in",
                        user_id="ann" if i % 2 else "bob")
        keep.submit(backend, job_id="elsewhere", payload={}, queue="other")
        from orchestrator.controllers.worker import Worker

        Worker(keep, "work", backend, wait_s=0).run(until_idle=True)
        Worker(keep, "other", backend, wait_s=0).run(until_idle=True)
    finally:
        backend.close()
        sys.path.remove(str(tmp_path))
        sys.modules.pop("keeppipe", None)
    url = f"sqlite:///{db}"
    capsys.readouterr()

    def status(*argv: str) -> list[dict[str, object]]:
        assert main(["status", "--backend", url, "--json", *argv]) == 0
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    # the latest 50 by default, all with --limit 0
    assert len(status()) == 50 and len(status("--limit", "0")) == 61
    assert [j["job_id"] for j in status("--limit", "3")] == ["j58", "j59", "elsewhere"]
    # by status, user, stage and time
    assert sorted(j["job_id"] for j in status("--status", "FAILED")) == [f"j{i:02d}" for i in range(0, 60, 10)]
    assert all(j["user_id"] == "ann" for j in status("--user", "ann", "--limit", "0"))
    assert [j["job_id"] for j in status("--stage", "other")] == ["elsewhere"]
    assert len(status("--since", "1h", "--limit", "0")) == 61 and status("--since", "2999-01-01T00:00:00Z") == []
    # the table says when it shows only part
    assert main(["status", "--backend", url, "--limit", "5"]) == 0
    assert "(the latest 5 of 61 jobs" in capsys.readouterr().out
    assert main(["status", "--backend", url, "--since", "yesterday-ish"]) == 2
    assert main(["purge", "keeppipe:pipeline", "--backend", url, "--older-than", "0s", "--status", "FAILED",
                 "--dry-run"]) == 0
    assert "would purge 6 jobs" in capsys.readouterr().out
