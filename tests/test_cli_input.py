"""Bad command-line input: a one-line error and exit 2, nothing half-done."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from orchestrator.backends import sqlite_backend
from orchestrator.cli import main

PIPE = "quickpipe:pipeline"


@pytest.fixture
def pipe_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "quickpipe.py").write_text(
        "from orchestrator import Pipeline, Result\n"
        "pipeline = Pipeline('q')\n"
        "pipeline.stage('s', source='in')(lambda ctx, msg: Result())\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_worker_concurrency_below_one_is_refused(pipe_dir: Path, value: str, capsys: pytest.CaptureFixture[str]
                                                   ) -> None:
    with pytest.raises(SystemExit) as done:
        main(["worker", PIPE, "--stage", "s", "--concurrency", value, "--backend", f"sqlite:///{pipe_dir}/o.db"])
    assert done.value.code == 2
    assert "--concurrency" in capsys.readouterr().err


@pytest.mark.parametrize("job_id", ["", "  ", "bad\udcffid"])
def test_an_empty_or_undecodable_job_id_is_refused_before_anything_is_written(
        pipe_dir: Path, job_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["submit", PIPE, "--queue", "in", "--job-id", job_id, "--backend", f"sqlite:///{pipe_dir}/o.db"])
    assert done.value.code == 2
    assert "job id" in capsys.readouterr().err
    assert not (pipe_dir / "o.db").exists()


def test_an_unknown_log_level_in_the_environment_is_refused(pipe_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ORCHESTRATOR_LOG_LEVEL", "loud")
    code = main(["submit", PIPE, "--queue", "in", "--job-id", "j", "--backend", f"sqlite:///{pipe_dir}/o.db"])
    assert code == 2
    assert "log_level" in capsys.readouterr().err


def test_the_sqlite_file_and_its_wal_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    backend = sqlite_backend(tmp_path / "o.db")
    backend.store.create("j", user_id="alice", fields={"email": "alice@example.org"})
    for name in ("o.db", "o.db-wal", "o.db-shm"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o600, f"{name}: {oct(mode)}"
    backend.close()


@pytest.mark.parametrize("argv", [["submit", PIPE, "--queue", "in", "--job-id", "j"], ["status", "j"]])
def test_memory_is_refused_where_the_job_would_vanish_with_the_process(
        pipe_dir: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--backend", "memory://"]) == 2
    assert "vanishes" in capsys.readouterr().err
