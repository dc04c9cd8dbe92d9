"""Periodic schedules: a job per tick of a cron expression or an interval, fired by the
pipeline's own workers (no separate beat process to keep alive).

**Exactly one job per tick**, however many workers fire and crash: a tick's job id derives
from the schedule's name and the tick's time (``nightly-report@2026-12-05T01:00:00.000Z``), so a
second firing, by another worker or after a crash, is an idempotent submit of the same job.

Which ticks fire needs no state of its own: a worker looks back over the schedule's last
``max_catch_up`` ticks for the newest one whose job exists (one batch read, once per tick),
and the ticks after it are the ones nobody fired. ``missed`` says what to do with those that
are late (every worker was down at their time): ``skip`` fires a tick only within ``grace_s``
of its time, ``latest`` fires the newest one, ``all`` fires each, oldest first (at most
``max_catch_up``). A schedule that never fired in that window fires only what is within grace.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from croniter import croniter

from orchestrator.base import MAX_PRIORITY, Backend
from orchestrator.errors import ConfigError
from orchestrator.kinds import seconds, whole
from orchestrator.logging import error_text
from orchestrator.status import JobRecord
from orchestrator.storable import id_problem, value_problem

Missed = Literal["skip", "latest", "all"]
MISSED_POLICIES: tuple[Missed, ...] = ("skip", "latest", "all")
#: how often a worker looks for due ticks, in seconds
DEFAULT_SCHEDULE_POLL_S = 0.2
#: ticks a worker looks back over for the last one fired (and so at most fires late)
DEFAULT_MAX_CATCH_UP = 100
#: how late a tick may still fire under ``skip``, in seconds (and at most one period)
DEFAULT_GRACE_S = 60.0

log = structlog.get_logger("orchestrator.schedules")


@dataclass(frozen=True)
class Schedule:
    name: str
    payload: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    topic: str | None = None
    cron: str | None = None
    #: an interval in seconds: ticks at whole multiples of it since the epoch (UTC)
    every_s: float | None = None
    timezone: str = "UTC"
    missed: Missed = "skip"
    priority: int = 0
    user_id: str | None = None
    grace_s: float | None = None
    max_catch_up: int = DEFAULT_MAX_CATCH_UP

    def __post_init__(self) -> None:
        problems = []
        if id_problem(self.name, "schedule name") or "@" in self.name or len(self.name.encode()) > 200:
            problems.append(f"schedule name {self.name!r}: text of 1..200 bytes, without '@' or NUL")
        problems += [f"schedule {self.name!r}: {problem}" for problem in self._shape_problems()]
        if (self.cron is None) == (self.every_s is None):
            problems.append(f"schedule {self.name}: give cron= or every=, exactly one")
        if self.cron is not None and not (isinstance(self.cron, str) and croniter.is_valid(self.cron)):
            problems.append(f"schedule {self.name}: {self.cron!r} is not a cron expression "
                            "(five fields: minute hour day-of-month month day-of-week)")
        if self.every_s is not None and not (isinstance(self.every_s, (int, float)) and 0 < self.every_s < math.inf):
            problems.append(f"schedule {self.name}: every must be a positive interval, got {self.every_s!r}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            problems.append(f"schedule {self.name}: unknown time zone {self.timezone!r}")
        if self.missed not in MISSED_POLICIES:
            problems.append(f"schedule {self.name}: missed must be one of {', '.join(MISSED_POLICIES)}, "
                            f"got {self.missed!r}")
        if (self.queue is None) == (self.topic is None):
            problems.append(f"schedule {self.name}: give queue= or topic=, exactly one")
        if not whole(self.priority, 0, MAX_PRIORITY):
            problems.append(f"schedule {self.name}: priority must be 0..{MAX_PRIORITY}")
        if not whole(self.max_catch_up, 1):
            problems.append(f"schedule {self.name}: max_catch_up must be a whole number >= 1")
        if problems:
            raise ConfigError("; ".join(problems))

    def _shape_problems(self) -> list[str]:
        """What each tick's submit would refuse, found once where the schedule is declared."""
        out = [problem for what, value in (("queue", self.queue), ("topic", self.topic), ("user_id", self.user_id))
               if (problem := id_problem(value, what, optional=True))]
        if not isinstance(self.payload, dict):
            out.append(f"payload must be a JSON object (a dict), got {type(self.payload).__name__}")
        elif (problem := value_problem(self.payload, "payload")) is not None:
            out.append(problem)
        if self.grace_s is not None and not seconds(self.grace_s):
            out.append(f"grace_s must be a finite number of seconds >= 0, got {self.grace_s!r}")
        return out

    # -- ticks ------------------------------------------------------------------------------
    def previous(self, t: float) -> float:
        """The latest tick at or before ``t`` (epoch seconds)."""
        if self.every_s is not None:
            return math.floor(t / self.every_s + 1e-9) * self.every_s
        assert self.cron is not None
        start = datetime.fromtimestamp(t, ZoneInfo(self.timezone)) + timedelta(microseconds=1)
        return float(croniter(self.cron, start).get_prev(datetime).timestamp())

    def next(self, t: float) -> float:
        """The first tick after ``t``."""
        if self.every_s is not None:
            return self.previous(t) + self.every_s
        assert self.cron is not None
        return float(croniter(self.cron, datetime.fromtimestamp(t, ZoneInfo(self.timezone))).get_next(datetime)
                     .timestamp())

    def ticks_back(self, t: float, n: int) -> list[float]:
        """The latest ``n`` ticks at or before ``t``, newest first."""
        if self.every_s is not None:
            last = self.previous(t)
            return [last - i * self.every_s for i in range(n)]
        assert self.cron is not None
        it = croniter(self.cron, datetime.fromtimestamp(t, ZoneInfo(self.timezone)) + timedelta(microseconds=1))
        return [float(it.get_prev(datetime).timestamp()) for _ in range(n)]

    def period_s(self, t: float) -> float:
        return self.next(t) - self.previous(t)

    def job_id(self, tick: float) -> str:
        """The job of ``tick``: the same on every worker, so a second firing is idempotent."""
        return f"{self.name}@{tick_text(tick)}"

    def late_ok_s(self, t: float) -> float:
        """How late a tick may still fire under ``skip``."""
        return min(self.grace_s if self.grace_s is not None else DEFAULT_GRACE_S, self.period_s(t))


def tick_text(tick: float) -> str:
    return datetime.fromtimestamp(tick, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def due_ticks(schedule: Schedule, now: float, fired: Callable[[list[str]], set[str]]) -> list[float]:
    """The ticks of ``schedule`` to fire now, oldest first. ``fired(job_ids)`` says which of
    those jobs exist already (one batch read)."""
    back = schedule.ticks_back(now, schedule.max_catch_up)
    exist = fired([schedule.job_id(t) for t in back])
    unfired = []
    for t in back:
        if schedule.job_id(t) in exist:
            break
        unfired.append(t)
    else:  # nothing fired in the whole window: a new schedule, or one down for longer
        return [t for t in reversed(unfired) if now - t < schedule.late_ok_s(now)]
    unfired.reverse()
    match schedule.missed:
        case "all":
            return unfired
        case "latest":
            return unfired[-1:]
        case _:
            return [t for t in unfired if now - t < schedule.late_ok_s(now)]


@dataclass
class Firing:
    schedule: str
    tick: float
    job_id: str
    created: bool


class Scheduled(Protocol):
    """What firing schedules needs of a pipeline: its schedules, and a submit."""

    @property
    def schedules(self) -> dict[str, Schedule]: ...

    def submit(self, backend: Backend, *, job_id: str, payload: dict[str, Any], queue: str | None = None,
               topic: str | None = None, user_id: str | None = None, fields: dict[str, Any] | None = None,
               priority: int = 0) -> tuple[JobRecord, bool]: ...


class Scheduler:
    """Fires a pipeline's schedules on a backend: ``fire_due`` once, or ``run`` in a thread."""

    def __init__(self, pipeline: Scheduled, backend: Backend, *, poll_s: float = DEFAULT_SCHEDULE_POLL_S) -> None:
        self.pipeline = pipeline
        self.backend = backend
        self.poll_s = poll_s
        self._done: dict[str, float] = {}  # schedule -> the latest tick this process saw fired

    def fire_due(self) -> list[Firing]:
        now = self.backend.clock.now()
        out: list[Firing] = []
        for sch in self.pipeline.schedules.values():
            latest = sch.previous(now)
            if self._done.get(sch.name) == latest:
                continue  # looked already this tick: no store read until the next one
            ticks = due_ticks(sch, now, lambda ids: set(self.backend.store.get_docs(ids)))
            for tick in ticks:
                job, created = self.pipeline.submit(
                    self.backend, job_id=sch.job_id(tick), payload=dict(sch.payload), queue=sch.queue,
                    topic=sch.topic, user_id=sch.user_id, priority=sch.priority,
                    fields={"schedule": sch.name, "tick": tick_text(tick)})
                out.append(Firing(sch.name, tick, job.job_id, created))
                if created:
                    log.info("schedule fired", schedule=sch.name, tick=tick_text(tick), job_id=job.job_id)
            self._done[sch.name] = latest
        return out

    def run(self, stop: threading.Event) -> None:
        """Fire due ticks every ``poll_s`` until ``stop`` is set; an error is logged and the
        tick tried again at the next poll (the submits are idempotent)."""
        while not stop.is_set():
            try:
                self.fire_due()
            except Exception as exc:
                log.warning("firing schedules failed; trying again", error=error_text(exc))
            stop.wait(self.poll_s)

    def start(self, stop: threading.Event) -> threading.Thread | None:
        if not self.pipeline.schedules:
            return None
        t = threading.Thread(target=self.run, args=(stop,), daemon=True, name="orchestrator-scheduler")
        t.start()
        return t


def describe(pipeline: Scheduled, backend: Backend) -> list[dict[str, Any]]:
    """Each schedule with its last firing (the newest tick whose job exists, within
    ``max_catch_up`` ticks) and its next tick."""
    now = backend.clock.now()
    rows = []
    for sch in pipeline.schedules.values():
        back = sch.ticks_back(now, sch.max_catch_up)
        exist = backend.store.get_docs([sch.job_id(t) for t in back])
        last = next((t for t in back if sch.job_id(t) in exist), None)
        rows.append({
            "name": sch.name, "when": sch.cron if sch.cron is not None else f"every {sch.every_s:g}s",
            "timezone": sch.timezone, "missed": sch.missed, "target": sch.queue or sch.topic,
            "last": tick_text(last) if last is not None else None,
            "last_job": sch.job_id(last) if last is not None else None,
            "next": tick_text(sch.next(now)),
        })
    return rows
