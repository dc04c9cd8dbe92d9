"""The status-store policy on top of two primitives: load a job's document, compare-and-swap it.

Every state change reads the job, applies a pure rule from ``orchestrator.jobdoc`` and writes
it back only if nobody wrote in between (``version`` unchanged). A lost race re-reads and
re-applies the rule, so the rule's own conditions (step_not_finished, lease_still_ours) are
always judged against the latest record.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from orchestrator import jobdoc
from orchestrator.base import PreparedWrites
from orchestrator.clock import Clock, SystemClock
from orchestrator.errors import ConflictError, JobNotFound, StoreError
from orchestrator.jobdoc import Doc, to_record
from orchestrator.status import BeginItem, CommitItem, JobRecord, JobStatus, JoinTrigger, NewJob, OutMessage
from orchestrator.storable import id_problem

T = TypeVar("T")

MAX_CAS_RETRIES = 50

Rule = Callable[[Doc], Doc]


@dataclass(slots=True)  # not frozen: made per message, and a frozen __init__ costs 6x
class Prepared:
    """A rule applied to the document a caller knew, with the new document's encoding: the
    part of a write that needs no lock. ``_write_many`` swaps it against ``expected_version``."""

    record: Doc
    expected_version: int
    encoded: Any = None


class VersionConflict(Exception):
    """Internal: the record changed between load and swap."""


def latest(found: list[T], limit: int | None) -> list[T]:
    """The last ``limit`` of ``found`` (all of it for None; none for 0 or less)."""
    if limit is None:
        return found
    return found[-limit:] if limit > 0 else []


def holdable(job_ids: Iterable[str]) -> list[str]:
    """``job_ids`` without repeats and without those no store can hold (blank, a NUL, a lone
    surrogate, over 512 bytes): no job has such an id, so a read of one finds nothing, where a
    database driver would raise its encoding error. For the stores that read a database."""
    return [i for i in dict.fromkeys(job_ids) if id_problem(i) is None]


def unholdable(value: str | None) -> bool:
    """A job or user id no store can hold (so no job has it); None is no id."""
    return value is not None and id_problem(value) is not None


class CasStatusStore(ABC):
    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()

    # -- primitives -------------------------------------------------------------------------
    # Documents handed to and from the primitives are never changed in place (rules copy what
    # they change), so a store may keep and return the very objects it was given.
    @abstractmethod
    def _load(self, job_id: str) -> Doc | None: ...

    @abstractmethod
    def _swap(self, record: Doc, expected_version: int, encoded: Any = None) -> None:
        """Write ``record`` (its version already bumped) if the stored version is
        ``expected_version`` (0: the job must not exist yet). Raise ``VersionConflict``.
        ``encoded`` is ``_encode(record)`` when the caller made it already."""

    def _encode(self, record: Doc, previous: Doc | None = None) -> Any:
        """The document as the backend writes it, made before any lock is taken (None: the
        backend encodes in ``_swap``). ``previous`` is the document the write replaces, for a
        backend that writes only what changed (DynamoDB)."""
        return None

    def _insert(self, record: Doc) -> None:
        """Write a new job; raise ``VersionConflict`` if it exists. Override where 'absent'
        and 'version 0' differ (adopted tables)."""
        self._swap(record, 0)

    @abstractmethod
    def query(self, *, user_id: str | None = None, status: JobStatus | None = None, since: float | None = None,
              limit: int | None = None) -> list[JobRecord]: ...

    @abstractmethod
    def delete(self, job_id: str, *, version: int) -> bool:
        """Remove the job if it is still at ``version`` (nobody wrote since it was read);
        False when it changed or is gone. For purge and retention."""

    # -- policy -----------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        if unholdable(job_id):
            return None
        doc = self._load(job_id)
        return to_record(doc) if doc is not None else None

    def create(
        self, job_id: str, *, user_id: str | None = None, fields: dict[str, Any] | None = None,
        origin: OutMessage | None = None,
    ) -> tuple[JobRecord, bool]:
        doc, created = self.create_doc(job_id, user_id=user_id, fields=fields, origin=origin)
        return to_record(doc), created

    def create_doc(
        self, job_id: str, *, user_id: str | None = None, fields: dict[str, Any] | None = None,
        origin: OutMessage | None = None,
    ) -> tuple[Doc, bool]:
        """``create``, answering with the job's document."""
        for _ in range(MAX_CAS_RETRIES):
            current = self._load(job_id)
            if current is not None:
                return current, False
            doc = jobdoc.new_doc(job_id, user_id=user_id, fields=fields or {}, now=self.clock.now(), origin=origin)
            doc["version"] = 1
            try:
                self._insert(doc)
                return doc, True
            except VersionConflict:
                continue
        raise ConflictError(f"job {job_id}: create kept racing")

    def create_docs(self, jobs: Sequence[NewJob]) -> list[tuple[Doc, bool]]:
        """``create_doc`` for each job in order (stores with a bulk insert override this)."""
        return [self.create_doc(j.job_id, user_id=j.user_id, fields=j.fields, origin=j.origin) for j in jobs]

    def _mutate(self, job_id: str, rule: Rule, known: Doc | None = None) -> Doc:
        """Apply ``rule`` and swap. ``known`` is a record just read or written: the first try
        swaps against it without reading again (the version condition still guards it)."""
        if unholdable(job_id):
            raise JobNotFound(f"job {job_id!r} does not exist")
        for _ in range(MAX_CAS_RETRIES):
            fresh = known is None
            current, known = (self._load(job_id) if fresh else known), None
            if current is None:
                raise JobNotFound(f"job {job_id} does not exist")
            try:
                new = rule(current)  # raises ConflictError/InvalidTransition with current state
            except StoreError:
                if fresh:
                    raise
                continue  # judged on a record that may be stale: judge again on a fresh read
            if new is current:
                if fresh:
                    return current  # the rule changes nothing (an idempotent cancel): no write
                continue  # judged on a record that may be stale: judge again on a fresh read
            new["version"] = current["version"] + 1
            try:
                self._swap(new, current["version"], self._encode(new, current))
                return new
            except VersionConflict:
                continue  # someone wrote in between: judge the rule again on the fresh record
        raise ConflictError(f"job {job_id}: write kept racing", current=self._load(job_id))

    def get_docs(self, job_ids: Sequence[str]) -> dict[str, Doc]:
        """The existing jobs among ``job_ids``, as documents; one read per job (backends override this with one read)."""
        out = {}
        for job_id in dict.fromkeys(job_ids):
            doc = self._load(job_id)
            if doc is not None:
                out[job_id] = doc
        return out

    def _mutate_many(self, pairs: Sequence[tuple[str, Rule]], known: dict[str, Doc]) -> list[Doc | StoreError]:
        """Apply one rule per job; each result is the written record or the error: the rules
        judged and encoded first (no I/O), then the writes (``apply``)."""
        return self.apply(PreparedWrites(pairs, self._prepare(pairs, known)))

    def apply(self, writes: PreparedWrites) -> list[Doc | StoreError]:
        """Write prepared records (see ``StatusStore.apply``). A store in a database wraps
        this in a transaction of its own, or joins the unit of work it is called in."""
        return self._write_many(writes.rules, writes.prepared)

    def _prepare(self, pairs: Sequence[tuple[str, Rule]], known: dict[str, Doc]) -> list[Prepared | None]:
        """Apply each rule to the record the caller knew and encode the result: no I/O, so a
        store can do it before it takes a write lock. None where there is no known record or
        its rule refused it (judged again on a fresh read by ``_write_many``)."""
        out: list[Prepared | None] = []
        for job_id, rule in pairs:
            current = known.get(job_id)
            try:
                new = rule(current) if current is not None else None
            except StoreError:
                new = None  # judged on a record that may be stale: judged again on a fresh read
            if new is None or current is None:
                out.append(None)
                continue
            new["version"] = current["version"] + 1
            out.append(Prepared(new, current["version"], self._encode(new, current)))
        return out

    def _write_many(self, pairs: Sequence[tuple[str, Rule]], prepared: Sequence[Prepared | None]
                    ) -> list[Doc | StoreError]:
        """Swap the prepared records (``_swap_many``); a job whose swap lost, that had none, or
        that comes twice in the batch is read, judged and swapped again, as ``_mutate`` does."""
        firsts: dict[str, tuple[int, Prepared]] = {}  # job id -> its first prepared record
        for pos, pre in enumerate(prepared):
            if pre is not None:
                firsts.setdefault(pre.record["job_id"], (pos, pre))
        swapped = self._swap_many(list(firsts.values()))
        out: list[Doc | StoreError] = []
        for pos, (job_id, rule) in enumerate(pairs):
            if pos in swapped:
                out.append(swapped[pos])
                continue
            try:  # lost to another writer, or nothing to swap: judged again on a fresh read
                out.append(self._mutate(job_id, rule))
            except StoreError as exc:
                out.append(exc)
        return out

    def _swap_many(self, prepared: Sequence[tuple[int, Prepared]]) -> dict[int, Doc | StoreError]:
        """Swap each (position, prepared record), all of distinct jobs: position -> the record
        written, or the error the backend refused it with; a swap that lost is left out.
        DynamoDB overrides this to send the puts concurrently."""
        out: dict[int, Doc | StoreError] = {}
        for pos, pre in prepared:
            try:
                self._swap(pre.record, pre.expected_version, pre.encoded)
                out[pos] = pre.record
            except VersionConflict:
                pass
            except StoreError as exc:
                out[pos] = exc
        return out

    def begin_docs(self, items: Sequence[BeginItem], *, known: dict[str, Doc] | None = None
                   ) -> list[Doc | StoreError]:
        """See ``StatusStore.begin_docs``."""
        now = self.clock.now()

        def rule(i: BeginItem) -> Rule:
            return lambda r: jobdoc.begin(r, stage=i.stage, message_id=i.message_id, claim=i.claim,
                                          attempt=i.attempt, now=now, input_body=i.input_body, source=i.source,
                                          started_at=i.started_at)

        return self._mutate_many([(i.job_id, rule(i)) for i in items], known or {})

    def commit_docs(self, items: Sequence[CommitItem], *, known: dict[str, Doc] | None = None
                    ) -> list[Doc | StoreError]:
        """See ``StatusStore.commit_docs``."""
        return self.apply(self.prepare_commits(items, known=known))

    def prepare_commits(self, items: Sequence[CommitItem], *, known: dict[str, Doc] | None = None
                        ) -> PreparedWrites:
        now = self.clock.now()

        def rule(i: CommitItem) -> Rule:
            return lambda r: jobdoc.commit(r, stage=i.stage, message_id=i.message_id, claim=i.claim,
                                           status=i.status, fields=i.fields, outbox=i.outbox, now=now,
                                           result=i.result, join=i.join, attempt=i.attempt,
                                           started_at=i.started_at)

        pairs = [(i.job_id, rule(i)) for i in items]
        return PreparedWrites(pairs, self._prepare(pairs, known or {}))

    def fail(
        self, job_id: str, *, stage: str, message_id: str, claim: str | None, reason: str, dead_letter: bool,
        join: JoinTrigger | None = None, error: dict[str, Any] | None = None,
    ) -> JobRecord:
        now = self.clock.now()
        return to_record(self._mutate(
            job_id,
            lambda r: jobdoc.fail(r, stage=stage, message_id=message_id, claim=claim, reason=reason,
                                  dead_letter=dead_letter, now=now, join=join, error=error),
        ))

    def retried(self, job_id: str, *, stage: str, message_id: str, claim: str | None, error: dict[str, Any],
                delay_s: float) -> JobRecord:
        now = self.clock.now()
        return to_record(self._mutate(job_id, lambda r: jobdoc.retried(
            r, stage=stage, message_id=message_id, claim=claim, error=error, delay_s=delay_s, now=now)))

    def note(self, job_id: str, *, event: str, stage: str | None, message_id: str | None, reason: str) -> JobRecord:
        now = self.clock.now()
        return to_record(self._mutate(job_id, lambda r: jobdoc.note(
            r, event=event, stage=stage, message_id=message_id, reason=reason, now=now)))

    def snooze(self, job_id: str, *, stage: str, message_id: str, claim: str | None, reason: str,
               until: float, fields: dict[str, Any] | None = None) -> JobRecord:
        now = self.clock.now()
        return to_record(self._mutate(
            job_id,
            lambda r: jobdoc.snooze(r, stage=stage, message_id=message_id, claim=claim, reason=reason, until=until,
                                    now=now, fields=fields),
        ))

    def cancel(self, job_id: str, *, reason: str) -> JobRecord:
        now = self.clock.now()
        return to_record(self._mutate(job_id, lambda r: jobdoc.cancel(r, reason=reason, now=now)))

    def retry(self, job_id: str, *, stage: str, message_id: str, input_body: str, source: str,
              reason: str) -> JobRecord:
        now = self.clock.now()
        return to_record(self._mutate(job_id, lambda r: jobdoc.retry(
            r, stage=stage, message_id=message_id, input_body=input_body, source=source, reason=reason, now=now)))

    def reset(self, job_id: str, *, stage: str, reason: str) -> JobRecord:
        now = self.clock.now()
        return to_record(self._mutate(job_id, lambda r: jobdoc.reset(r, stage=stage, reason=reason, now=now)))

    def update_fields(self, job_id: str, fields: dict[str, Any]) -> JobRecord:
        now = self.clock.now()
        return to_record(self._mutate(job_id, lambda r: jobdoc.set_fields(r, fields=fields, now=now)))

