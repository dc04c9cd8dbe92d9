"""OpenTelemetry traces (the optional extra ``orchestrator[otel]``): one trace per job.

``TracingMiddleware`` makes a span per delivery (``<stage> process``, kind CONSUMER), with a
``handle`` span inside it for the handler and events for the commit and each emitted message.
Attributes: job id, stage, message id, attempt, outcome. Every span of a job is in one trace:
its id is the envelope's ``trace_id`` (the job's first message id, 128 bits), and a span's
parent is the message that emitted its message (``parent_id``), so the stages link up with no
header to propagate. Retries are spans of their own, in the same trace.

``configure_from_env()`` sets up the SDK from the standard ``OTEL_*`` variables (exporter
``otlp`` over HTTP or ``console``, service name from ``OTEL_SERVICE_NAME``); the worker CLI
calls it when ``OTEL_TRACES_EXPORTER`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from orchestrator.logging import exception_text
from orchestrator.middleware import Middleware
from orchestrator.storable import storable_text

if TYPE_CHECKING:
    from orchestrator.base import Delivery
    from orchestrator.envelope import Envelope
    from orchestrator.stage import Context, Stage
    from orchestrator.status import OutMessage

MAX_OPEN_SPANS = 10_000  # a delivery whose outcome never came (its commit refused) is ended past this


def _id(hexid: str | None, bits: int) -> int | None:
    """An OTel id from one of ours (hex); None when it is not hex or is zero."""
    if not hexid:
        return None
    try:
        value = int(hexid[: bits // 4], 16)
    except ValueError:
        return None
    return value or None


def parent_context(env: Envelope) -> otel_context.Context:
    """The context a delivery's span starts in: the job's trace, under the span of the
    message that emitted this one."""
    trace_id = _id(env.trace_id or env.id, 128)
    span_id = _id(env.parent_id or env.trace_id or env.id, 64)
    if trace_id is None or span_id is None:
        return otel_context.Context()
    parent = SpanContext(trace_id=trace_id, span_id=span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


class TracingMiddleware(Middleware):
    """A span per delivery; see the module's description."""

    def __init__(self, tracer_provider: Any = None) -> None:
        self.tracer = trace.get_tracer("orchestrator", tracer_provider=tracer_provider)
        self._open: dict[str, tuple[Any, Any]] = {}  # receipt -> (delivery span, handle span)
        self._by_message: dict[str, str] = {}  # envelope id -> receipt, while its span is open
        self._lock = threading.Lock()

    @staticmethod
    def _key(delivery: Delivery) -> str:
        return delivery.receipt or delivery.message_id

    def before_handle(self, ctx: Context) -> None:
        env, d = ctx.envelope, ctx.delivery
        span = self.tracer.start_span(
            f"{ctx.stage.name} process", context=parent_context(env), kind=SpanKind.CONSUMER,
            attributes={"orchestrator.job_id": env.job_id, "orchestrator.stage": ctx.stage.name,
                        "messaging.message.id": env.id, "orchestrator.attempt": d.receive_count,
                        "messaging.destination.name": d.queue})
        handle = self.tracer.start_span("handle", context=trace.set_span_in_context(span))
        with self._lock:
            if len(self._open) >= MAX_OPEN_SPANS:
                for old, old_handle in self._open.values():
                    old_handle.end()
                    old.end()
                self._open.clear()
                self._by_message.clear()
            self._open[self._key(d)] = (span, handle)
            self._by_message[env.id] = self._key(d)

    def after_handle(self, ctx: Context, outcome: str, seconds: float) -> None:
        with self._lock:
            pair = self._open.get(self._key(ctx.delivery))
        if pair is None:
            return
        _, handle = pair
        handle.set_attribute("orchestrator.outcome", outcome)
        handle.end()
        if outcome not in ("handled", "retried"):  # nothing to commit (a retry ends in on_retry)
            self._finish(ctx.delivery, outcome, error=outcome in ("failed", "dead_lettered"))

    def on_emit(self, stage: Stage, message: OutMessage) -> None:
        # an emitted envelope names the message it came from (parent_id): its delivery's span
        try:
            parent = json.loads(message.body).get("parent_id")
        except (ValueError, AttributeError):
            return
        with self._lock:
            key = self._by_message.get(parent) if isinstance(parent, str) else None
            pair = self._open.get(key) if key is not None else None
        if pair is not None:
            pair[0].add_event("emit", {"messaging.message.id": message.id, "messaging.destination.name": message.target})

    def on_commit(self, stage: Stage, delivery: Delivery) -> None:
        self._finish(delivery, "committed", error=False)

    def on_retry(self, stage: Stage, delivery: Delivery, error: BaseException, delay_s: float) -> None:
        with self._lock:
            pair = self._open.get(self._key(delivery))
        if pair is not None:
            # the event ``record_exception`` makes, bounded and safe: it would hold every byte of
            # the exception's message, and raise where the exception's ``__str__`` does
            pair[0].add_event("exception", {"exception.type": type(error).__name__,
                                            "exception.message": storable_text(error),
                                            "exception.stacktrace": exception_text(error),
                                            "exception.escaped": False})
            pair[0].set_attribute("orchestrator.retry_in_s", delay_s)
        self._finish(delivery, "retried", error=True)

    def _finish(self, delivery: Delivery, outcome: str, *, error: bool) -> None:
        with self._lock:
            pair = self._open.pop(self._key(delivery), None)
            if delivery.envelope is not None:
                self._by_message.pop(delivery.envelope.id, None)
        if pair is None:
            return
        span, _ = pair
        span.set_attribute("orchestrator.outcome", outcome)
        env = delivery.envelope
        if outcome == "committed" and env is not None:
            span.add_event("commit")
        if error:
            span.set_status(Status(StatusCode.ERROR, outcome))
        span.end()


def configure_from_env() -> TracingMiddleware | None:
    """A ``TracingMiddleware`` exporting over OTLP as the ``OTEL_*`` variables say, or None
    when none asks for traces."""
    if not (os.environ.get("OTEL_TRACES_EXPORTER") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if kind == "none":
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if kind == "console":
        exporter = ConsoleSpanExporter(out=sys.stdout)  # today's stdout, not the one at import
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, ...
    provider = TracerProvider(resource=Resource.create())  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return TracingMiddleware(provider)
