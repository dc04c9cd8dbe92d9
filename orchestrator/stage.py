"""A stage and what its handler sees and returns: ``Stage``, ``Context``, ``Result``, ``Emit``, ``Snooze``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from structlog.typing import FilteringBoundLogger

from orchestrator.base import (
    DEFAULT_MAX_RECEIVES,
    DEFAULT_VISIBILITY_TIMEOUT_S,
    MAX_PRIORITY,
    MAX_RECEIVES,
    Delivery,
    ObjectStore,
    QueueSpec,
    default_dead_letter,
)
from orchestrator.clock import Clock
from orchestrator.codec import Codec
from orchestrator.controllers.lease import Lease
from orchestrator.controllers.submit import check_timing
from orchestrator.envelope import MAX_BODY_BYTES, Envelope, derive_id
from orchestrator.errors import ConfigError, InvalidSubmission
from orchestrator.jobdoc import to_record
from orchestrator.kinds import whole
from orchestrator.status import JobRecord, JobStatus
from orchestrator.storable import id_problem

#: settings a stage took under another name before, and their name now (the old one still works,
#: with a DeprecationWarning)
RENAMED_SETTINGS: dict[str, str] = {"visibility_timeout": "visibility_timeout_s", "claim": "begin"}

DEFAULT_RETRY_BASE_S = 1.0
DEFAULT_RETRY_MAX_S = 300.0
DEFAULT_WAIT_S = 1.0
DEFAULT_MAX_SNOOZE_S = 7 * 24 * 3600.0
#: how long a round's handlers run before a deferred begin is written: a step that takes
#: longer shows RUNNING within about a second of its start
DEFAULT_BEGIN_AFTER_S = 1.0
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
        if self.to is not None and self.topic is not None:
            raise InvalidSubmission(f"an Emit goes to a queue (to={self.to!r}) or a topic (topic={self.topic!r}), "
                                    "not both")


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
            raise InvalidSubmission(f"Snooze seconds must be a finite number >= 0, got {self.seconds!r}")
        if not isinstance(self.reason, str):
            raise InvalidSubmission(f"Snooze reason must be text, got {type(self.reason).__name__}")


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
    #: makes ``log``, when the handler first uses it (a logger bound for every message, used
    #: by few, was 1% of a no-op pipeline's instructions)
    bind_log: Callable[[], FilteringBoundLogger]
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
            self._next_cancel_check = now + self.stage.visibility_timeout_s / 3
            self._cancelled = self.cancel_check()
        return self._cancelled

    @cached_property
    def log(self) -> FilteringBoundLogger:
        """The message's logger: bound to its stage, worker, message id, attempt and job."""
        return self.bind_log()

    @cached_property
    def job(self) -> JobRecord:
        """The job as the step started: as begun, where the begin came first (a copy: changing it
        changes nothing stored)."""
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


#: a stage's settings in seconds: whether None may stand for "no bound"
#: the flags of a stage (True: None is allowed too, meaning "decide for me")
_FLAGS = {"raw_subscription": False, "plain_json": False, "allow_failed": False, "offload_large_bodies": False,
          "takes_submissions": True}
#: the smallest body limit a stage may set: an envelope of a 512-byte job id, and room for a payload
#: (below it the stage's messages would be dead-lettered before their job could be read from them)
MIN_BODY_BYTES = 1024
_SECONDS = {"visibility_timeout_s": False, "time_limit_s": True, "retry_base_s": False, "retry_max_s": False,
            "wait_s": False, "delay_s": False, "begin_after_s": False, "max_snooze_s": True}


def _finite(value: object, optional: bool) -> bool:
    if value is None:
        return optional
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S
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
    #: "deferred": a first delivery's begin (claim + RUNNING) is written only if its round's
    #: handlers are still running ``begin_after_s`` after it started (a step that takes longer
    #: shows RUNNING and is fenced by its claim from then on; a faster one is recorded by its
    #: commit alone, one store write per message instead of two); a redelivery is begun before
    #: its handler. "eager": every begin before the handler, so the status shows RUNNING
    #: from the start and a stale holder is always fenced off by its claim. "lazy": no begin
    #: write; the commit alone records the step (first committer wins).
    begin: Literal["deferred", "eager", "lazy"] = "deferred"
    #: with ``begin="deferred"``: how long a round's handlers run before their begin is written
    begin_after_s: float = DEFAULT_BEGIN_AFTER_S
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
        return task in self._accepted

    @cached_property
    def _accepted(self) -> frozenset[str]:
        # made once (asked for every message): a stage's names are fixed once it is declared
        return frozenset({self.name, self.source, *self.subscribe, *self.accepts_tasks})

    def queue_spec(self) -> QueueSpec:
        return QueueSpec(
            self.source, visibility_timeout_s=self.visibility_timeout_s, max_receives=self.max_receives,
            dead_letter=self.dead_letter_queue, delay_s=self.delay_s, priority_bands=tuple(self.priority_bands),
        )

    def backoff_s(self, attempt: int) -> float:
        """Exponential backoff for retry ``attempt`` (1-based), capped at ``retry_max_s``."""
        return float(min(self.retry_max_s, self.retry_base_s * 2 ** max(0, attempt - 1)))

    def declaration_problems(self) -> list[str]:
        """What no backend could run, each explained: names no queue or consumer could carry,
        a handler that cannot be called. Checked where the stage is declared."""
        out = [f"stage {self.name!r}: {problem}" for what, value, optional in (
            ("name", self.name, False), ("source", self.source, False), ("emit_to", self.emit_to, True),
            ("publish_to", self.publish_to, True)) if (problem := id_problem(value, what, optional=optional))]
        out += [f"stage {self.name!r}: subscribe: {problem}" for t in self.subscribe if (problem := id_problem(t, "topic"))]
        if not callable(self.handler):
            out.append(f"stage {self.name!r}: the handler must be a function (ctx, msg), got {type(self.handler).__name__}")
        return [*out, *(f"stage {self.name!r}: {problem}" for problem in self._shape_problems())]

    def _shape_problems(self) -> list[str]:
        """Settings of the wrong kind, that Python would take and read otherwise: a string
        where names are listed (one topic per letter), "no" where a flag is asked (true)."""
        out = [f"{what} must be a list of names, not one string" for what in
               ("subscribe", "required_fields", "accepts_tasks") if isinstance(getattr(self, what), str)]
        out += [problem for t in self.accepts_tasks if not isinstance(self.accepts_tasks, str)
                and (problem := id_problem(t, "accepts_tasks: a task"))]
        out += [f"required_fields: {f!r} is no field name" for f in self.required_fields
                if not isinstance(self.required_fields, str) and not (isinstance(f, str) and f.strip())]
        out += [f"{what} must be True or False, got {value!r}" for what, optional in _FLAGS.items()
                if not (isinstance(value := getattr(self, what), bool) or (optional and value is None))]
        if self.dead_letter is not None:
            if (problem := id_problem(self.dead_letter, "dead_letter")) is not None:
                out.append(problem)
            elif self.dead_letter == self.source:
                out.append(f"dead_letter {self.dead_letter!r} is the stage's own source: a dead letter would come back")
        if self.emit_format not in ("envelope", "plain"):
            out.append(f"emit_format must be 'envelope' or 'plain', got {self.emit_format!r}")
        if not whole(self.max_body_bytes, MIN_BODY_BYTES):
            out.append(f"max_body_bytes must be a whole number >= {MIN_BODY_BYTES}, got {self.max_body_bytes!r}")
        if not isinstance(self.job_id_field, str) or not self.job_id_field.strip():
            out.append(f"job_id_field must name a field, got {self.job_id_field!r}")
        if self.nothing_to_do is not None and not callable(self.nothing_to_do):
            out.append(f"nothing_to_do must be a function (payload) -> bool, got {type(self.nothing_to_do).__name__}")
        return out

    def problems(self, *, max_visibility_s: float, max_delay_s: float, max_batch: int = 10) -> list[str]:
        """Inconsistent settings, each explained; empty when the stage can start."""
        out = [f"stage {self.name}: {name} must be a finite number of seconds, got {value!r}"
               for name, optional in _SECONDS.items() if not _finite(value := getattr(self, name), optional)]
        if out:
            return out  # (the comparisons below would pass NaN without a word)
        out += [f"stage {self.name}: {name} must be >= 0, got {value}"
                for name in ("wait_s", "delay_s") if (value := getattr(self, name)) < 0]
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            out.append(f"stage {self.name}: time_limit_s must be > 0 or None, got {self.time_limit_s}")
        if not whole(self.max_receives, 1, MAX_RECEIVES):
            out.append(f"stage {self.name}: max_receives must be a whole number 1..{MAX_RECEIVES}, "
                       f"got {self.max_receives!r}")
        if self.visibility_timeout_s < MIN_VISIBILITY_TIMEOUT_S:
            out.append(f"stage {self.name}: visibility_timeout_s {self.visibility_timeout_s}s is below "
                       f"{MIN_VISIBILITY_TIMEOUT_S}s; the heartbeat could not keep the lease")
        if self.visibility_timeout_s > max_visibility_s:
            out.append(f"stage {self.name}: visibility_timeout_s {self.visibility_timeout_s}s exceeds the backend's "
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
        if self.batch_size is not None and not whole(self.batch_size, 1, max_batch):
            out.append(f"stage {self.name}: batch_size must be 1..{max_batch} on this backend, got {self.batch_size}")
        if self.max_snooze_s is not None and not self.max_snooze_s >= 0:
            out.append(f"stage {self.name}: max_snooze_s must be >= 0 or None, got {self.max_snooze_s}")
        if not whole(self.priority, 0, MAX_PRIORITY):
            out.append(f"stage {self.name}: priority must be an integer 0..{MAX_PRIORITY}, got {self.priority!r}")
        if any(not isinstance(b, int) or not 0 < b <= MAX_PRIORITY for b in self.priority_bands):
            out.append(f"stage {self.name}: priority_bands must be priorities 1..{MAX_PRIORITY}, got "
                       f"{self.priority_bands!r}")
        if self.begin not in ("deferred", "eager", "lazy"):
            out.append(f"stage {self.name}: begin must be 'deferred', 'eager' or 'lazy', got {self.begin!r}")
        if not self.begin_after_s > 0:
            out.append(f"stage {self.name}: begin_after_s must be > 0, got {self.begin_after_s}")
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


def renamed_settings(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with settings given under an old name moved to their name now."""
    for old, new in RENAMED_SETTINGS.items():
        if old in options:
            if new in options:
                raise ConfigError(f"{old}= and {new}= are one setting: give {new}= only")
            warnings.warn(f"the stage setting {old}= is now {new}=", DeprecationWarning, stacklevel=3)
            options[new] = options.pop(old)
    return options
