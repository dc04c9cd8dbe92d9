"""The operator's toolkit, end to end as a user runs it: chaos, dlq, sweep, doctor, metrics, config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from orchestrator import JobStatus, Pipeline, Result, Worker
from orchestrator.backends import sqlite_backend
from orchestrator.base import Outgoing, QueueSpec
from orchestrator.cli import main
from orchestrator.ops.metrics import HealthServer, PrometheusMiddleware, QueueDepthCollector, loop_alive
from orchestrator.settings import load_settings

FLAKY = textwrap.dedent(
    """
    import os
    from orchestrator import Pipeline, Result, JobStatus

    pipeline = Pipeline("ops")

    @pipeline.stage("first", source="in", emit_to="mid", max_receives=2, retry_base_s=0, retry_max_s=0, wait_s=0.05)
    def first(ctx, msg):
        if os.path.exists(msg.payload.get("broken_while", "/nonexistent")):
            raise RuntimeError("dependency down")
        return Result(status=JobStatus.RUNNING, emit=[{"n": msg.payload["n"]}])

    @pipeline.stage("second", source="mid", wait_s=0.05)
    def second(ctx, msg):
        return Result(status=JobStatus.COMPLETED, fields={"n": msg.payload["n"]})
    """
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "opspipe.py").write_text(FLAKY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("opspipe", None)
    return tmp_path


def cli(*args: str) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), *sys.path])))
    return out.returncode, out.stdout + out.stderr


@pytest.mark.slow
def test_chaos_on_sqlite_with_2000_jobs_loses_nothing(project: Path) -> None:
    code, out = cli("chaos", "examples.quickstart:pipeline", "--backend", "sqlite:///chaos.db", "--jobs", "2000",
                    "--kill-interval", "0.4", "--duration", "4", "--payload", '{"x": 7}', "--seed", "11", "--json",
                    "--log-level", "error")
    report = json.loads(out[out.index("{"):])
    assert code == 0, out
    assert report["submitted"] == 2000 and report["completed"] == 2000
    assert report["lost"] == 0 and report["committed_twice"] == 0 and report["stuck"] == 0
    assert report["kills"] >= 3


@pytest.mark.slow
def test_chaos_on_aws_against_a_moto_server(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.server import ThreadedMotoServer
    from test_aws_pipeline import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        code, out = cli("chaos", "examples.quickstart:pipeline", "--backend", "aws://?region=us-east-1&prefix=ch-",
                        "--jobs", "60", "--kill-interval", "1", "--duration", "3", "--payload", '{"x": 2}',
                        "--seed", "3", "--json", "--log-level", "error")
    finally:
        server.stop()
    report = json.loads(out[out.index("{"):])
    assert code == 0, out
    assert report["completed"] == 60 and report["lost"] == 0 and report["committed_twice"] == 0


def test_dlq_list_show_and_redrive(project: Path) -> None:
    # Given jobs that were dead-lettered while a dependency was down
    flag = project / "down"
    flag.write_text("")
    for i in range(3):
        assert main(["submit", "opspipe:pipeline", "--backend", "sqlite:///ops.db", "--queue", "in",
                     "--job-id", f"j{i}", "--payload", json.dumps({"n": i, "broken_while": str(flag)})]) == 0
    assert main(["worker", "opspipe:pipeline", "--backend", "sqlite:///ops.db", "--stage", "first", "--until-idle",
                 "--log-level", "error"]) == 0
    backend = sqlite_backend(project / "ops.db")
    assert all(j.status == JobStatus.FAILED for j in backend.store.query())
    code, out = cli("dlq", "list", "--backend", "sqlite:///ops.db", "--json")
    assert code == 0 and {"queue": "in-dlq", "messages": 3} in json.loads(out)
    code, out = cli("dlq", "show", "in-dlq", "--backend", "sqlite:///ops.db")
    assert code == 0 and "dependency down (attempt 2 of 2)" in out
    # When the dependency is back and the dead letters are redriven
    flag.unlink()
    code, out = cli("dlq", "redrive", "opspipe:pipeline", "in-dlq", "--backend", "sqlite:///ops.db")
    assert code == 0 and "redriven 3, refused 0" in out, out
    job = backend.store.get("j0")
    assert job is not None and job.status == JobStatus.PENDING and job.history[-1].event == "reset"
    for stage in ("first", "second"):
        main(["worker", "opspipe:pipeline", "--backend", "sqlite:///ops.db", "--stage", stage, "--until-idle",
              "--log-level", "error"])
    # Then every job completes; and a COMPLETED job's dead letter is refused
    assert all(j.status == JobStatus.COMPLETED for j in backend.store.query())
    backend.transport.send("in-dlq", Outgoing(body=backend.store.get("j1").origin.body,  # type: ignore[union-attr]
                                              attributes={"source_queue": "in"}))
    code, out = cli("dlq", "redrive", "opspipe:pipeline", "in-dlq", "--backend", "sqlite:///ops.db")
    assert "refused 1" in out and "is COMPLETED" in out
    assert backend.transport.depth("in-dlq").total == 1


def test_the_sweeper_finishes_jobs_after_their_queues_were_purged(project: Path) -> None:
    # Given jobs mid-pipeline whose messages are purged: some between the stages, some before
    backend = sqlite_backend(project / "sw.db")
    assert main(["setup", "opspipe:pipeline", "--backend", "sqlite:///sw.db"]) == 0
    for i in range(6):
        main(["submit", "opspipe:pipeline", "--backend", "sqlite:///sw.db", "--queue", "in", "--job-id", f"j{i}",
              "--payload", json.dumps({"n": i})])
    import opspipe  # type: ignore[import-not-found]
    from helpers import drain  # noqa: F401  (same drivers the other tests use)

    first = Worker(opspipe.pipeline, "first", backend, batch_size=3, wait_s=0)
    first.start()
    import time

    deadline = time.time() + 10
    while backend.transport.depth("in").total > 3 and time.time() < deadline:
        time.sleep(0.01)
    first.stop()
    backend.transport.purge("mid")  # committed outboxes lost in transit
    backend.transport.purge("in")  # first messages lost before anyone took them
    stuck = [j.job_id for j in backend.store.query() if not j.status.terminal]
    assert stuck
    # When the sweeper runs
    code, out = cli("sweep", "opspipe:pipeline", "--backend", "sqlite:///sw.db", "--older-than", "0")
    assert code == 0 and "re-" in out, out
    for stage in ("first", "second"):
        main(["worker", "opspipe:pipeline", "--backend", "sqlite:///sw.db", "--stage", stage, "--until-idle",
              "--log-level", "error"])
    # Then every job finishes, each step committed once
    jobs = backend.store.query()
    assert len(jobs) == 6 and all(j.status == JobStatus.COMPLETED for j in jobs)
    assert all(j.commits("first") == 1 and j.commits("second") == 1 for j in jobs)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


def test_doctor_explains_each_misconfiguration_on_moto(aws: None, project: Path, capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    (project / "docpipe.py").write_text(textwrap.dedent(
        """
        from orchestrator import Pipeline, Result
        pipeline = Pipeline("doc")
        pipeline.stage("a", source="qa", publish_to="ta", max_receives=5, visibility_timeout_s=30)(lambda c, m: Result())
        pipeline.stage("b", source="qb", subscribe=("ta",), raw_subscription=False)(lambda c, m: Result())
        pipeline.stage("c", source="qc", subscribe=("tc",), emit_to="nowhere", retry_max_s=5000)(lambda c, m: Result())
        """))
    url = "aws://?region=us-east-1&prefix=doc-"
    from orchestrator.backends.aws import aws_backend

    backend = aws_backend(url)
    # qa: dead-letters after 2 receives (stage allows 5), default visibility 5 s
    backend.transport.ensure_queue(QueueSpec("qa", visibility_timeout_s=5, dead_letter="qa-dlq"))
    sqs = boto3.client("sqs")
    sqs.set_queue_attributes(QueueUrl=backend.transport.url("qa"), Attributes={"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": backend.transport.arn("qa-dlq"), "maxReceiveCount": 2})})
    # qb: exists, subscribed raw although the stage expects SNS-wrapped bodies; qc missing; tc missing
    backend.transport.ensure_queue(QueueSpec("qb", dead_letter="qb-dlq"))
    backend.topic.subscribe("ta", "qb", raw=True)
    code = main(["doctor", "docpipe:pipeline", "--backend", url, "--json"])
    findings = json.loads(capsys.readouterr().out)["findings"]
    text = "\n".join(f"{f['stage']} {f['severity']} {f['message']}" for f in findings)
    assert code == 1
    assert "a error queue qa dead-letters after 2 receives but the controller needs 6" in text
    assert "a warning queue qa default visibility is 5s" in text
    assert "b warning subscription ta -> qb delivers raw bodies, the stage expects SNS-wrapped" in text
    assert "c error source queue qc does not exist" in text
    assert "c error topic tc does not exist" in text
    assert "c error emit_to queue nowhere does not exist" in text
    assert "c error retry_max_s 5000" in text
    # setup refuses the stage's own inconsistent setting with the same explanation
    assert main(["setup", "docpipe:pipeline", "--backend", url]) == 2
    assert "retry_max_s 5000s exceeds the backend's maximum delay of 900s" in capsys.readouterr().err


def test_metrics_and_health_endpoints(tmp_path: Path) -> None:
    backend = sqlite_backend(tmp_path / "m.db")
    p = Pipeline("m")
    p.stage("s", source="in", wait_s=0.05, max_receives=1)(
        lambda ctx, msg: Result(status=JobStatus.COMPLETED) if msg.payload["ok"] else 1 / 0)
    p.setup(backend)
    for i in range(4):
        p.submit(backend, job_id=f"j{i}", payload={"ok": i != 3}, queue="in")
    metrics = PrometheusMiddleware()
    metrics.registry.register(QueueDepthCollector(backend.transport, ["in", "in-dlq"]))
    worker = Worker(p, "s", backend, middleware=[metrics])
    server = HealthServer(0, metrics.registry, alive=loop_alive(lambda: worker.last_loop_at, 5),
                          ready=lambda: worker.ready)
    base = f"http://127.0.0.1:{server.port}"
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{base}/readyz")  # not ready before the first receive
    worker.run(until_idle=True)
    text = urllib.request.urlopen(f"{base}/metrics").read().decode()
    assert 'orchestrator_succeeded_total{stage="s"} 3.0' in text
    assert 'orchestrator_dead_lettered_total{stage="s"} 1.0' in text
    assert 'orchestrator_received_total{stage="s"} 4.0' in text
    assert 'orchestrator_queue_depth{queue="in-dlq",state="visible"} 1.0' in text
    assert 'orchestrator_handler_seconds_count{stage="s"} 4.0' in text
    assert urllib.request.urlopen(f"{base}/healthz").status == 200
    assert urllib.request.urlopen(f"{base}/readyz").status == 200
    server.close()


def test_settings_come_from_toml_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "orchestrator.toml"
    cfg.write_text('backend = "sqlite:///from-file.db"\n[stages.square]\nmax_receives = 9\nvisibility_timeout_s = 45\n')
    monkeypatch.setenv("ORCHESTRATOR_STAGES__SQUARE__MAX_RECEIVES", "11")
    settings = load_settings(cfg)
    assert settings.backend == "sqlite:///from-file.db"
    assert settings.stages["square"].max_receives == 11 and settings.stages["square"].visibility_timeout_s == 45
    from examples.quickstart import pipeline
    from orchestrator.settings import apply_settings

    apply_settings(pipeline, settings)
    assert pipeline.get("square").max_receives == 11
    pipeline.get("square").max_receives, pipeline.get("square").visibility_timeout_s = 5, 5
    cfg.write_text("[stages.nope]\nmax_receives = 1\n")
    monkeypatch.chdir(tmp_path)
    assert main(["setup", "examples.quickstart:pipeline", "--config", str(cfg), "--backend", "memory://"]) == 2
    assert "has no stage 'nope'" in capsys.readouterr().err
    monkeypatch.delenv("ORCHESTRATOR_STAGES__SQUARE__MAX_RECEIVES")  # else it overrides the bad value
    cfg.write_text("[stages.square]\nmax_receives = 'many'\n")
    assert main(["setup", "examples.quickstart:pipeline", "--config", str(cfg), "--backend", "memory://"]) == 2
    assert "invalid settings: stages.square.max_receives" in capsys.readouterr().err


def test_worker_serves_metrics_and_sweeps_when_asked(project: Path) -> None:
    # Given a worker process started with --metrics-port 0 and --sweep-every
    main(["submit", "opspipe:pipeline", "--backend", "sqlite:///w.db", "--queue", "in", "--job-id", "j",
          "--payload", '{"n": 1}'])
    backend = sqlite_backend(project / "w.db")
    backend.transport.purge("in")  # the first message is lost: only the sweeper can finish this job
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(project), *sys.path]))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "worker", "opspipe:pipeline", "--backend",
                             "sqlite:///w.db", "--stage", "first", "--metrics-port", "0", "--sweep-every", "0.3",
                             "--sweep-older-than", "0", "--log-level", "error"], cwd=project, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        url = json.loads(proc.stderr.readline())["metrics"]
        base = url.removesuffix("/metrics")
        import time

        deadline = time.time() + 20
        while time.time() < deadline:
            job = backend.store.get("j")
            if job is not None and job.steps.get("first") and job.steps["first"].state == "committed":
                break
            time.sleep(0.1)
        # Then the sweeper re-sent the lost message, the worker committed it, and the endpoints answer
        assert job is not None and job.steps["first"].state == "committed"
        assert urllib.request.urlopen(f"{base}/healthz").status == 200
        assert urllib.request.urlopen(f"{base}/readyz").status == 200
        text = urllib.request.urlopen(url).read().decode()
        assert 'orchestrator_succeeded_total{stage="first"} 1.0' in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_chaos_without_a_backend_runs_on_a_scratch_database_not_the_live_one(project: Path) -> None:
    # Given a live orchestrator.db in the working directory with a PENDING job
    from examples.quickstart import pipeline as quick
    from orchestrator.backends import sqlite_backend

    live = sqlite_backend(project / "orchestrator.db")
    quick.setup(live)
    quick.submit(live, job_id="real-job", payload={"x": 3}, queue="numbers")
    live.close()
    # When chaos runs without --backend
    code, out = cli("chaos", "examples.quickstart:pipeline", "--jobs", "20", "--kill-interval", "0.3",
                    "--duration", "0.5", "--payload", '{"x": 7}', "--seed", "3", "--json", "--log-level", "error")
    # Then it ran on a scratch database and the real job was not touched
    assert code == 0, out
    assert "scratch database" in out
    live = sqlite_backend(project / "orchestrator.db")
    job = live.store.get("real-job")
    assert job is not None and job.status.value == "PENDING" and not job.steps
    assert len(live.store.query()) == 1 and live.transport.depth("numbers").total == 1
    live.close()
