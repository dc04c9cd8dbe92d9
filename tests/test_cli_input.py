"""Bad command-line input: a one-line error and exit 2, nothing half-done."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import Pipeline, Result
from orchestrator.backends import open_backend, sqlite_backend
from orchestrator.cli import main
from orchestrator.errors import ConfigError, InvalidPayload
from orchestrator.settings import load_settings

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
    assert main(["worker", PIPE, "--stage", "s", "--concurrency", value, "--backend", f"sqlite:///{pipe_dir}/o.db"]) == 2
    assert "--concurrency" in capsys.readouterr().err


@pytest.mark.parametrize("job_id", ["", "  ", "bad\udcffid"])
def test_an_empty_or_undecodable_job_id_is_refused_before_anything_is_written(
        pipe_dir: Path, job_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", PIPE, "--queue", "in", "--job-id", job_id, "--backend", f"sqlite:///{pipe_dir}/o.db"]) == 2
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


# -- submitting ----------------------------------------------------------------------------------
def origin_payload(db: Path, job_id: str) -> object:
    backend = sqlite_backend(db)
    rec = backend.store.get(job_id)
    backend.close()
    assert rec is not None and rec.origin is not None
    return json.loads(rec.origin.body)["payload"]


def test_a_payload_comes_from_a_file_or_standard_input(pipe_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = pipe_dir / "o.db"
    (pipe_dir / "p.json").write_text('{"from": "file"}')
    assert main(["submit", PIPE, "--queue", "in", "--job-id", "f", "--payload", "@p.json", "--backend", f"sqlite:///{db}"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO('{"from": "stdin"}'))
    assert main(["submit", PIPE, "--queue", "in", "--job-id", "s", "--payload", "-", "--backend", f"sqlite:///{db}"]) == 0
    assert origin_payload(db, "f") == {"from": "file"}
    assert origin_payload(db, "s") == {"from": "stdin"}


def test_a_missing_payload_file_is_one_line(pipe_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", PIPE, "--queue", "in", "--job-id", "f", "--payload", "@nope.json",
                 "--backend", f"sqlite:///{pipe_dir}/o.db"]) == 2
    assert "cannot read nope.json" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--config", "a\x00.toml"], ["--payload", "@a\x00.json"], ["--jobs", "a\x00"],
                                    ["--backend", "sqlite:///a\x00.db"]])
def test_a_file_name_with_a_nul_is_one_line(pipe_dir: Path, option: list[str], capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    argv = ["submit", PIPE, "--queue", "in", *(["--job-id", "n"] if option[0] != "--jobs" else []), *option]
    assert main([*argv, *(["--backend", f"sqlite:///{pipe_dir}/o.db"] if option[0] != "--backend" else [])]) == 2
    assert "contains a NUL character" in capsys.readouterr().err
    assert not list(pipe_dir.glob("a*"))


@pytest.mark.parametrize("url", ["sqlite:///a\x00.db", "postgresql://localhost/te\x00st", "memory://\x00"])
def test_a_backend_url_with_a_nul_is_a_config_error(pipe_dir: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="NUL"):
        open_backend(url)


@pytest.mark.parametrize("name", ["a\x00.toml", "."])
def test_a_config_file_that_cannot_be_read_is_a_config_error(pipe_dir: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(name)


def test_many_jobs_from_a_jsonl_file_are_submitted_all_or_none(pipe_dir: Path, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    db = pipe_dir / "o.db"
    good = "\n".join(json.dumps({"job_id": f"j{i}", "payload": {"i": i}, "user_id": "ann"}) for i in range(50))
    (pipe_dir / "jobs.jsonl").write_text(good + "\n")
    assert main(["submit", PIPE, "--queue", "in", "--jobs", "jobs.jsonl", "--backend", f"sqlite:///{db}"]) == 0
    assert "50 submitted, 0 already submitted" in capsys.readouterr().out
    assert origin_payload(db, "j49") == {"i": 49}
    # a file with one bad line submits nothing
    (pipe_dir / "bad.jsonl").write_text('{"job_id": "k1", "payload": {}}\n{"job_id": "", "payload": {}}\n')
    assert main(["submit", PIPE, "--queue", "in", "--jobs", "bad.jsonl", "--backend", f"sqlite:///{db}"]) == 2
    assert "line 2" in capsys.readouterr().err
    backend = sqlite_backend(db)
    assert backend.store.get("k1") is None and len(backend.store.query()) == 50
    backend.close()


def test_a_resubmission_with_another_payload_or_user_is_refused(pipe_dir: Path, capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    url = f"sqlite:///{pipe_dir}/o.db"
    base = ["submit", PIPE, "--queue", "in", "--job-id", "j", "--backend", url]
    assert main([*base, "--payload", '{"n": 1}', "--user", "ann"]) == 0
    assert main([*base, "--payload", '{"n": 1}', "--user", "ann"]) == 0  # a retry: fine
    assert "already submitted" in capsys.readouterr().out
    assert main([*base, "--payload", '{"n": 2}', "--user", "ann"]) == 2
    assert "different payload" in capsys.readouterr().err
    assert main([*base, "--payload", '{"n": 1}', "--user", "bob"]) == 2
    assert "user 'ann'" in capsys.readouterr().err
    assert origin_payload(pipe_dir / "o.db", "j") == {"n": 1}


def test_a_huge_integer_payload_is_refused_before_anything_is_written(pipe_dir: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    db = pipe_dir / "o.db"
    assert main(["submit", PIPE, "--queue", "in", "--job-id", "big", "--payload", '{"x": ' + "9" * 5000 + "}",
                 "--backend", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "Traceback" not in err
    # and from code
    backend = sqlite_backend(db)
    pipeline = Pipeline("q")
    pipeline.stage("s", source="in")(lambda ctx, msg: Result())
    with pytest.raises(InvalidPayload, match="beyond 64 bits"):
        pipeline.submit(backend, job_id="big", payload={"x": 10**5000}, queue="in")
    assert backend.store.get("big") is None and backend.transport.depth("in").total == 0
    backend.close()


def test_a_queue_or_topic_the_pipeline_does_not_declare_is_refused(pipe_dir: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{pipe_dir}/o.db"
    assert main(["submit", PIPE, "--queue", "nosuchq", "--job-id", "j", "--backend", url]) == 2
    assert "no stage of 'q' takes it" in capsys.readouterr().err
    assert main(["submit", PIPE, "--topic", "nosuch", "--job-id", "j", "--backend", url]) == 2
    assert "subscribes" in capsys.readouterr().err
    assert not (pipe_dir / "o.db").exists() or sqlite_backend(pipe_dir / "o.db").store.get("j") is None


def test_doctor_reports_and_sweep_leaves_jobs_sent_where_no_stage_listens(
        pipe_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a job a producer (from code) sent to a topic nothing subscribes to
    url = f"sqlite:///{pipe_dir}/o.db"
    backend = sqlite_backend(pipe_dir / "o.db")
    pipeline = Pipeline("q")
    pipeline.stage("s", source="in")(lambda ctx, msg: Result())
    pipeline.setup(backend)
    pipeline.submit(backend, job_id="lost", payload={}, topic="nosuch")
    backend.close()
    # When the operator runs doctor and sweep
    assert main(["doctor", PIPE, "--backend", url]) == 1
    out = capsys.readouterr().out
    assert "1 PENDING job(s) were submitted to topic nosuch" in out and "lost" in out
    assert main(["sweep", PIPE, "--older-than", "0", "--backend", url]) == 0
    assert "NOT re-sent" in capsys.readouterr().out


# -- operating -----------------------------------------------------------------------------------
def test_dlq_show_and_redrive_refuse_what_is_not_a_dead_letter_queue(pipe_dir: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{pipe_dir}/o.db"
    assert main(["setup", PIPE, "--backend", url]) == 0
    capsys.readouterr()
    assert main(["dlq", "show", "nosuch-dlq", "--backend", url]) == 2
    assert "'nosuch-dlq' is no queue" in capsys.readouterr().err
    assert main(["dlq", "redrive", PIPE, "in", "--backend", url]) == 2
    assert "'in' is not a dead-letter queue" in capsys.readouterr().err
    assert main(["dlq", "show", "in-dlq", "--backend", url]) == 0


@pytest.mark.parametrize("argv", [["status"], ["queues"], ["dlq", "list"], ["doctor", PIPE]])
def test_reading_commands_never_create_a_database(pipe_dir: Path, argv: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--backend", f"sqlite:///{pipe_dir}/typo.db"]) == 2
    assert "typo.db does not exist" in capsys.readouterr().err
    assert not list(pipe_dir.glob("typo.db*"))


def test_another_applications_sqlite_file_is_refused_untouched(pipe_dir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    other = pipe_dir / "app.db"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, title TEXT)")
    assert main(["submit", PIPE, "--queue", "in", "--job-id", "j", "--backend", f"sqlite:///{other}"]) == 2
    assert "not an orchestrator database" in capsys.readouterr().err
    with sqlite3.connect(other) as c:
        assert [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["jobs"]


def test_a_database_from_a_newer_orchestrator_is_refused(pipe_dir: Path) -> None:
    sqlite_backend(pipe_dir / "o.db").close()
    with sqlite3.connect(pipe_dir / "o.db") as c:
        c.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(ConfigError, match="version 99, newer"):
        sqlite_backend(pipe_dir / "o.db")


def test_environment_failures_are_one_line(pipe_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # a read-only or full disk (as root, chmod cannot make one: SQLite's own error is injected)
    url = f"sqlite:///{pipe_dir}/o.db"
    for message in ("attempt to write a readonly database", "database or disk is full"):
        def refuse(*_a: object, _m: str = message, **_k: object) -> None:
            raise sqlite3.OperationalError(_m)

        monkeypatch.setattr("orchestrator.pipeline.Pipeline.setup", refuse)
        assert main(["submit", PIPE, "--queue", "in", "--job-id", "j", "--backend", url]) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"orchestrator: error: SQLite database: {message}"


def test_aws_without_credentials_is_one_line(pipe_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(pipe_dir / "none"), AWS_CONFIG_FILE=str(pipe_dir / "none"),
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1")
    out = subprocess.run([sys.executable, "-m", "orchestrator", "status", "j", "--backend", "aws://?region=us-east-1"],
                         cwd=pipe_dir, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "credentials" in out.stderr.lower()


def test_a_metrics_port_in_use_is_one_line(pipe_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["worker", PIPE, "--stage", "s", "--metrics-port", str(port), "--until-idle",
                     "--backend", f"sqlite:///{pipe_dir}/o.db"])
    assert code == 2
    assert f"--metrics-port {port}" in capsys.readouterr().err


def test_status_piped_into_head_is_not_an_error(pipe_dir: Path) -> None:
    url = f"sqlite:///{pipe_dir}/o.db"
    (pipe_dir / "jobs.jsonl").write_text("\n".join(json.dumps({"job_id": f"j{i}"}) for i in range(3000)))
    assert main(["submit", PIPE, "--queue", "in", "--jobs", "jobs.jsonl", "--backend", url]) == 0
    out = subprocess.run(f"{sys.executable} -m orchestrator status --backend {url} | head -1", shell=True,
                         cwd=pipe_dir, capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("JOB")
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr


def test_status_shows_history_times_people_can_read(pipe_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{pipe_dir}/o.db"
    assert main(["submit", PIPE, "--queue", "in", "--job-id", "j", "--backend", url]) == 0
    capsys.readouterr()
    assert main(["status", "j", "--backend", url]) == 0
    history = [line for line in capsys.readouterr().out.splitlines() if "created" in line]
    assert len(history) == 1
    assert re.match(r"^\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z created", history[0]), history[0]
