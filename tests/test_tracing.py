"""OpenTelemetry: one trace per job across its stages, retries included."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from helpers import drain
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from orchestrator import JobStatus, Pipeline, Result
from orchestrator.backends import Backend
from orchestrator.controllers.controller import Outcome
from orchestrator.tracing import TracingMiddleware


def three_stages(tracing: TracingMiddleware) -> Pipeline:
    p = Pipeline("traced", middleware=[tracing])
    failed_once: set[str] = set()

    @p.stage("fetch", source="fetch", emit_to="annotate", retry_base_s=1, retry_max_s=1)
    def fetch(ctx, msg):  # type: ignore[no-untyped-def]
        return Result(status=JobStatus.RUNNING, emit=[{"file": msg.payload["file"]}])

    @p.stage("annotate", source="annotate", emit_to="notify", retry_base_s=1, retry_max_s=1)
    def annotate(ctx, msg):  # type: ignore[no-untyped-def]
        if msg.job_id not in failed_once:  # every job's annotate fails once, then succeeds
            failed_once.add(msg.job_id)
            raise RuntimeError("annotator busy")
        return Result(emit=[{"variants": 3}])

    @p.stage("notify", source="notify")
    def notify(ctx, msg):  # type: ignore[no-untyped-def]
        return Result(status=JobStatus.COMPLETED)

    return p


def test_one_trace_per_job_across_three_stages_with_a_retry(backend: Backend) -> None:
    # Given a three-stage pipeline traced into an in-memory exporter
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    p = three_stages(TracingMiddleware(provider))
    p.setup(backend)
    for job in ("a", "b"):
        p.submit(backend, job_id=job, payload={"file": f"{job}.vcf"}, queue="fetch")
    # When both jobs run through, annotate failing once each
    assert drain(backend, p, "fetch") == [Outcome.COMMITTED] * 2
    assert sorted(drain(backend, p, "annotate")) == sorted([Outcome.RETRIED] * 2 + [Outcome.COMMITTED] * 2)
    assert drain(backend, p, "notify") == [Outcome.COMMITTED] * 2
    spans = [s for s in exporter.get_finished_spans() if s.name.endswith(" process")]
    # Then each job is one trace: its four deliveries (one a retry), and nothing of the other job
    by_job: dict[str, list] = {}  # type: ignore[type-arg]
    for s in spans:
        by_job.setdefault(s.attributes["orchestrator.job_id"], []).append(s)
    assert set(by_job) == {"a", "b"}
    for job, mine in by_job.items():
        assert len({s.context.trace_id for s in mine}) == 1, job
        stages = sorted((s.attributes["orchestrator.stage"], s.attributes["orchestrator.attempt"],
                         s.attributes["orchestrator.outcome"]) for s in mine)
        assert stages == [("annotate", 1, "retried"), ("annotate", 2, "committed"), ("fetch", 1, "committed"),
                          ("notify", 1, "committed")], stages
        assert all(s.kind == SpanKind.CONSUMER for s in mine)
        retry = next(s for s in mine if s.attributes["orchestrator.outcome"] == "retried")
        assert retry.status.status_code == StatusCode.ERROR
        assert any(e.name == "exception" and "annotator busy" in str(e.attributes) for e in retry.events)
        # a stage's span hangs under the span id of the message that emitted its message
        fetch = next(s for s in mine if s.attributes["orchestrator.stage"] == "fetch")
        assert any(e.name == "emit" for e in fetch.events)
        annotate_done = next(s for s in mine if s.attributes["orchestrator.stage"] == "annotate"
                             and s.attributes["orchestrator.outcome"] == "committed")
        assert annotate_done.parent is not None
        fetch_msg = fetch.attributes["messaging.message.id"]
        assert annotate_done.parent.span_id == int(fetch_msg[:16], 16)
    assert by_job["a"][0].context.trace_id != by_job["b"][0].context.trace_id
    # the handler's own span is inside each delivery's
    handles = [s for s in exporter.get_finished_spans() if s.name == "handle"]
    assert len(handles) == len(spans)
    assert {h.parent.span_id for h in handles if h.parent} == {s.context.span_id for s in spans}


def test_a_worker_exports_spans_as_the_otel_environment_says(tmp_path, monkeypatch, capfd) -> None:  # type: ignore[no-untyped-def]
    from orchestrator.cli import main

    (tmp_path / "otelpipe.py").write_text(
        "from orchestrator import JobStatus, Pipeline, Result\n"
        "pipeline = Pipeline('o')\n"
        "pipeline.stage('s', source='in')(lambda ctx, msg: Result(status=JobStatus.COMPLETED))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "otel-test")
    db = f"sqlite:///{tmp_path / 'o.db'}"
    assert main(["submit", "otelpipe:pipeline", "--queue", "in", "--job-id", "j1", "--backend", db]) == 0
    assert main(["worker", "otelpipe:pipeline", "--stage", "s", "--until-idle", "--wait", "0", "--backend", db]) == 0
    from opentelemetry import trace

    trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
    out = capfd.readouterr().out
    assert '"name": "s process"' in out and '"orchestrator.job_id": "j1"' in out and "otel-test" in out
