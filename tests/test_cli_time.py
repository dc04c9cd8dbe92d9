"""The command line's delays, times, priorities and schedules: what they do, and a one-line
error with exit 2 for what they cannot do."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from orchestrator.backends import sqlite_backend
from orchestrator.cli import main

PIPE = "timepipe:pipeline"


@pytest.fixture
def pipe_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "timepipe.py").write_text(
        "from orchestrator import Pipeline, Result\n"
        "pipeline = Pipeline('t')\n"
        "pipeline.stage('s', source='in')(lambda ctx, msg: Result())\n"
        "pipeline.schedule('nightly-report', cron='0 2 * * *', queue='in', timezone='Europe/Berlin')\n"
        "pipeline.schedule('pulse', every=30, queue='in', missed='latest')\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(pipe_dir: Path, *args: str) -> int:
    return main([*args, "--backend", f"sqlite:///{pipe_dir}/o.db"])


def test_a_delayed_submit_shows_pending_with_its_due_time_and_waits_in_the_queue(
        pipe_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(pipe_dir, "submit", PIPE, "--queue", "in", "--job-id", "later", "--delay", "1h30m") == 0
    out = capsys.readouterr().out
    assert "later submitted (PENDING, due " in out
    b = sqlite_backend(pipe_dir / "o.db")
    try:
        job = b.store.get("later")
        assert job is not None and job.due_at == pytest.approx(time.time() + 5400, abs=5)
        assert b.transport.depth("in").delayed == 1
        assert b.transport.receive("in", max_messages=1, wait_s=0, visibility_s=5) == []
    finally:
        b.close()
    assert run(pipe_dir, "status") == 0
    assert "due " in capsys.readouterr().out


def test_at_and_priority_order_what_is_received(pipe_dir: Path) -> None:
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    assert run(pipe_dir, "submit", PIPE, "--queue", "in", "--job-id", "at", "--at", soon) == 0
    assert run(pipe_dir, "submit", PIPE, "--queue", "in", "--job-id", "low") == 0
    assert run(pipe_dir, "submit", PIPE, "--queue", "in", "--job-id", "high", "--priority", "9") == 0
    b = sqlite_backend(pipe_dir / "o.db")
    try:
        got = b.transport.receive("in", max_messages=10, wait_s=0, visibility_s=5)
        assert [json.loads(d.body)["job_id"] for d in got] == ["high", "low"]
        job = b.store.get("at")
        assert job is not None and job.due_at is not None and abs(job.due_at - (time.time() + 3600)) < 5
    finally:
        b.close()


def test_schedules_lists_each_schedule_with_its_next_firing(pipe_dir: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    assert run(pipe_dir, "setup", PIPE) == 0
    capsys.readouterr()
    assert run(pipe_dir, "schedules", PIPE, "--json") == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["nightly-report"]["when"] == "0 2 * * *" and rows["nightly-report"]["last"] is None
    assert rows["nightly-report"]["next"].endswith(("T01:00:00.000Z", "T00:00:00.000Z"))  # 02:00 Berlin
    assert rows["pulse"]["missed"] == "latest"
    assert run(pipe_dir, "schedules", PIPE) == 0
    assert "nightly-report" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--delay=-5s"], "not a duration"),
    (["--delay=-5"], "finite number of seconds >= 0"),
    (["--delay", "soon"], "not a duration"),
    (["--delay", "inf"], "--delay"),
    (["--at", "tomorrow"], "not an ISO 8601 time"),
    (["--at", "2026-12-05T09:00:00"], "no time zone"),
    (["--at", "2001-01-01T00:00:00Z"], "in the past"),
    (["--priority", "10"], "must be 0..9"),
    (["--priority", "high"], "whole number"),
    (["--delay", "5s", "--at", "2031-01-01T00:00:00Z"], "not both"),
])
def test_bad_timing_is_one_line_and_exit_2(pipe_dir: Path, args: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = run(pipe_dir, "submit", PIPE, "--queue", "in", "--job-id", "j", *args)
    except SystemExit as done:  # argparse's own refusals
        code = int(done.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if ": error: " in line]) == 1


def test_an_unknown_cron_field_in_a_pipeline_is_one_line_and_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "badcron.py").write_text(
        "from orchestrator import Pipeline, Result\n"
        "pipeline = Pipeline('t')\n"
        "pipeline.stage('s', source='in')(lambda ctx, msg: Result())\n"
        "pipeline.schedule('oops', cron='0 2 * * mon-funday', queue='in')\n")
    monkeypatch.chdir(tmp_path)
    assert main(["setup", "badcron:pipeline", "--backend", f"sqlite:///{tmp_path}/o.db"]) == 2
    err = capsys.readouterr().err
    assert "not a cron expression" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
