"""Pipelines: the stages, joins and schedules the user declares, and the calls on a job (submit,
cancel, retry). The controller runs them; ``orchestrator.stage`` holds a stage and what its
handler sees and returns (named here too)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from orchestrator.base import Backend, QueueSpec
from orchestrator.controllers.retry import retry as retry_job
from orchestrator.controllers.submit import submit as submit_job
from orchestrator.controllers.submit import submit_many as submit_jobs
from orchestrator.durations import parse_duration
from orchestrator.errors import ConfigError
from orchestrator.middleware import Middleware
from orchestrator.schedules import DEFAULT_MAX_CATCH_UP, Missed, Schedule
from orchestrator.stage import Context, Emit, Handler, Result, Snooze, Stage, renamed_settings
from orchestrator.status import JobRecord

# what a pipeline's author needs, in one place
__all__ = ["Context", "Emit", "Handler", "Pipeline", "Result", "Snooze", "Stage"]


class Pipeline:
    def __init__(self, name: str, *, middleware: list[Middleware] | None = None,
                 retention: float | str | timedelta | None = None) -> None:
        self.name = name
        self.stages: dict[str, Stage] = {}
        self.middleware: list[Middleware] = list(middleware or [])
        self.schedules: dict[str, Schedule] = {}
        #: how long a finished job (COMPLETED, FAILED, CANCELLED) is kept after its last
        #: change; the sweeper (``orchestrator sweep``, ``worker --sweep-every``) removes older
        #: ones with their dead letters. None: kept until ``orchestrator purge``.
        self.retention_s = _seconds(retention)

    def stage(
        self, name: str, *, source: str, emit_to: str | None = None, **options: Any
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function as the handler of stage ``name``."""

        def register(fn: Handler) -> Handler:
            self.add_stage(Stage(name=name, handler=fn, source=source, emit_to=emit_to, **renamed_settings(options)))
            return fn

        return register

    def add_stage(self, stage: Stage) -> Stage:
        if stage.name in self.stages:
            raise ConfigError(f"pipeline {self.name}: stage {stage.name} is defined twice")
        problems = stage.declaration_problems()  # (before the lists become tuples: a string is a mistake)
        if problems:
            raise ConfigError(f"pipeline {self.name}: " + "; ".join(problems))
        stage.subscribe = tuple(stage.subscribe)
        self.stages[stage.name] = stage
        return stage

    def join(self, name: str, *, parts_of: str, source: str | None = None, allow_failed: bool = False,
             **options: Any) -> Callable[[Handler], Handler]:
        """Register the decorated function as a join: it runs **once per job**, when every
        part of stage ``parts_of`` has committed, and reads their results in order from
        ``ctx.parts``. A part that FAILS fails the job with its reason (the join never runs),
        unless ``allow_failed``: then the join runs once every part has finished either way,
        and finds the failures in ``ctx.part_failures``. Its queue is ``source`` (default: its
        name); the last part's commit sends its one message (in the same transaction on SQLite
        and PostgreSQL)."""

        def register(fn: Handler) -> Handler:
            self.add_stage(Stage(name=name, handler=fn, source=source or name, parts_of=parts_of,
                                 allow_failed=allow_failed, **renamed_settings(options)))
            return fn

        return register

    def takes_submissions(self, stage: Stage) -> bool:
        """Whether a message may create its job on ``stage`` (see ``Stage.takes_submissions``)."""
        if stage.takes_submissions is not None:
            return stage.takes_submissions
        if stage.parts_of is not None:
            return False
        fed = any(o.emit_to == stage.source or (o.publish_to is not None and o.publish_to in stage.subscribe)
                  for o in self.stages.values())
        return not fed

    def join_of(self, stage: str) -> Stage | None:
        """The join stage waiting for ``stage``'s parts, if any."""
        return next((st for st in self.stages.values() if st.parts_of == stage), None)

    def schedule(
        self, name: str, *, cron: str | None = None, every: float | timedelta | None = None,
        queue: str | None = None, topic: str | None = None, payload: dict[str, Any] | None = None,
        timezone: str = "UTC", missed: Missed = "skip", priority: int = 0, user_id: str | None = None,
        grace_s: float | None = None, max_catch_up: int = DEFAULT_MAX_CATCH_UP,
    ) -> Schedule:
        """Submit a job to ``queue`` (or ``topic``) at every tick of ``cron`` (in ``timezone``)
        or ``every`` interval. The pipeline's workers fire it; each tick is one job, whose id
        is ``NAME@TICK``. ``missed`` says what happens to ticks that found every worker down:
        ``skip`` them, fire the ``latest``, or fire ``all`` (see ``orchestrator.schedules``)."""
        if name in self.schedules:
            raise ConfigError(f"pipeline {self.name}: schedule {name} is defined twice")
        every_s = every.total_seconds() if isinstance(every, timedelta) else every
        kept = {} if payload is None else dict(payload) if isinstance(payload, dict) else payload  # (a copy)
        sch = Schedule(name=name, payload=kept,
                       queue=queue, topic=topic, cron=cron, every_s=every_s,
                       timezone=timezone, missed=missed, priority=priority, user_id=user_id, grace_s=grace_s,
                       max_catch_up=max_catch_up)
        self.schedules[name] = sch
        return sch

    def get(self, name: str) -> Stage:
        try:
            return self.stages[name]
        except KeyError:
            known = ", ".join(sorted(self.stages)) or "none"
            raise ConfigError(f"pipeline {self.name} has no stage {name!r} (stages: {known})") from None

    def validate(self, backend: Backend) -> None:
        """Raise ``ConfigError`` listing every inconsistent setting."""
        problems: list[str] = []
        for st in self.stages.values():
            problems += st.problems(max_visibility_s=backend.transport.max_visibility_s,
                                    max_delay_s=backend.transport.max_delay_s, max_batch=backend.transport.max_batch)
        sources = {st.source for st in self.stages.values()}
        topics = {t for st in self.stages.values() for t in st.subscribe}
        for st in self.stages.values():
            if st.parts_of is not None and st.parts_of not in self.stages:
                problems.append(f"join {st.name}: parts_of names no stage ({st.parts_of!r})")
            if st.parts_of is not None and sum(1 for o in self.stages.values() if o.parts_of == st.parts_of) > 1:
                problems.append(f"join {st.name}: stage {st.parts_of} has more than one join")
        for sch in self.schedules.values():
            if sch.queue is not None and sch.queue not in sources:
                problems.append(f"schedule {sch.name}: no stage takes queue {sch.queue!r}")
            if sch.topic is not None and sch.topic not in topics:
                problems.append(f"schedule {sch.name}: no stage subscribes to topic {sch.topic!r}")
        if problems:
            raise ConfigError("; ".join(problems))

    def setup(self, backend: Backend) -> None:
        """Create every queue, topic and subscription the stages use. Idempotent."""
        self.validate(backend)
        for st in self.stages.values():
            backend.transport.ensure_queue(st.queue_spec())
            for topic in st.subscribe:
                backend.topic.ensure_topic(topic)
                backend.topic.subscribe(topic, st.source, raw=st.raw_subscription)
            if st.publish_to:
                backend.topic.ensure_topic(st.publish_to)
        sources = {st.source for st in self.stages.values()}
        for st in self.stages.values():
            if st.emit_to and st.emit_to not in sources:  # a queue consumed outside this pipeline
                backend.transport.ensure_queue(QueueSpec(st.emit_to))

    def cancel(self, backend: Backend, job_id: str, *, reason: str | None = None) -> JobRecord:
        """PENDING or RUNNING -> CANCELLED. Its messages are then acked without running a
        handler, and a handler running now is fenced off. Idempotent; raises
        ``InvalidTransition`` for a COMPLETED or FAILED job, ``JobNotFound``."""
        return backend.store.cancel(job_id, reason=reason or "cancelled")

    def retry(self, backend: Backend, job_id: str, *, by: str | None = None, reason: str | None = None) -> JobRecord:
        """Send a FAILED job's failed stage its input again (from the step record, the job's
        first message, or the stage's dead-letter queue, which is then cleared of it); the job
        goes back to PENDING with a history entry (who, why). Raises ``InvalidTransition``
        for a job that is not FAILED, ``JobNotFound``, ``RetryImpossible`` when the input is
        nowhere to be found."""
        rec: JobRecord = retry_job(self, backend, job_id, by=by, reason=reason)
        return rec

    def submit(
        self,
        backend: Backend,
        *,
        job_id: str,
        payload: dict[str, Any],
        queue: str | None = None,
        topic: str | None = None,
        user_id: str | None = None,
        task: str | None = None,
        fields: dict[str, Any] | None = None,
        delay_s: float = 0.0,
        at: float | datetime | None = None,
        priority: int = 0,
    ) -> tuple[JobRecord, bool]:
        """Create the job PENDING and enqueue its first message. Idempotent per job id:
        the first message's id derives from the job id, so a resubmission adds nothing new.
        ``delay_s``/``at`` hold it until then (any length); ``priority`` is 0..9."""
        return submit_job(backend, job_id=job_id, payload=payload, queue=queue, topic=topic, user_id=user_id,
                      task=task, fields=fields, delay_s=delay_s, at=at, priority=priority)

    def submit_many(
        self,
        backend: Backend,
        jobs: Sequence[tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], str | None]],
        *,
        queue: str | None = None,
        topic: str | None = None,
        user_id: str | None = None,
        delay_s: float = 0.0,
        at: float | datetime | None = None,
        priority: int = 0,
    ) -> int:
        """``submit`` for many (job id, payload[, user id]) items, written in bulk (on SQLite
        and PostgreSQL a few statements per 500 jobs, all or none); how many were new."""
        return submit_jobs(backend, jobs, queue=queue, topic=topic, user_id=user_id, delay_s=delay_s, at=at,
                           priority=priority)


def _seconds(value: float | str | timedelta | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"retention: {exc}") from None
    else:
        seconds = float(value)
    if not seconds > 0:
        raise ConfigError(f"retention must be a positive duration, got {value!r}")
    return seconds
