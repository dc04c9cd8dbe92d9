"""Pipelines and stages: what the user declares. The controller runs them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.base import (
    DEFAULT_MAX_RECEIVES,
    DEFAULT_VISIBILITY_TIMEOUT_S,
    MAX_PRIORITY,
    Delivery,
    ObjectStore,
    QueueSpec,
    default_dead_letter,
)
from orchestrator.codec import Codec
from orchestrator.controllers.retry import retry as retry_job
from orchestrator.controllers.submit import check_timing
from orchestrator.controllers.submit import submit as submit_job
from orchestrator.durations import parse_duration
from orchestrator.envelope import MAX_BODY_BYTES, Envelope, derive_id
from orchestrator.errors import ConfigError
from orchestrator.jobdoc import to_record
from orchestrator.schedules import DEFAULT_MAX_CATCH_UP, Missed, Schedule
from orchestrator.status import JobRecord, JobStatus

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from orchestrator.backends import Backend
    from orchestrator.clock import Clock
    from orchestrator.controllers.lease import Lease
    from orchestrator.middleware import Middleware

DEFAULT_RETRY_BASE_S = 1.0
DEFAULT_RETRY_MAX_S = 300.0
DEFAULT_WAIT_S = 1.0
DEFAULT_MAX_SNOOZE_S = 7 * 24 * 3600.0
MIN_VISIBILITY_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Emit:
    """A message a step emits. ``to`` names a queue, ``topic`` a topic; by default the
    stage's ``emit_to``/``publish_to``. ``plain=True`` sends the payload itself as the body
    (with ``job_id`` added), for consumers that read plain JSON (the GAS results message)."""

    payload: dict[str, Any]
    to: str | None = None
    topic: str | None = None
    task: str | None = None
    plain: bool | None = None
    #: seconds before the message may be received (any length: beyond a queue's own limit the
    #: transport chains the wait)
    delay_s: float = 0.0
    #: 0 (lowest) .. 9 (highest); None: the stage's ``priority``
    priority: int | None = None

    def __post_init__(self) -> None:
        check_timing(delay_s=self.delay_s, priority=self.priority)


@dataclass(frozen=True)
class Snooze:
    """What a handler returns for "not yet, look again later" (a restore still running, an
    outside job not finished): the message comes back after ``seconds``, no attempt is used,
    the job's status is unchanged and its history records the snooze with ``reason``. A
    stage's ``max_snooze_s`` bounds the total wait (past it the job is FAILED)."""

    seconds: float
    reason: str = ""
    #: fields merged into the job with the snooze's history entry (a "restoring" state for the
    #: job's pages, say), in the same conditional write
    fields: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.seconds, (int, float)) or not 0 <= self.seconds < float("inf"):
            raise ValueError(f"Snooze seconds must be a finite number >= 0, got {self.seconds!r}")


@dataclass
class Result:
    """What a handler returns: the job's new status (None: unchanged), fields to merge
    into the job record, and messages to emit (dicts are payloads for the default target)."""

    status: JobStatus | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    emit: Sequence[dict[str, Any] | Emit] = ()
    #: fan-out: each payload goes to the stage's ``emit_to``/``publish_to`` as a part of its own
    #: (``ctx.part`` there); a join stage runs once every part has committed
    parts: Sequence[dict[str, Any]] = ()


Handler = Callable[["Context", Envelope], "Result | Snooze | None"]


@dataclass
class Context:
    #: the job as the status store holds it (a plain document: ``orchestrator.jobdoc``),
    #: read-only: stores may share it; ``job`` is its typed copy, made when first asked for
    job_doc: dict[str, Any]
    stage: Stage
    envelope: Envelope
    delivery: Delivery
    clock: Clock
    log: FilteringBoundLogger
    objects: ObjectStore | None
    lease: Lease
    #: reads whether the job was cancelled (the controller's; None: never)
    cancel_check: Callable[[], bool] | None = None
    _cancelled: bool = field(default=False, init=False, repr=False)
    _next_cancel_check: float = field(default=float("-inf"), init=False, repr=False)

    @property
    def part(self) -> int | None:
        """Which part of its job's fan-out this message is (None: not a part)."""
        return self.envelope.part

    @property
    def parts(self) -> list[dict[str, Any] | None]:
        """In a join stage: every part's result (its handler's ``Result.fields``), in order;
        None for a part that failed (see ``part_failures``)."""
        steps = self.job_doc["steps"]
        return [s.get("result") if s["state"] == "committed" else None for s in self._part_steps(steps)]

    @property
    def part_failures(self) -> dict[int, str]:
        """In a join stage that allows failed parts: part index -> its failure's reason."""
        return {i: s["reason"] or "failed" for i, s in enumerate(self._part_steps(self.job_doc["steps"]))
                if s["state"] == "failed"}

    def _part_steps(self, steps: dict[str, Any]) -> list[dict[str, Any]]:
        if self.stage.parts_of is None:
            raise AttributeError(f"stage {self.stage.name} is no join: it has no parts")
        n = int(self.envelope.payload.get("parts", 0))
        return [steps[f"{self.stage.parts_of}#{i}"] for i in range(n)]

    @property
    def cancelled(self) -> bool:
        """Whether the job was cancelled since this handler started (looked up at most once
        per heartbeat interval, a third of the visibility timeout): a long handler may stop
        early. Whatever it returns for a cancelled job is fenced off (no commit, no emit)."""
        if self._cancelled or self.cancel_check is None:
            return self._cancelled
        now = self.clock.now()
        if now >= self._next_cancel_check:
            self._next_cancel_check = now + self.stage.visibility_timeout / 3
            self._cancelled = self.cancel_check()
        return self._cancelled

    @cached_property
    def job(self) -> JobRecord:
        """The job as of this step's begin (a copy: changing it changes nothing stored)."""
        return to_record(self.job_doc)

    @property
    def attempt(self) -> int:
        return self.delivery.receive_count

    @property
    def lease_lost(self) -> bool:
        return self.lease.lost

    def effect_key(self, name: str) -> str:
        """An idempotency key for an outside effect of this step: the same on every
        redelivery of this message, different for another message, stage or ``name``."""
        return derive_id("effect", self.envelope.job_id, self.stage.name, self.envelope.id, name)


@dataclass
class Stage:
    name: str
    handler: Handler
    source: str
    emit_to: str | None = None
    publish_to: str | None = None
    subscribe: tuple[str, ...] = ()
    raw_subscription: bool = True
    max_receives: int = DEFAULT_MAX_RECEIVES
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT_S
    time_limit_s: float | None = None
    retry_base_s: float = DEFAULT_RETRY_BASE_S
    retry_max_s: float = DEFAULT_RETRY_MAX_S
    # messages per receive; None: sized by the worker to the handler's pace (see BatchSizer)
    batch_size: int | None = None
    wait_s: float = DEFAULT_WAIT_S
    dead_letter: str | None = None
    delay_s: float = 0.0
    plain_json: bool = False
    job_id_field: str = "job_id"
    required_fields: tuple[str, ...] = ()
    emit_format: Literal["envelope", "plain"] = "envelope"
    max_body_bytes: int = MAX_BODY_BYTES
    accepts_tasks: tuple[str, ...] = ()
    #: "eager": write a begin (claim + RUNNING) before the handler, so the status shows RUNNING
    #: while it runs and a stale holder is fenced off by its claim. "lazy": no begin write;
    #: the commit alone records the step (first committer wins): one store write per message
    #: instead of two, for fast handlers.
    claim: Literal["eager", "lazy"] = "eager"
    #: emitted bodies over 64 KiB go to the object store (claim check) and the queue and the
    #: outbox carry a pointer; without it a body over the queue's limit fails the step.
    #: Consumers of such bodies need a large enough ``max_body_bytes``.
    offload_large_bodies: bool = False
    #: the longest a message may wait in snoozes, counted from its first receive (past it: the
    #: job is FAILED with the reason); None: no bound
    max_snooze_s: float | None = DEFAULT_MAX_SNOOZE_S
    #: the priority (0..9) of what this stage emits unless an ``Emit`` says otherwise
    priority: int = 0
    #: a join stage: the stage whose parts it waits for (set by ``Pipeline.join``)
    parts_of: str | None = None
    #: a join stage: whether a part that FAILED is handed to it (``ctx.part_failures``) rather
    #: than failing the job
    allow_failed: bool = False
    #: on SQS, the priorities that get a queue of their own (``<source>-p<band>``, polled high
    #: to low; a message goes to the highest band at most its priority). SQLite, PostgreSQL
    #: and memory order by exact priority without them.
    priority_bands: tuple[int, ...] = ()
    #: whether a message for a job that does not exist creates it (owned by the payload's
    #: ``user_id``). None: only on an entry stage, one that no stage of the pipeline emits
    #: to. Elsewhere such a message is dead-lettered as an unknown job: whoever can write to
    #: a later stage's queue cannot make up jobs there.
    takes_submissions: bool | None = None
    #: a predicate over a plain JSON message that names no job: True when it asks for nothing
    #: (it is acked, not dead-lettered; an upgrade request listing no archives, say)
    nothing_to_do: Callable[[dict[str, Any]], bool] | None = None
    #: where a setting overridden outside the code came from (``config file``, ``environment``)
    setting_sources: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def dead_letter_queue(self) -> str:
        return self.dead_letter or default_dead_letter(self.source)

    @property
    def codec(self) -> Codec:
        return Codec(
            plain_task=self.name if self.plain_json else None,
            job_id_field=self.job_id_field,
            required_fields=self.required_fields,
            max_body_bytes=self.max_body_bytes,
            nothing_to_do=self.nothing_to_do,
        )

    def accepts(self, task: str) -> bool:
        """A task names where a message was addressed: this stage, its queue, a topic it
        subscribes to, or a task it declares."""
        return task in {self.name, self.source, *self.subscribe, *self.accepts_tasks}

    def queue_spec(self) -> QueueSpec:
        return QueueSpec(
            self.source, visibility_timeout_s=self.visibility_timeout, max_receives=self.max_receives,
            dead_letter=self.dead_letter_queue, delay_s=self.delay_s, priority_bands=tuple(self.priority_bands),
        )

    def backoff_s(self, attempt: int) -> float:
        """Exponential backoff for retry ``attempt`` (1-based), capped at ``retry_max_s``."""
        return float(min(self.retry_max_s, self.retry_base_s * 2 ** max(0, attempt - 1)))

    def problems(self, *, max_visibility_s: float, max_delay_s: float, max_batch: int = 10) -> list[str]:
        """Inconsistent settings, each explained; empty when the stage can start."""
        out = []
        if self.max_receives < 1:
            out.append(f"stage {self.name}: max_receives must be >= 1, got {self.max_receives}")
        if self.visibility_timeout < MIN_VISIBILITY_TIMEOUT_S:
            out.append(f"stage {self.name}: visibility_timeout {self.visibility_timeout}s is below "
                       f"{MIN_VISIBILITY_TIMEOUT_S}s; the heartbeat could not keep the lease")
        if self.visibility_timeout > max_visibility_s:
            out.append(f"stage {self.name}: visibility_timeout {self.visibility_timeout}s exceeds the backend's "
                       f"maximum lease of {max_visibility_s:.0f}s")
        if self.time_limit_s is not None and self.time_limit_s > max_visibility_s:
            out.append(f"stage {self.name}: time_limit_s {self.time_limit_s}s is longer than the heartbeat can "
                       f"cover (the backend caps a lease at {max_visibility_s:.0f}s from receipt)")
        if self.retry_max_s > max_delay_s:
            out.append(f"stage {self.name}: retry_max_s {self.retry_max_s}s exceeds the backend's maximum "
                       f"delay of {max_delay_s:.0f}s")
        if self.retry_base_s < 0 or self.retry_base_s > self.retry_max_s:
            out.append(f"stage {self.name}: retry_base_s must be between 0 and retry_max_s ({self.retry_max_s}s)")
        if self.delay_s > max_delay_s:
            out.append(f"stage {self.name}: delay_s {self.delay_s}s exceeds the backend's maximum delay of {max_delay_s:.0f}s")
        if self.batch_size is not None and not 1 <= self.batch_size <= max_batch:
            out.append(f"stage {self.name}: batch_size must be 1..{max_batch} on this backend, got {self.batch_size}")
        if self.max_snooze_s is not None and not self.max_snooze_s >= 0:
            out.append(f"stage {self.name}: max_snooze_s must be >= 0 or None, got {self.max_snooze_s}")
        if not (isinstance(self.priority, int) and 0 <= self.priority <= MAX_PRIORITY):
            out.append(f"stage {self.name}: priority must be an integer 0..{MAX_PRIORITY}, got {self.priority!r}")
        if any(not isinstance(b, int) or not 0 < b <= MAX_PRIORITY for b in self.priority_bands):
            out.append(f"stage {self.name}: priority_bands must be priorities 1..{MAX_PRIORITY}, got "
                       f"{self.priority_bands!r}")
        if self.claim not in ("eager", "lazy"):
            out.append(f"stage {self.name}: claim must be 'eager' or 'lazy', got {self.claim!r}")
        if self.emit_to and self.publish_to:
            out.append(f"stage {self.name}: set emit_to or publish_to, not both")
        for topic in self.subscribe:
            if topic.endswith(".fifo") and not self.source.endswith(".fifo"):
                out.append(f"stage {self.name}: FIFO topic {topic!r} delivers only to FIFO queues, and the source "
                           f"{self.source!r} is not one")
        if self.source.endswith(".fifo") != self.dead_letter_queue.endswith(".fifo"):
            out.append(f"stage {self.name}: dead_letter {self.dead_letter_queue!r} must be a FIFO queue exactly when "
                       f"the source {self.source!r} is (SQS requires the same type; a FIFO name ends in .fifo)")
        return out


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
            self.add_stage(Stage(name=name, handler=fn, source=source, emit_to=emit_to, **options))
            return fn

        return register

    def add_stage(self, stage: Stage) -> Stage:
        if stage.name in self.stages:
            raise ConfigError(f"pipeline {self.name}: stage {stage.name} is defined twice")
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
                                 allow_failed=allow_failed, **options))
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
        sch = Schedule(name=name, payload=dict(payload or {}), queue=queue, topic=topic, cron=cron, every_s=every_s,
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
