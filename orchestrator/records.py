"""Typed views of a status store's document operations: a job's step begun, committed, or
several jobs read, answered as ``JobRecord``s. They are not part of the ``StatusStore``
protocol (an adapter implements the document operations, the policy lives once in
``stores/cas.py``); these helpers are for tools, tests and programs that want a model, not a
document, and call exactly what the controller calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.base import StatusStore
from orchestrator.errors import StoreError
from orchestrator.jobdoc import Doc, to_doc, to_record
from orchestrator.status import BeginItem, CommitItem, JobRecord, JobStatus, OutMessage


def get_many(store: StatusStore, job_ids: Sequence[str]) -> dict[str, JobRecord]:
    """The existing jobs among ``job_ids`` (``get_docs``, one round trip where the backend allows)."""
    return {job_id: to_record(doc) for job_id, doc in store.get_docs(job_ids).items()}


def begin_steps(store: StatusStore, items: Sequence[BeginItem], *, known: dict[str, JobRecord] | None = None
                ) -> list[JobRecord | StoreError]:
    """``begin_docs``: one result per item, the record written or the error its rule raised."""
    return _records(store.begin_docs(items, known=_docs(known)))


def commit_steps(store: StatusStore, items: Sequence[CommitItem], *, known: dict[str, JobRecord] | None = None
                 ) -> list[JobRecord | StoreError]:
    """``commit_docs``: each item under its own conditions; the record written or the error."""
    return _records(store.commit_docs(items, known=_docs(known)))


def begin_step(store: StatusStore, job_id: str, *, stage: str, message_id: str, claim: str, attempt: int,
               input_body: str | None = None, source: str | None = None) -> JobRecord:
    """Claim ``stage`` for the delivery holding ``claim`` (PENDING -> RUNNING). Raises what the
    rule refused with: ``ConflictError`` (step finished, job FAILED, a newer claim holds it),
    ``JobCancelled``, ``JobNotFound``."""
    return _one(begin_steps(store, [BeginItem(job_id, stage, message_id, claim, attempt, input_body, source)]))


def commit_step(store: StatusStore, job_id: str, *, stage: str, message_id: str, claim: str | None,
                status: JobStatus | None, fields: dict[str, Any], outbox: list[OutMessage]) -> JobRecord:
    """One conditional write: the step committed with its outbox, fields merged, status moved.
    Conditions: step_not_finished, lease_still_ours, the transition allowed."""
    return _one(commit_steps(store, [CommitItem(job_id, stage, message_id, claim, status, fields, outbox)]))


def _one(results: list[JobRecord | StoreError]) -> JobRecord:
    (result,) = results
    if isinstance(result, StoreError):
        raise result
    return result


def _records(results: list[Doc | StoreError]) -> list[JobRecord | StoreError]:
    return [r if isinstance(r, StoreError) else to_record(r) for r in results]


def _docs(known: dict[str, JobRecord] | None) -> dict[str, Doc]:
    return {k: to_doc(v) for k, v in (known or {}).items()}
