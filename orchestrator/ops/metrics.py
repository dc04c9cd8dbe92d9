"""Prometheus metrics per stage, fed by middleware hooks, and the health/metrics endpoint."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from orchestrator.middleware import Middleware

if TYPE_CHECKING:
    from orchestrator.base import Delivery, Transport
    from orchestrator.stage import Context, Stage
    from orchestrator.status import OutMessage

HANDLER_BUCKETS_S = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900)


class PrometheusMiddleware(Middleware):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter("orchestrator_received", "Messages received", ["stage"], registry=r)
        self.succeeded = Counter("orchestrator_succeeded", "Steps committed", ["stage"], registry=r)
        self.failed = Counter("orchestrator_failed", "Steps failed permanently", ["stage"], registry=r)
        self.retried = Counter("orchestrator_retried", "Transient errors released for retry", ["stage"], registry=r)
        self.dead_lettered = Counter("orchestrator_dead_lettered", "Messages dead-lettered", ["stage"], registry=r)
        self.emitted = Counter("orchestrator_emitted", "Outbox messages sent", ["stage"], registry=r)
        self.in_flight = Gauge("orchestrator_in_flight", "Handlers running now", ["stage"], registry=r)
        self.handler_seconds = Histogram("orchestrator_handler_seconds", "Handler run time in seconds", ["stage"],
                                         buckets=HANDLER_BUCKETS_S, registry=r)
        self.lease_extensions = Counter("orchestrator_lease_extensions", "Heartbeat lease extensions", ["stage"],
                                        registry=r)
        self.leases_lost = Counter("orchestrator_leases_lost", "Leases lost (results discarded)", ["stage"], registry=r)
        self.backend_unavailable = Counter("orchestrator_backend_unavailable",
                                           "Receives or batch writes the backend could not do (outages)", ["stage"],
                                           registry=r)

    def on_receive(self, stage: Stage, count: int) -> None:
        self.received.labels(stage.name).inc(count)

    def before_handle(self, ctx: Context) -> None:
        self.in_flight.labels(ctx.stage.name).inc()

    def after_handle(self, ctx: Context, outcome: str, seconds: float) -> None:
        self.in_flight.labels(ctx.stage.name).dec()
        self.handler_seconds.labels(ctx.stage.name).observe(seconds)
        if outcome == "failed":
            self.failed.labels(ctx.stage.name).inc()

    def on_retry(self, stage: Stage, delivery: Delivery, error: BaseException, delay_s: float) -> None:
        self.retried.labels(stage.name).inc()

    def on_dead_letter(self, stage: Stage, delivery: Delivery, reason: str) -> None:
        self.dead_lettered.labels(stage.name).inc()

    def on_emit(self, stage: Stage, message: OutMessage) -> None:
        self.emitted.labels(stage.name).inc()

    def on_commit(self, stage: Stage, delivery: Delivery) -> None:
        self.succeeded.labels(stage.name).inc()

    def on_lease_extended(self, stage: Stage, delivery: Delivery) -> None:
        self.lease_extensions.labels(stage.name).inc()

    def on_lease_lost(self, stage: Stage, delivery: Delivery) -> None:
        self.leases_lost.labels(stage.name).inc()

    def on_backend_unavailable(self, stage: Stage, error: BaseException, delay_s: float) -> None:
        self.backend_unavailable.labels(stage.name).inc()


class QueueDepthCollector(Collector):
    """Queue depth, read from the backend at scrape time."""

    def __init__(self, transport: Transport, queues: Sequence[str]) -> None:
        self.transport = transport
        self.queues = list(queues)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily("orchestrator_queue_depth", "Messages in the queue", labels=["queue", "state"])
        for q in self.queues:
            try:
                d = self.transport.depth(q)
            except Exception:  # a scrape must not fail because the backend hiccuped
                continue
            g.add_metric([q, "visible"], d.visible)
            g.add_metric([q, "in_flight"], d.in_flight)
            g.add_metric([q, "delayed"], d.delayed)
        yield g


class HealthServer:
    """``/metrics``, ``/healthz`` (the loop went round within ``stale_s``) and ``/readyz``
    (a receive succeeded) on ``127.0.0.1:port`` (``host`` to change it)."""

    def __init__(self, port: int, registry: CollectorRegistry, *, alive: Callable[[], bool],
                 ready: Callable[[], bool], host: str = "127.0.0.1") -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, code, ctype = generate_latest(outer.registry), 200, CONTENT_TYPE_LATEST
                elif self.path == "/healthz":
                    ok = outer.alive()
                    body, code, ctype = (b"ok\n" if ok else b"stalled\n"), (200 if ok else 503), "text/plain"
                elif self.path == "/readyz":
                    ok = outer.ready()
                    body, code, ctype = (b"ready\n" if ok else b"not ready\n"), (200 if ok else 503), "text/plain"
                else:
                    body, code, ctype = b"not found\n", 404, "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

        self.registry, self.alive, self.ready = registry, alive, ready
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="orchestrator-http")
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def loop_alive(last_loop_at: Callable[[], float], stale_s: float) -> Callable[[], bool]:
    return lambda: time.monotonic() - last_loop_at() < stale_s
