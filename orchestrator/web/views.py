"""What the dashboard shows, read from the backend: any worker's work counts, not one process's.

Queue depths come from the transport; throughput and failures over the last hour from the
jobs' step records (each finished step has its stage, state and finish time), so nothing is
kept in one worker's memory and every process's work shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.backends import Backend
from orchestrator.pipeline import Pipeline
from orchestrator.status import JobRecord, JobStatus

WINDOW_S = 3600.0
BUCKETS = 12  # five-minute bars over the hour
#: jobs read for the charts (the latest; a busy pipeline's older hour is sampled away)
CHART_JOBS = 5000
#: jobs a search by stage or id prefix looks through (the latest of the status, user and time asked)
SEARCH_SCAN = 10_000


@dataclass(frozen=True)
class StageRow:
    stage: str
    queue: str
    visible: int
    in_flight: int
    delayed: int
    dead_letters: int
    committed: list[int]  # per bucket, oldest first
    failed: list[int]

    @property
    def failure_rate(self) -> float:
        done, bad = sum(self.committed), sum(self.failed)
        return bad / (done + bad) if done + bad else 0.0


def overview(pipeline: Pipeline, backend: Backend, *, now: float | None = None) -> list[StageRow]:
    now = backend.clock.now() if now is None else now
    jobs = backend.store.query(limit=CHART_JOBS)
    rows = []
    for st in pipeline.stages.values():
        depth = backend.transport.depth(st.source)
        committed, failed = [0] * BUCKETS, [0] * BUCKETS
        for job in jobs:
            for key, step in job.steps.items():
                if key != st.name and not key.startswith(f"{st.name}#"):
                    continue
                if step.finished_at is None or not now - WINDOW_S <= step.finished_at <= now:
                    continue
                bucket = min(BUCKETS - 1, int((step.finished_at - (now - WINDOW_S)) / (WINDOW_S / BUCKETS)))
                (committed if step.state == "committed" else failed)[bucket] += 1
        rows.append(StageRow(st.name, st.source, depth.visible, depth.in_flight, depth.delayed,
                             backend.transport.depth(st.dead_letter_queue).total, committed, failed))
    return rows


def search(backend: Backend, *, status: str | None = None, stage: str | None = None, user: str | None = None,
           since: float | None = None, job_id: str | None = None, limit: int = 100) -> list[JobRecord]:
    """Jobs by status, stage, user, creation time and id (a prefix), the latest first. The
    store reads only the latest ``limit`` (of the status, user and time asked for); a search
    by stage or id prefix looks through the latest ``SEARCH_SCAN`` of those."""
    if job_id:
        exact = backend.store.get(job_id)
        if exact is not None:
            return [exact]
    found = backend.store.query(user_id=user or None, status=JobStatus(status) if status else None, since=since,
                                limit=SEARCH_SCAN if stage or job_id else limit)
    found = [r for r in found if (not stage or any(k == stage or k.startswith(f"{stage}#") for k in r.steps))
             and (not job_id or r.job_id.startswith(job_id))]
    return list(reversed(found))[:limit]


def timeline(job: JobRecord) -> list[dict[str, Any]]:
    """The job's history as rows, each with the time since the one before it."""
    rows, before = [], job.created_at
    for h in job.history:
        rows.append({"at": h.at, "after_s": max(0.0, h.at - before), "event": h.event, "stage": h.stage,
                     "to_status": h.to_status.value if h.to_status else None, "reason": h.reason,
                     "traceback": h.traceback})
        before = h.at
    return rows


def bars(values: list[int], *, width: int = 240, height: int = 40) -> list[dict[str, float]]:
    """SVG bar geometry for a small chart (server-drawn: no script on the page)."""
    top = max(values) or 1
    w = width / max(1, len(values))
    return [{"x": i * w + 1, "w": max(1.0, w - 2), "h": height * v / top, "y": height - height * v / top, "v": v}
            for i, v in enumerate(values)]
