"""The seams. One protocol per seam; adapters live beside it in their own modules.

Units are seconds everywhere. Adapters implement primitives only (receive, send, delete,
extend, conditional writes); retries, backoff, leases and dead-lettering policy live in the
controller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from orchestrator.clock import Clock
from orchestrator.database import Database
from orchestrator.envelope import Envelope
from orchestrator.errors import StoreError
from orchestrator.status import BeginItem, CommitItem, JobRecord, JobStatus, JoinTrigger, NewJob, OutMessage

DEFAULT_VISIBILITY_TIMEOUT_S = 30.0
DEFAULT_MAX_RECEIVES = 5
#: the most attempts a stage may allow: SQS's redrive policy counts at most 1,000 receives, and
#: its backstop sits two above the stage's own limit
MAX_RECEIVES = 998
#: priorities run from 0 (the default, lowest) to MAX_PRIORITY
MAX_PRIORITY = 9


def default_dead_letter(queue: str) -> str:
    """The dead-letter queue a queue gets unless one is named: ``<queue>-dlq``, or for a FIFO
    queue ``<name>-dlq.fifo`` (SQS wants the suffix last, and a FIFO queue's DLQ FIFO too)."""
    if queue.endswith(".fifo"):
        return f"{queue.removesuffix('.fifo')}-dlq.fifo"
    return f"{queue}-dlq"


def is_default_dead_letter(queue: str) -> bool:
    return queue.endswith(("-dlq", "-dlq.fifo"))


def source_of_dead_letter(dlq: str) -> str:
    """The queue whose default dead-letter queue ``dlq`` is (``default_dead_letter`` backwards)."""
    if dlq.endswith("-dlq.fifo"):
        return f"{dlq.removesuffix('-dlq.fifo')}.fifo"
    return dlq.removesuffix("-dlq")


@dataclass(frozen=True)
class QueueSpec:
    name: str
    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S
    max_receives: int = DEFAULT_MAX_RECEIVES
    dead_letter: str | None = None
    fifo: bool = False
    delay_s: float = 0.0
    #: receives after which the queue itself moves a message to its dead-letter queue (SQS
    #: RedrivePolicy); None when only the controller dead-letters
    redrive_after: int | None = None
    #: priorities that get a queue of their own where the queue cannot order by priority
    #: (SQS: ``<queue>-p<band>``, polled high to low); SQL and memory queues order natively
    priority_bands: tuple[int, ...] = ()


@dataclass
class Delivery:
    """One received copy of a message. ``receipt`` changes on every receive."""

    queue: str
    body: str
    receipt: str
    receive_count: int
    first_received_at: float
    message_id: str
    attributes: dict[str, str] = field(default_factory=dict)
    envelope: Envelope | None = None


@dataclass(slots=True)  # not frozen: made per emitted message, and a frozen __init__ costs 6x
class Outgoing:
    body: str
    message_id: str | None = None
    #: seconds before the message may be received; any length (a transport whose queue caps
    #: a delay chains it)
    delay_s: float = 0.0
    attributes: dict[str, str] = field(default_factory=dict)
    group_id: str | None = None  # FIFO message group (the job id)
    #: 0 (lowest) .. 9 (highest): a receive hands out higher priorities first, and the oldest
    #: first within one
    priority: int = 0


@dataclass(frozen=True)
class QueueDepth:
    visible: int
    in_flight: int
    delayed: int

    @property
    def total(self) -> int:
        return self.visible + self.in_flight + self.delayed


class Transport(Protocol):
    """Durable queues with visibility timeouts (SQS semantics)."""

    #: the longest delay ``send``/``release`` accept, in seconds
    max_delay_s: float
    #: the longest lease ``extend`` can hold from the time of receipt, in seconds
    max_visibility_s: float
    #: the largest body ``send`` accepts, in bytes
    max_body_bytes: int
    #: the most messages one ``receive`` returns
    max_batch: int

    def ensure_queue(self, spec: QueueSpec) -> None:
        """Create the queue (and its dead-letter queue) if missing. Idempotent."""
        ...

    def send(self, queue: str, message: Outgoing) -> str:
        """Enqueue one message and return its transport id.

        Not idempotent in general; on the embedded backends a message whose ``message_id``
        is already waiting in the queue is not enqueued twice. Raises ``BodyTooLarge``.
        """
        ...

    def send_batch(self, queue: str, messages: Sequence[Outgoing]) -> list[str]:
        """Enqueue several messages; all or an exception (failed entries are retried inside)."""
        ...

    def receive(
        self, queue: str, *, max_messages: int, wait_s: float, visibility_s: float
    ) -> list[Delivery]:
        """Lease up to ``max_messages`` visible messages for ``visibility_s`` seconds.

        Each leased message's receive count goes up by one *now*, at claim time, so a
        handler that kills its process still uses up an attempt. Waits up to ``wait_s``
        seconds for a first message (long polling); returns ``[]`` if none came.
        """
        ...

    def ack(self, delivery: Delivery) -> bool:
        """Delete the message. Idempotent; returns False when the receipt is stale (the
        message was redelivered to someone else or is gone) and then deletes nothing."""
        ...

    def ack_batch(self, deliveries: Sequence[Delivery]) -> list[bool]: ...

    def extend(self, delivery: Delivery, seconds: float) -> None:
        """Keep the message invisible for ``seconds`` more from now (the heartbeat).

        Raises ``LeaseLostError`` when the receipt is stale or the message is gone."""
        ...

    def release(self, delivery: Delivery, delay_s: float) -> bool:
        """Make the message visible again after ``delay_s`` seconds (0: at once).
        Returns False when the receipt is stale."""
        ...

    def snooze(self, delivery: Delivery, delay_s: float) -> bool:
        """Make the message visible again after ``delay_s`` seconds, of any length, and take
        back this receive: the next delivery's ``receive_count`` is this one's (a snooze uses
        no attempt) and its ``first_received_at`` stays. Returns False when the receipt is
        stale. Not atomic where the queue cannot change a message in place (SQS: a copy is
        sent, then the original deleted; a crash between leaves a duplicate, never a loss)."""
        ...

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to its queue's dead-letter queue with ``reason`` as attribute
        ``dead_letter_reason``; the body is kept as it was. Idempotent."""
        ...

    def depth(self, queue: str) -> QueueDepth: ...

    def queues(self) -> list[str]:
        """Names of every queue this backend knows."""
        ...

    def peek(self, queue: str, limit: int) -> list[Delivery]:
        """Read up to ``limit`` messages without leasing them (operators, DLQ listing)."""
        ...

    def purge(self, queue: str) -> None:
        """Delete every message of ``queue`` (operators and tests)."""
        ...

    def spec(self, queue: str) -> QueueSpec | None: ...


class Topic(Protocol):
    """Fan-out: a message published to a topic lands in every subscribed queue."""

    def ensure_topic(self, topic: str) -> None:
        """Create the topic if missing. Idempotent."""
        ...

    def subscribe(self, topic: str, queue: str, *, raw: bool = True) -> None:
        """Subscribe ``queue`` to ``topic``. Idempotent. ``raw=False`` wraps each body in an
        SNS-style notification (``{"Type": "Notification", "Message": body, ...}``)."""
        ...

    def publish(self, topic: str, body: str, *, message_id: str, group_id: str | None = None) -> None:
        """Deliver ``body`` to every subscription of ``topic``. ``group_id`` (the job id) orders
        a FIFO topic's messages, as it does a FIFO queue's."""
        ...

    def publish_batch(self, topic: str, messages: Sequence[Outgoing]) -> None:
        """``publish`` for several messages (each with its ``message_id`` and ``group_id``), in
        as few calls as the backend allows; a message that keeps failing raises, none is dropped."""
        ...

    def subscriptions(self, topic: str) -> list[tuple[str, bool]]:
        """(queue, raw) pairs of ``topic``."""
        ...

    def topics(self) -> list[str]:
        """Names of every topic (read-only: creates nothing)."""
        ...


class StatusStore(Protocol):
    """Jobs and their step records. Every write is conditional (first committer wins).

    The vocabulary is the document operations below (``*_docs``, ``prepare_commits``,
    ``apply``): what the controller calls, what an adapter's policy implements once
    (``stores/cas.py``). A single-job write returns the record as written, or raises
    ``ConflictError`` / ``InvalidTransition`` / ``JobNotFound`` carrying the current record.
    ``get`` and ``create`` are the typed read and create programs call.
    """

    def create(
        self, job_id: str, *, user_id: str | None = None, fields: dict[str, Any] | None = None,
        origin: OutMessage | None = None,
    ) -> tuple[JobRecord, bool]:
        """Create a PENDING job. Idempotent: an existing job is returned unchanged with
        ``False``."""
        ...

    def get(self, job_id: str) -> JobRecord | None:
        """The job as a typed record (``get_docs`` of one), None when there is none."""
        ...

    # The reads and writes of jobs, on the store's documents (``orchestrator.jobdoc``): one
    # vocabulary, batches first (a single job is a batch of one). Typed views of the step
    # writes and of a batch read are helpers outside the protocol (``orchestrator.records``).
    def create_doc(
        self, job_id: str, *, user_id: str | None = None, fields: dict[str, Any] | None = None,
        origin: OutMessage | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create the job PENDING at version 1, conditional on its id being free (another
        program's item under that key is never overwritten): (document, True); an existing
        job's document, unchanged, with False. Reads the job; writes one new record."""
        ...

    def create_docs(self, jobs: Sequence[NewJob]) -> list[tuple[dict[str, Any], bool]]:
        """``create_doc`` for many jobs at once, in order: (document, created). A job id that
        exists already (or comes twice) answers its existing document with ``False``."""
        ...

    def get_docs(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The existing jobs among ``job_ids`` (duplicates and unknown ids left out), as whole
        documents (defaults filled back), read consistently, in one round trip where the
        backend allows. Writes nothing; never changes a returned document later."""
        ...

    def begin_docs(self, items: Sequence[BeginItem], *, known: dict[str, dict[str, Any]] | None = None
                   ) -> list[dict[str, Any] | StoreError]:
        """Claim each item's step for its delivery (PENDING -> RUNNING), one result per item
        in order: the document written, or the ``StoreError`` its rule raised (``ConflictError``
        with the current document when the step is finished or held under a newer claim,
        ``JobCancelled``, ``JobNotFound``). Each write is conditional on the version of the
        document it was judged on (``known``: documents just read; a job whose version moved
        is read and judged again). Raises only for an outage or a batch the backend refused."""
        ...

    def commit_docs(self, items: Sequence[CommitItem], *, known: dict[str, dict[str, Any]] | None = None
                    ) -> list[dict[str, Any] | StoreError]:
        """``apply(prepare_commits(items, known=known))``."""
        ...

    def prepare_commits(self, items: Sequence[CommitItem], *, known: dict[str, dict[str, Any]] | None = None
                        ) -> PreparedWrites:
        """Work the commits out against ``known`` (documents just read) and encode them: pure,
        no I/O and no lock, so a caller does it before it opens a unit of work. Reads nothing,
        writes nothing, raises nothing for a refused rule (``apply`` judges it again)."""
        ...

    def apply(self, writes: PreparedWrites) -> list[dict[str, Any] | StoreError]:
        """Write what ``prepare_commits`` made, one result per item in order: the document
        written, or the ``StoreError`` its rule raised. Each write is conditional on the version
        it was prepared against; a job whose record moved since (or that had no known record)
        is read, judged by its rule and written again, as a single write is. Inside a unit of
        work the writes are part of it."""
        ...

    def fail(
        self,
        job_id: str,
        *,
        stage: str,
        message_id: str,
        claim: str | None,
        reason: str,
        dead_letter: bool,
        join: JoinTrigger | None = None,
        error: dict[str, Any] | None = None,
    ) -> JobRecord:
        """Mark the step failed and the job FAILED (a COMPLETED job stays COMPLETED; a part
        whose ``join`` allows failures leaves the job as it is, and carries the join's message
        in its outbox when it is the last part to finish). ``error`` (a ``StepError`` as a
        dict) is the exception that failed it, kept on the step.
        With ``claim=None`` no lease is checked (a message that never began a step)."""
        ...

    def retried(self, job_id: str, *, stage: str, message_id: str, claim: str | None, error: dict[str, Any],
                delay_s: float) -> JobRecord:
        """A failed attempt that will be retried in ``delay_s``: the step keeps ``error`` (a
        ``StepError`` as a dict), the history a ``retried`` entry. Conditions: step_not_finished,
        lease_still_ours. Raises ``ConflictError``."""
        ...

    def note(self, job_id: str, *, event: str, stage: str | None, message_id: str | None, reason: str) -> JobRecord:
        """Append a history entry (``released``, ``lease_lost``) that changes nothing else."""
        ...

    def delete(self, job_id: str, *, version: int) -> bool:
        """Remove the job if it is still at ``version``; False when it changed or is gone."""
        ...

    def snooze(self, job_id: str, *, stage: str, message_id: str, claim: str | None, reason: str,
               until: float, fields: dict[str, Any] | None = None) -> JobRecord:
        """Append a ``snoozed`` history entry (``reason``, and ``until``, a time on the store's
        clock) and merge ``fields``; status and steps unchanged. Conditions: step_not_finished,
        lease_still_ours (``claim=None``: none). Raises ``ConflictError``."""
        ...

    def cancel(self, job_id: str, *, reason: str) -> JobRecord:
        """PENDING or RUNNING -> CANCELLED, with ``reason`` in the history. Idempotent (a
        CANCELLED job is returned unchanged). Raises ``InvalidTransition`` for a COMPLETED or
        FAILED job, ``JobNotFound``."""
        ...

    def retry(self, job_id: str, *, stage: str, message_id: str, input_body: str, source: str,
              reason: str) -> JobRecord:
        """FAILED -> PENDING: ``stage``'s failed step becomes a running step holding its input
        (``message_id``, to be sent on ``source``), with a ``retry`` history entry. Raises
        ``InvalidTransition`` for a job that is not FAILED, ``JobNotFound``."""
        ...

    def reset(self, job_id: str, *, stage: str, reason: str) -> JobRecord:
        """Operator redrive: FAILED -> PENDING, forgetting ``stage``'s failed step."""
        ...

    def update_fields(self, job_id: str, fields: dict[str, Any]) -> JobRecord:
        """Merge fields without touching status or steps (producers, operators)."""
        ...

    def query(self, *, user_id: str | None = None, status: JobStatus | None = None, since: float | None = None,
              limit: int | None = None) -> list[JobRecord]:
        """Jobs of ``user_id`` and in ``status`` (None: any), created at or after ``since``,
        oldest first (by creation time, then id). ``limit``: only the latest ``limit`` of them,
        read as such (a dashboard's page of a million jobs reads its page, not the million)."""
        ...


class ObjectStore(Protocol):
    """Files by key. Keys with ``..``, a leading ``/`` or NUL raise ``InvalidKey``."""

    @property
    def presigns(self) -> bool:
        """Whether ``url`` gives a link any HTTP client may fetch for a while (S3's presigned
        URLs): a web app sends browsers there instead of passing the bytes through itself."""
        ...

    def put(self, key: str, data: bytes) -> None: ...

    def put_file(self, key: str, source: BinaryIO) -> None:
        """``put`` from a file read in chunks, never whole in memory (a large upload)."""
        ...

    def get(self, key: str) -> bytes:
        """Raises ``ObjectNotFound``."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Idempotent."""
        ...

    def url(self, key: str, *, expires_s: int = 3600) -> str:
        """Where the object is: fetchable over HTTP until ``expires_s`` only where ``presigns``."""
        ...


@dataclass(frozen=True)
class PreparedWrites:
    """Writes a status store worked out before any lock (``prepare_commits``), for ``apply``:
    each job's rule, and what the rule made of the document the caller knew (None: judged
    again at ``apply``)."""

    rules: Sequence[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]]
    prepared: Sequence[Any]


@dataclass(frozen=True)
class Unit:
    """A unit of work in progress. ``atomic``: its writes are one transaction (all or none);
    otherwise each applies as it is made, in order."""

    atomic: bool


@dataclass
class Backend:
    transport: Transport
    topic: Topic
    store: StatusStore
    clock: Clock
    objects: ObjectStore | None = None
    #: the database transport and store share (SQLite, PostgreSQL), which makes a unit of work
    #: one transaction; None where they do not (AWS, memory)
    database: Database | None = None
    url: str = ""

    @property
    def transactional(self) -> bool:
        """Whether a unit of work is one transaction (a commit and what it emits and acks are
        then never seen apart)."""
        return self.database is not None

    @contextmanager
    def unit(self) -> Iterator[Unit]:
        """``with backend.unit() as u:`` one unit of work over the store, queues and topics.

        On SQLite and PostgreSQL it is one transaction: every write inside commits when the
        block ends, or none does when it raises (a crash anywhere inside leaves nothing). On
        AWS and memory the writes apply one by one in the order made; a crash between two
        leaves those before it, which is what the protocol's crash points are about. A unit
        inside a unit joins it. The block is not run again by the unit: a lost deadlock raises
        ``TransactionConflict`` with everything rolled back, safe to run again."""
        if self.database is None:
            yield Unit(atomic=False)
            return
        with self.database.transaction():
            yield Unit(atomic=True)

    def close(self) -> None:
        db = getattr(self.transport, "db", None)
        if db is not None:
            db.close()
