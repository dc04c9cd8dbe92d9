"""The message envelope and its deterministic ids."""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.jsontext import dumps

SCHEMA_VERSION = 1
#: the largest message body, on every backend: SQS's limit, so a pipeline moves between
#: backends unchanged (bigger bodies go to the object store: ``offload_large_bodies``)
MAX_BODY_BYTES = 256 * 1024
#: the message attribute that carries a message's id on SQS and SNS (SNS's own MessageId
#: differs per publish; ours is the outbox's, the same for every copy)
MESSAGE_ID_ATTR = "message_id"


def derive_id(*parts: object) -> str:
    """A stable id from its parts: the same input message and stage give the same id.

    A step that is re-emitted after a crash therefore carries the id of the first emission,
    and the downstream step record recognises it as the same message.
    """
    return _sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


_sha256 = hashlib.sha256
#: hex digits of a message id that say when it was made (milliseconds since the epoch, enough
#: until the year 2527); the rest of the id's 32 is its hash
TIME_DIGITS = 11
_STAMP, _SPAN = f"%0{TIME_DIGITS}x", 16**TIME_DIGITS


def timed_id(at: float, *parts: object) -> str:
    """``derive_id`` of ``parts`` led by the time ``at``: the same input gives the same id, and
    ids made close in time sort together. A queue's index of message ids (which keeps a message
    sent twice from being enqueued twice) then takes a batch of sends, and of acks, in a few of
    its pages: with ids in random order, each one wrote a page of its own to the database's log."""
    return _stamp(at) + derive_id(*parts)[:32 - TIME_DIGITS]


def _stamp(at: float) -> str:
    ms = at * 1000.0  # (past a double's range: infinite, not an error; it and NaN stamp 0)
    return _STAMP % (int(ms) % _SPAN if 0 < ms < math.inf else 0)


def child_id(parent_id: str, parent_created_at: float, stage: str, index: int) -> str:
    """The id of a message a step emits, ``timed_id(parent_created_at, parent_id, stage,
    index)``: its parent's, led by when the parent was sent (so a re-emission has the id of
    the first emission). Its hash is written out, as one is made for every message a step emits."""
    return _stamp(parent_created_at) + _sha256(f"{parent_id}\x1f{stage}\x1f{index}".encode()).hexdigest()[:32 - TIME_DIGITS]


def submit_id(job_id: str, queue: str, now: float) -> str:
    """Id of the first message of a job, led by when it is submitted. A resubmission of the
    job sends its first message again, under its first id (``controllers/submit.py``)."""
    return timed_id(now, "submit", job_id, queue)


def legacy_submit_id(job_id: str, queue: str) -> str:
    """The first message's id as it was made before ``submit_id`` had a time: what a
    resubmission sends to a job that keeps no first message (one a web app created itself)."""
    return derive_id("submit", job_id, queue)


class Envelope(BaseModel):
    """What travels on a queue. JSON on the wire; ``v`` is the schema version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1)
    task: str = Field(min_length=1)
    job_id: str = Field(min_length=1)
    payload: dict[str, Any] = Field(default_factory=dict)
    parent_id: str | None = None
    trace_id: str | None = None
    created_at: float = 0.0
    #: a part of a job's fan-out (``Result(parts=...)``): its index, and how many there are
    #: (left out of the JSON when unset: most messages are no part, and their bodies stay as
    #: they were)
    part: int | None = Field(default=None, ge=0, exclude_if=lambda v: v is None)
    parts: int | None = Field(default=None, ge=1, exclude_if=lambda v: v is None)

    def to_json(self) -> str:
        return self.model_dump_json()

    def child_json(self, *, stage: str, index: int, task: str, payload: dict[str, Any], now: float
                   ) -> tuple[str, str]:
        """The id and the JSON of ``child(...)`` (not a part), the same bytes as its
        ``to_json()``, written straight from the fields: building and validating a model for
        every message a step emits, then serialising it, was 3% of a no-op pipeline's
        instructions. ``task`` is not checked here: the caller's targets are (a stage's when it
        is declared, an ``Emit``'s when it is emitted), and ``payload`` must be storable."""
        mid = child_id(self.id, self.created_at, stage, index)
        return mid, dumps({"v": 1, "id": mid, "task": task, "job_id": self.job_id, "payload": payload,
                           "parent_id": self.id, "trace_id": self.trace_id or self.id, "created_at": float(now)})

    def child(self, *, stage: str, index: int, task: str, payload: dict[str, Any], now: float,
              part: int | None = None, parts: int | None = None) -> Envelope:
        """The envelope a step emits: deterministic id, same job and trace."""
        return Envelope(
            id=child_id(self.id, self.created_at, stage, index) if part is None
            else timed_id(self.created_at, self.id, stage, "part", part),
            task=task,
            job_id=self.job_id,
            payload=payload,
            parent_id=self.id,
            trace_id=self.trace_id or self.id,
            created_at=now,
            part=part,
            parts=parts,
        )


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
