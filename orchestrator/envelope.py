"""The message envelope and its deterministic ids."""

from __future__ import annotations

import hashlib
import json
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
    raw = "\x1f".join(str(p) for p in parts).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def submit_id(job_id: str, queue: str) -> str:
    """Id of the first message of a job: resubmitting the same job id gives the same id."""
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
        child_id = derive_id(self.id, stage, index)
        return child_id, dumps({"v": 1, "id": child_id, "task": task, "job_id": self.job_id, "payload": payload,
                                "parent_id": self.id, "trace_id": self.trace_id or self.id, "created_at": float(now)})

    def child(self, *, stage: str, index: int, task: str, payload: dict[str, Any], now: float,
              part: int | None = None, parts: int | None = None) -> Envelope:
        """The envelope a step emits: deterministic id, same job and trace."""
        return Envelope(
            id=derive_id(self.id, stage, index) if part is None else derive_id(self.id, stage, "part", part),
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
