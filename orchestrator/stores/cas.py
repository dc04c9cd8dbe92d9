"""The status-store policy on top of two primitives: load a record, compare-and-swap it.

Every state change reads the job, applies a pure rule from ``orchestrator.status`` and writes
it back only if nobody wrote in between (``version`` unchanged). A lost race re-reads and
re-applies the rule, so the rule's own conditions (step_not_finished, lease_still_ours) are
always judged against the latest record.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from orchestrator.clock import Clock, SystemClock
from orchestrator.errors import ConflictError, JobNotFound
from orchestrator.status import (
    JobRecord,
    JobStatus,
    OutMessage,
    apply_begin,
    apply_commit,
    apply_fail,
    apply_reset,
    new_job,
)

MAX_CAS_RETRIES = 50


class VersionConflict(Exception):
    """Internal: the record changed between load and swap."""


class CasStatusStore(ABC):
    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()

    # -- primitives -------------------------------------------------------------------------
    @abstractmethod
    def _load(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def _swap(self, record: JobRecord, expected_version: int) -> None:
        """Write ``record`` (its version already bumped) if the stored version is
        ``expected_version`` (0: the job must not exist yet). Raise ``VersionConflict``."""

    def _insert(self, record: JobRecord) -> None:
        """Write a new job; raise ``VersionConflict`` if it exists. Override where 'absent'
        and 'version 0' differ (adopted tables)."""
        self._swap(record, 0)

    @abstractmethod
    def query(self, *, user_id: str | None = None, status: JobStatus | None = None) -> list[JobRecord]: ...

    # -- policy -----------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        return self._load(job_id)

    def create(
        self, job_id: str, *, user_id: str | None = None, fields: dict[str, Any] | None = None
    ) -> tuple[JobRecord, bool]:
        for _ in range(MAX_CAS_RETRIES):
            current = self._load(job_id)
            if current is not None:
                return current, False
            rec = new_job(job_id, user_id=user_id, fields=fields or {}, now=self.clock.now())
            rec.version = 1
            try:
                self._insert(rec)
                return rec, True
            except VersionConflict:
                continue
        raise ConflictError(f"job {job_id}: create kept racing")

    def _mutate(self, job_id: str, rule: Callable[[JobRecord], JobRecord]) -> JobRecord:
        for _ in range(MAX_CAS_RETRIES):
            current = self._load(job_id)
            if current is None:
                raise JobNotFound(f"job {job_id} does not exist")
            new = rule(current)  # raises ConflictError/InvalidTransition with current state
            new.version = current.version + 1
            try:
                self._swap(new, current.version)
                return new
            except VersionConflict:
                continue  # someone wrote in between: judge the rule again on the fresh record
        raise ConflictError(f"job {job_id}: write kept racing", current=self._load(job_id))

    def begin_step(self, job_id: str, *, stage: str, message_id: str, claim: str, attempt: int) -> JobRecord:
        now = self.clock.now()
        return self._mutate(
            job_id,
            lambda r: apply_begin(r, stage=stage, message_id=message_id, claim=claim, attempt=attempt, now=now),
        )

    def commit_step(
        self,
        job_id: str,
        *,
        stage: str,
        message_id: str,
        claim: str,
        status: JobStatus | None,
        fields: dict[str, Any],
        outbox: list[OutMessage],
    ) -> JobRecord:
        now = self.clock.now()
        return self._mutate(
            job_id,
            lambda r: apply_commit(
                r, stage=stage, message_id=message_id, claim=claim, status=status,
                fields=fields, outbox=outbox, now=now,
            ),
        )

    def fail(
        self, job_id: str, *, stage: str, message_id: str, claim: str | None, reason: str, dead_letter: bool
    ) -> JobRecord:
        now = self.clock.now()
        return self._mutate(
            job_id,
            lambda r: apply_fail(
                r, stage=stage, message_id=message_id, claim=claim, reason=reason,
                dead_letter=dead_letter, now=now,
            ),
        )

    def reset(self, job_id: str, *, stage: str, reason: str) -> JobRecord:
        now = self.clock.now()
        return self._mutate(job_id, lambda r: apply_reset(r, stage=stage, reason=reason, now=now))

    def update_fields(self, job_id: str, fields: dict[str, Any]) -> JobRecord:
        now = self.clock.now()

        def rule(r: JobRecord) -> JobRecord:
            out = r.model_copy(deep=True)
            out.fields.update(fields)
            out.updated_at = now
            return out

        return self._mutate(job_id, rule)
