"""``orchestrator doctor``: check every stage's settings against the live backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.backends import Backend
from orchestrator.pipeline import Pipeline
from orchestrator.settings import SHOWN
from orchestrator.status import JobStatus


@dataclass(frozen=True)
class Finding:
    stage: str
    severity: str  # "error" (will misbehave) or "warning" (works, but look)
    message: str

    def __str__(self) -> str:
        return f"[{self.severity}] {self.stage}: {self.message}"


#: recent finished steps looked at for a stage's observed handler times
SAMPLE_JOBS = 1000


def effective_settings(pipeline: Pipeline) -> list[dict[str, Any]]:
    """Every stage's settings as they are in effect, each with where it came from: ``code``
    (the pipeline's own or the default), ``config file`` or ``environment``."""
    return [{"stage": st.name, "setting": key, "value": getattr(st, key),
             "source": st.setting_sources.get(key, "code")}
            for st in pipeline.stages.values() for key in SHOWN]


def handler_p99(backend: Backend, stage: str) -> tuple[float, int] | None:
    """The 99th percentile of the stage's committed steps' durations (begin to commit) over
    the latest jobs, and how many steps it saw; None without enough of them."""
    jobs = backend.store.query()[-SAMPLE_JOBS:]
    took = sorted(s.finished_at - s.started_at for j in jobs for k, s in j.steps.items()
                  if (k == stage or k.startswith(f"{stage}#")) and s.state == "committed"
                  and s.started_at is not None and s.finished_at is not None)
    if len(took) < 20:
        return None
    return took[min(len(took) - 1, int(len(took) * 0.99))], len(took)


def diagnose(pipeline: Pipeline, backend: Backend) -> list[Finding]:
    t, out = backend.transport, []
    topics = set(backend.topic.topics())
    for st in pipeline.stages.values():
        def add(severity: str, message: str, st_name: str = st.name) -> None:
            out.append(Finding(st_name, severity, message))

        if st.max_receives < 3 and st.batch_size != 1:
            add("warning", f"max_receives {st.max_receives} with batches: a process that dies uses an attempt of "
                           "every message it held, so one crash can dead-letter healthy batch-mates (use >= 3, or "
                           "batch_size=1)")
        observed = handler_p99(backend, st.name)
        if observed is not None and st.claim == "eager" and observed[0] > st.visibility_timeout:
            add("warning", f"handlers took up to {observed[0]:.1f}s (p99 of {observed[1]} steps), longer than the "
                           f"visibility timeout {st.visibility_timeout:g}s: only the heartbeat keeps their leases; a "
                           "stalled process loses them (raise visibility_timeout)")

        for problem in st.problems(max_visibility_s=t.max_visibility_s, max_delay_s=t.max_delay_s,
                                   max_batch=t.max_batch):
            add("error", problem.split(": ", 1)[-1])
        beat = st.visibility_timeout / 3
        if st.time_limit_s is not None and st.time_limit_s < st.visibility_timeout:
            add("warning", f"time_limit_s {st.time_limit_s:g}s is shorter than the visibility timeout "
                           f"{st.visibility_timeout:g}s: a runaway handler is only redelivered when its lease lapses")
        spec = t.spec(st.source)
        if spec is None:
            add("error", f"source queue {st.source} does not exist (run setup)")
        else:
            if spec.dead_letter is None:
                add("warning", f"queue {st.source} has no dead-letter queue: a message that kills every worker "
                               "is retried until the queue's retention drops it")
            elif spec.redrive_after is not None and spec.redrive_after <= st.max_receives:
                add("error", f"queue {st.source} dead-letters after {spec.redrive_after} receives but the controller "
                             f"needs {st.max_receives + 1} (max_receives {st.max_receives}, plus one to mark the job "
                             "FAILED): poison would leave the queue while its job stays RUNNING")
            if abs(spec.visibility_timeout_s - st.visibility_timeout) > 0.5:
                add("warning", f"queue {st.source} default visibility is {spec.visibility_timeout_s:g}s, the stage "
                               f"leases for {st.visibility_timeout:g}s on every receive (heartbeat every {beat:g}s); "
                               "other consumers of the queue get the default")
            if spec.delay_s != st.delay_s:
                add("warning", f"queue {st.source} delays messages by {spec.delay_s:g}s, the stage expects "
                               f"{st.delay_s:g}s")
        for topic in st.subscribe:
            if topic not in topics:
                add("error", f"topic {topic} does not exist (run setup)")
                continue
            subs = dict(backend.topic.subscriptions(topic))
            if st.source not in subs:
                add("error", f"queue {st.source} is not subscribed to topic {topic}: the stage gets nothing from it")
            elif subs[st.source] != st.raw_subscription:
                actual = "raw" if subs[st.source] else "SNS-wrapped"
                expected = "raw" if st.raw_subscription else "SNS-wrapped"
                add("warning", f"subscription {topic} -> {st.source} delivers {actual} bodies, the stage expects "
                               f"{expected} (the codec accepts both; plain-JSON ids then derive from the body)")
        if st.publish_to:
            if st.publish_to not in topics:
                add("error", f"topic {st.publish_to} does not exist (run setup)")
            elif not backend.topic.subscriptions(st.publish_to):
                add("warning", f"topic {st.publish_to} has no subscriptions: what the stage publishes goes nowhere")
        if st.emit_to and t.spec(st.emit_to) is None:
            add("error", f"emit_to queue {st.emit_to} does not exist (run setup)")
    out.extend(stranded_jobs(pipeline, backend, topics))
    return out


def stranded_jobs(pipeline: Pipeline, backend: Backend, topics: set[str]) -> list[Finding]:
    """PENDING jobs submitted to a queue no stage takes or a topic that does not exist (or
    that no stage's queue subscribes to): they would wait forever, and a sweep would re-send
    them to the same place."""
    sources = {st.source for st in pipeline.stages.values()}
    subscribed = {tp for st in pipeline.stages.values() for tp in st.subscribe}
    stranded: dict[str, list[str]] = {}
    for job in backend.store.query(status=JobStatus.PENDING):
        o = job.origin
        if o is None:
            continue
        if o.kind == "queue" and o.target not in sources:
            where = f"queue {o.target} (no stage takes it)"
        elif o.kind == "topic" and (o.target not in topics or o.target not in subscribed):
            where = f"topic {o.target} ({'does not exist' if o.target not in topics else 'no stage subscribes'})"
        else:
            continue
        stranded.setdefault(where, []).append(job.job_id)
    return [Finding("-", "error", f"{len(ids)} PENDING job(s) were submitted to {where}: {', '.join(ids[:5])}"
                                  f"{' ...' if len(ids) > 5 else ''}")
            for where, ids in sorted(stranded.items())]
