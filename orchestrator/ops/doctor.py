"""``orchestrator doctor``: check every stage's settings against the live backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.backends import Backend
from orchestrator.pipeline import Pipeline, Stage
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
    jobs = backend.store.query(limit=SAMPLE_JOBS)
    took = sorted(s.finished_at - s.started_at for j in jobs for k, s in j.steps.items()
                  if (k == stage or k.startswith(f"{stage}#")) and s.state == "committed"
                  and s.started_at is not None and s.finished_at is not None)
    if len(took) < 20:
        return None
    return took[min(len(took) - 1, int(len(took) * 0.99))], len(took)


def diagnose(pipeline: Pipeline, backend: Backend) -> list[Finding]:
    topics = set(backend.topic.topics())
    out: list[Finding] = []
    for st in pipeline.stages.values():
        found = [*_stage_findings(st, backend), *_queue_findings(st, backend), *_topic_findings(st, backend, topics)]
        out.extend(Finding(st.name, severity, message) for severity, message in found)
    out.extend(stranded_jobs(pipeline, backend, topics))
    return out


def _stage_findings(st: Stage, backend: Backend) -> list[tuple[str, str]]:
    """The stage's own settings, and how long its handlers took."""
    t, out = backend.transport, []
    if st.max_receives < 3 and st.batch_size != 1:
        out.append(("warning", f"max_receives {st.max_receives} with batches: a process that dies uses an attempt of "
                               "every message it held, so one crash can dead-letter healthy batch-mates (use >= 3, "
                               "or batch_size=1)"))
    observed = handler_p99(backend, st.name)
    if observed is not None and st.begin != "lazy" and observed[0] > st.visibility_timeout_s:
        out.append(("warning", f"handlers took up to {observed[0]:.1f}s (p99 of {observed[1]} steps), longer than "
                               f"the visibility timeout {st.visibility_timeout_s:g}s: only the heartbeat keeps their "
                               "leases; a stalled process loses them (raise visibility_timeout_s)"))
    for problem in st.problems(max_visibility_s=t.max_visibility_s, max_delay_s=t.max_delay_s,
                               max_batch=t.max_batch):
        out.append(("error", problem.split(": ", 1)[-1]))
    if st.time_limit_s is not None and st.time_limit_s < st.visibility_timeout_s:
        out.append(("warning", f"time_limit_s {st.time_limit_s:g}s is shorter than the visibility timeout "
                               f"{st.visibility_timeout_s:g}s: a runaway handler is only redelivered when its lease "
                               "lapses"))
    return out


def _queue_findings(st: Stage, backend: Backend) -> list[tuple[str, str]]:
    """The queues the stage reads and writes, beside what the stage expects of them."""
    t, out = backend.transport, []
    if st.emit_to and t.spec(st.emit_to) is None:
        out.append(("error", f"emit_to queue {st.emit_to} does not exist (run setup)"))
    spec = t.spec(st.source)
    if spec is None:
        return [("error", f"source queue {st.source} does not exist (run setup)"), *out]
    if spec.dead_letter is None:
        out.append(("warning", f"queue {st.source} has no dead-letter queue: a message that kills every worker "
                               "is retried until the queue's retention drops it"))
    elif spec.redrive_after is not None and spec.redrive_after <= st.max_receives:
        out.append(("error", f"queue {st.source} dead-letters after {spec.redrive_after} receives but the "
                             f"controller needs {st.max_receives + 1} (max_receives {st.max_receives}, plus one to "
                             "mark the job FAILED): poison would leave the queue while its job stays RUNNING"))
    if abs(spec.visibility_timeout_s - st.visibility_timeout_s) > 0.5:
        out.append(("warning", f"queue {st.source} default visibility is {spec.visibility_timeout_s:g}s, the stage "
                               f"leases for {st.visibility_timeout_s:g}s on every receive (heartbeat every "
                               f"{st.visibility_timeout_s / 3:g}s); other consumers of the queue get the default"))
    if spec.delay_s != st.delay_s:
        out.append(("warning", f"queue {st.source} delays messages by {spec.delay_s:g}s, the stage expects "
                               f"{st.delay_s:g}s"))
    return out


def _topic_findings(st: Stage, backend: Backend, topics: set[str]) -> list[tuple[str, str]]:
    """The topics the stage subscribes to and publishes to."""
    out = []
    for topic in st.subscribe:
        if topic not in topics:
            out.append(("error", f"topic {topic} does not exist (run setup)"))
            continue
        subs = dict(backend.topic.subscriptions(topic))
        if st.source not in subs:
            out.append(("error", f"queue {st.source} is not subscribed to topic {topic}: the stage gets nothing "
                                 "from it"))
        elif subs[st.source] != st.raw_subscription:
            actual = "raw" if subs[st.source] else "SNS-wrapped"
            expected = "raw" if st.raw_subscription else "SNS-wrapped"
            out.append(("warning", f"subscription {topic} -> {st.source} delivers {actual} bodies, the stage "
                                   f"expects {expected} (the codec accepts both; plain-JSON ids then derive from "
                                   "the body)"))
    if st.publish_to:
        if st.publish_to not in topics:
            out.append(("error", f"topic {st.publish_to} does not exist (run setup)"))
        elif not backend.topic.subscriptions(st.publish_to):
            out.append(("warning", f"topic {st.publish_to} has no subscriptions: what the stage publishes goes "
                                   "nowhere"))
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
