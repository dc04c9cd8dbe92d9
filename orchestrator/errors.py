"""One error tree for the whole library.

Adapters translate vendor errors at their edge into these types and attach the current
state where they have it (``ConflictError(current=...)``), so the controller's policy never
looks at a vendor exception.
"""

from __future__ import annotations

from typing import Any

from orchestrator.status import JobRecord


class OrchestratorError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(OrchestratorError):
    """A stage, pipeline or backend is configured inconsistently; raised at start-up."""


class PermanentError(OrchestratorError):
    """Raised by a handler when retrying cannot help (missing input, invalid file).

    The controller marks the job FAILED with ``str(error)`` as the reason and acks the
    message: it is not retried.
    """


class FatalBackendError(OrchestratorError):
    """The backend is gone in a way retrying cannot mend (its database file deleted or
    replaced): the worker stops with this error instead of working on."""


class WorkerDied(OrchestratorError):
    """Every thread of a worker ended on something a handler raised past the protocol (a
    ``KeyboardInterrupt`` or a ``BaseException`` of its own, raised in the thread): the worker
    stops with this error instead of returning as if its queue were done. The batches those
    threads held come back after their visibility timeout."""


class DatabaseGone(FatalBackendError, ConfigError):
    pass


class BackendUnavailable(OrchestratorError):
    """The backend could not be reached (or kept refusing for being busy) past its retry
    deadline: an outage, not a problem with the data. A batch that meets it is left whole for
    redelivery."""


class TransactionConflict(BackendUnavailable):
    """A unit of work lost a race with another transaction (a deadlock, a serialization
    failure): the database rolled all of its writes back, so running it again from the start
    is safe. Routine under contention; the controller runs the unit again at once."""


class InvalidPayload(OrchestratorError, ValueError):
    """A payload that cannot travel as a message (not JSON-serialisable, or an integer too large
    for any JSON reader): refused at submission, before anything is written."""


class InvalidSubmission(OrchestratorError, ValueError):
    """A submit or emit asks for what cannot be honoured: a negative or unparsable delay, a
    time long past, a priority outside 0..9."""


class InvalidArgument(OrchestratorError, ValueError):
    """An operation (purge, sweep, a dead-letter listing or redrive) was given a value it cannot
    act on: an age that is NaN, infinite or negative, a count that is not a whole number."""


class NotADeadLetterQueue(OrchestratorError, ValueError):
    """A dead-letter operation (show, redrive) named a queue that is not a dead-letter queue."""


class DuplicateJob(OrchestratorError):
    """A job id submitted again with a different payload, user or target: the second request
    would be silently dropped (submission is idempotent per job id), so it is refused."""


class MalformedMessage(OrchestratorError):
    """A message body that cannot be decoded into an ``Envelope``."""

    def __init__(self, reason: str, *, job_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.job_id = job_id


class NothingToDo(OrchestratorError):
    """A message that asks for nothing (a request naming no job, which the stage accepts as
    such: an upgrade with nothing archived). The controller acks it; no job is touched."""


class StoreError(OrchestratorError):
    """A conditional write to the status store did not apply. ``current`` is the record the
    write was refused against, where the store had it."""

    def __init__(self, message: str, *, current: JobRecord | dict[str, Any] | None = None) -> None:
        super().__init__(message)
        # The rules raise with the stored document (``orchestrator.jobdoc``); most callers
        # never look at it, so the typed record is made on first use.
        self._doc = current if isinstance(current, dict) else None
        self._current = None if isinstance(current, dict) else current

    @property
    def current(self) -> JobRecord | None:
        if self._current is None and self._doc is not None:
            self._current = JobRecord.model_validate(self._doc)
        return self._current

    @property
    def current_doc(self) -> dict[str, Any] | None:
        """``current`` as the store's document."""
        if self._doc is None and self._current is not None:
            self._doc = self._current.model_dump(mode="json")
        return self._doc


class ConflictError(StoreError):
    """A conditional write lost: the step is committed already or the claim is not ours."""


class JobCancelled(ConflictError):
    """The job was cancelled: nothing more is begun, committed or failed for it."""


class RetryImpossible(OrchestratorError):
    """A FAILED job cannot be retried: the input of its failed stage is nowhere to be found."""


class JobNotFound(StoreError):
    """The job does not exist in the status store."""


class InvalidTransition(StoreError):
    """The requested status change would move the job backwards or skip RUNNING."""


class RecordTooLarge(StoreError):
    """The job's record would exceed the store's item size limit (DynamoDB: 400 KB). Retrying
    cannot help: the step fails with this reason."""

    def __init__(self, job_id: str, size: int, limit: int) -> None:
        super().__init__(f"job {job_id}: the record would be {size} bytes, over the store's {limit}-byte item limit "
                         "(emitted bodies are kept in the step's outbox: enable offload_large_bodies to keep large "
                         "ones in the object store)")
        self.size = size
        self.limit = limit


class LeaseLostError(OrchestratorError):
    """The message's lease is no longer ours (receipt stale, or the message is gone)."""


class BodyTooLarge(OrchestratorError):
    """A message body exceeds the transport's size limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message body is {size} bytes, over the {limit}-byte limit")
        self.size = size
        self.limit = limit


class InvalidKey(OrchestratorError):
    """An object-store key that could escape its root (``..``, absolute, NUL)."""


class ObjectNotFound(OrchestratorError):
    """The object-store key does not exist."""


class ObjectArchived(OrchestratorError):
    """The object is in archive storage (Glacier); a restore was requested. Retry later."""


class SimulatedCrash(BaseException):
    """Raised at a crash point named by a ``FaultPlan``.

    A ``BaseException`` so that a handler's ``except Exception`` cannot swallow it: a crash
    loses the process state, and the queue and store keep only what was written.
    """

    def __init__(self, point: str, detail: Any = None) -> None:
        super().__init__(f"simulated crash at {point}")
        self.point = point
        self.detail = detail
