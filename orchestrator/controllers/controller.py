"""The commit protocol: decode, lookup, begin, handle, commit, emit, ack. One implementation.

``Controller.process`` runs it over a received batch; a single message is a batch of one
(``handle``). Each store and queue step is done for the batch at once: one lookup
(``get_docs``), one ``begin_docs``, the commits prepared with no lock held
(``prepare_commits``), then, in one unit of work (``backend.unit()``: one transaction on SQLite
and PostgreSQL), their writes (``apply``), one send per target queue or topic and one
``ack_batch`` (and, for a worker, the claim of its next batch: ``prefetch.py``). What becomes of each delivery is ``decide``'s choice; this module finds out what
happened and carries the verdict out.

``process`` is a generator that yields the name of each crash point the batch passes, so the
deterministic simulation can interleave batches step by step; the worker drives it to the end.
The ``FaultPlan`` is asked *per message* before each yield: a crash drops the whole batch's
in-memory state, as a dead process would.

Every branch answers "what if the process dies right here?": the queue redelivers after the
visibility timeout and the step record in the status store says how far we got.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import traceback
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import structlog

from orchestrator.backends import Backend
from orchestrator.base import Delivery, Unit
from orchestrator.codec import user_of
from orchestrator.controllers import outbox
from orchestrator.controllers.decide import (
    Action,
    NoResult,
    NothingAsked,
    Refused,
    Stopping,
    Undecodable,
    UnknownJob,
    Unreadable,
    Verdict,
    decide,
    recorded,
)
from orchestrator.controllers.deferred import DeferredBegin
from orchestrator.controllers.faults import FaultPlan
from orchestrator.controllers.lease import Lease
from orchestrator.controllers.prefetch import Prefetch
from orchestrator.envelope import Envelope, derive_id
from orchestrator.errors import (
    ConflictError,
    JobNotFound,
    MalformedMessage,
    NothingToDo,
    PermanentError,
    StoreError,
    TransactionConflict,
)
from orchestrator.jobdoc import CANCELLED, Doc, out_message, part_key
from orchestrator.logging import error_text, exception_text
from orchestrator.middleware import LoggingMiddleware, Middleware, call_hooks, overriding
from orchestrator.objects.claim_check import resolve_body
from orchestrator.outage import is_outage
from orchestrator.pipeline import Context, Pipeline, Result, Snooze, Stage
from orchestrator.status import BeginItem, CommitItem, JobStatus, JoinTrigger, OutMessage
from orchestrator.storable import check_fields, storable_text

Steps = Generator[str, None, "list[Outcome]"]
R = TypeVar("R")

# A unit of work that lost a deadlock is run again this many times before the batch is left.
MAX_UNIT_CONFLICTS = 3
# Step records keep their input for the sweeper only up to this size.
MAX_KEPT_INPUT_BYTES = 16 * 1024
# A step keeps the end of its last failure's traceback, up to this many characters.
MAX_TRACEBACK_CHARS = 8 * 1024


class Outcome(StrEnum):
    COMMITTED = "committed"  # handler ran, step committed, outbox emitted, message acked
    DUPLICATE = "duplicate"  # step was finished already: outcome replayed, message acked
    SKIPPED = "skipped"  # job FAILED elsewhere: nothing to do, message acked
    FAILED = "failed"  # PermanentError: job FAILED, message acked
    RETRIED = "retried"  # transient error: message released with backoff
    DEAD_LETTERED = "dead_lettered"  # malformed, unknown, or out of attempts
    DISCARDED = "discarded"  # our lease was lost: result thrown away, message left alone
    RELEASED = "released"  # never started (the worker is stopping): visible again at once
    SNOOZED = "snoozed"  # the handler said "not yet": visible again later, no attempt used
    CANCELLED = "cancelled"  # the job was cancelled: message acked, nothing run or written


@dataclass(slots=True)
class _Item:
    """One delivery on its way through the protocol."""

    index: int
    delivery: Delivery
    lease: Lease
    base_log: Any  # the controller's logger; ``log`` binds this message's to it when first asked
    env: Envelope = field(default=None)  # type: ignore[assignment]  # set by decode
    job: Doc | None = None  # the job's document as of the begin
    result: Result | None = None
    outbox: list[OutMessage] = field(default_factory=list)
    status: JobStatus | None = None
    error: BaseException | None = None  # what the handler raised, for the on_retry hook
    snooze: Snooze | None = None  # what the handler returned to snooze
    job_id: str = ""  # the envelope's, set with it (read a dozen times a message)
    claim: str | None = None  # the receipt, once a deferred stage's begin claimed the step with it
    refusal: Exception | None = None  # why a deferred begin was refused (settled after the handler)
    started_at: float | None = None  # when its handler started (a commit that creates the step says so)
    bound: Any = None  # ``log``, once bound

    @property
    def log(self) -> Any:
        """The message's logger (its id, attempt and job), bound when a line is first logged:
        most messages log nothing below the info level, and binding one for each was 1% of
        a no-op pipeline's instructions."""
        if self.bound is None:
            d = self.delivery
            self.bound = self.base_log.bind(message_id=d.message_id, attempt=d.receive_count) if self.env is None \
                else self.base_log.bind(message_id=self.env.id, attempt=d.receive_count, job_id=self.job_id)
        return self.bound

    def key(self, stage: str) -> str:
        """The step this delivery writes: the stage's, or a part's own (``stage#i``)."""
        return stage if self.env.part is None else part_key(stage, self.env.part)


def _rejected_step(stage: str) -> str:
    # Undecodable messages are recorded under their own step key, so they can never mark the
    # stage's real step as failed.
    return f"{stage}!rejected"


def _rounds(items: list[_Item]) -> list[list[_Item]]:
    """Split a batch so that no round holds two messages for one job. A stage has one step
    per job, so a second copy (a duplicate request, a redelivery) runs in a later round, where
    the lookup sees the first copy's commit and replays it instead of running the handler."""
    if len({it.job_id for it in items}) == len(items):  # the usual batch: one job a message
        return [items] if items else []
    rounds: list[list[_Item]] = []
    seen: list[set[str]] = []
    for it in items:
        for r, ids in zip(rounds, seen, strict=True):
            if it.job_id not in ids:
                r.append(it)
                ids.add(it.job_id)
                break
        else:
            rounds.append([it])
            seen.append({it.job_id})
    return rounds


def _logs_info(log: Any) -> bool:
    """Whether ``log`` writes info lines (a logger of another kind than structlog's own
    filtering ones is taken to): a message's logger is bound only when it logs."""
    enabled = getattr(log, "is_enabled_for", None)
    return enabled is None or bool(enabled(logging.INFO))


def drive(steps: Steps) -> list[Outcome]:
    """Run a ``process`` generator to its end and return its outcomes."""
    return _value_of(steps)


def _value_of(steps: Generator[str, None, R]) -> R:
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


class Controller:
    def __init__(
        self,
        pipeline: Pipeline,
        stage: str | Stage,
        backend: Backend,
        *,
        faults: FaultPlan | None = None,
        seed: int | None = None,
        worker_id: str | None = None,
        middleware: list[Middleware] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.middleware = [LoggingMiddleware(), *pipeline.middleware, *(middleware or [])]
        self._hooks: dict[str, list[Middleware]] = {}  # hook name -> the middleware that has it
        self.stage = stage if isinstance(stage, Stage) else pipeline.get(stage)
        self._join_stage = pipeline.join_of(self.stage.name)  # the join waiting for this stage's parts
        self._takes_new_jobs = pipeline.takes_submissions(self.stage)
        self._codec = self.stage.codec  # made once: a stage's settings are fixed by now
        self.backend = backend
        self.faults = faults
        self.random = random.Random(seed)
        self.worker_id = worker_id or uuid.uuid4().hex[:8]
        #: seconds spent in handlers so far (the worker sizes its batches by it)
        self.handler_seconds = 0.0
        self._prefetched: list[Delivery] = []
        self.log = structlog.get_logger("orchestrator.controller").bind(stage=self.stage.name, worker=self.worker_id)

    # -- entry points -----------------------------------------------------------------------
    def lease(self, delivery: Delivery) -> Lease:
        return self.leases([delivery])[0]

    def leases(self, deliveries: Sequence[Delivery]) -> list[Lease]:
        """A heartbeat lease per delivery of a received batch (one timer beats them all)."""
        st = self.stage
        return Lease.batch(self.backend.transport, deliveries, self.backend.clock,
                           visibility_s=st.visibility_timeout_s, time_limit_s=st.time_limit_s,
                           on_extend=lambda d: self.hook("on_lease_extended", st, d),
                           on_lost=lambda d: self.hook("on_lease_lost", st, d))

    def hook(self, name: str, *args: object) -> None:
        active = self._hooks.get(name)
        if active is None:
            active = self._hooks[name] = overriding(self.middleware, name)
        if active:
            call_hooks(active, name, *args)

    def handle(self, delivery: Delivery, lease: Lease | None = None) -> Outcome:
        """The protocol for one delivery: a batch of one."""
        return self.handle_batch([delivery], None if lease is None else [lease])[0]

    def handle_batch(self, deliveries: Sequence[Delivery], leases: Sequence[Lease] | None = None, *,
                     should_stop: Callable[[], bool] = lambda: False,
                     prefetch: int | Callable[[], int] = 0) -> list[Outcome]:
        """Run the whole protocol for a received batch (the worker's path); one outcome per
        delivery, in order. Leases made here are stopped here. ``prefetch``: where a unit of
        work is one transaction, the batch's last one also claims up to that many messages of
        the stage's source (``prefetch.py``; a function is asked at the claim);
        ``take_prefetched`` hands them over."""
        own = leases is None
        held = self.leases(deliveries) if leases is None else list(leases)
        try:
            return drive(self.process(list(zip(deliveries, held, strict=True)), should_stop=should_stop,
                                      prefetch=prefetch))
        finally:
            if own:
                for lease in held:
                    lease.stop()

    def take_prefetched(self) -> list[Delivery]:
        """The messages the last batch claimed for the next one (leased, not yet handled)."""
        got, self._prefetched = self._prefetched, []
        return got

    # -- crash points -----------------------------------------------------------------------
    def _check(self, point: str, items: Sequence[_Item]) -> None:
        """Ask the fault plan about ``point`` for every message (raises ``SimulatedCrash``)."""
        if self.faults is None:
            return
        for it in items:
            d = it.delivery
            self.faults.check(point, stage=self.stage.name, job_id=it.env.job_id if it.env else None,
                              message_id=it.env.id if it.env else d.message_id, attempt=d.receive_count)

    def _crash(self, point: str, items: Sequence[_Item]) -> Iterator[str]:
        if items:
            self._check(point, items)
            yield point

    # -- the protocol -----------------------------------------------------------------------
    def process(self, batch: Sequence[tuple[Delivery, Lease]], *,
                should_stop: Callable[[], bool] = lambda: False,
                prefetch: int | Callable[[], int] = 0) -> Steps:
        outcomes: dict[int, Outcome] = {}
        # each item's logger is bound when it first logs (``_Item.log``)
        items = [_Item(n, d, lease, self.log) for n, (d, lease) in enumerate(batch)]
        yield from self._crash("after_receive", items)

        # 1. decode, message by message: one undecodable body never holds up its batch-mates
        decoded = []
        for it in items:
            rejected = self._decode(it)
            if rejected is None:
                decoded.append(it)
            else:
                self._finish(it, rejected, outcomes)

        rounds = _rounds(decoded)
        for n, round_ in enumerate(rounds):
            # only the last round's commit claims the next batch: no handler runs after it
            nxt = self._prefetch(prefetch, should_stop) if n == len(rounds) - 1 else None
            yield from self._round(round_, outcomes, should_stop, nxt)
        return [outcomes[n] for n in range(len(items))]

    def _prefetch(self, size: int | Callable[[], int], should_stop: Callable[[], bool]) -> Prefetch | None:
        if not size:
            return None
        st = self.stage
        return Prefetch(size if callable(size) else lambda: size, st.source, st.visibility_timeout_s, should_stop)

    def _round(self, items: list[_Item], outcomes: dict[int, Outcome], should_stop: Callable[[], bool],
               nxt: Prefetch | None) -> Generator[str, None, None]:
        jobs: dict[str, Doc] = {}
        live = self._lookup(items, jobs, outcomes)
        started, deferred = self._begin(live, jobs, outcomes)
        try:
            yield from self._crash("after_begin", started)
            handled = self._handle_all(started, jobs, outcomes, should_stop, deferred)
        except BaseException:
            if deferred is not None:  # a crash, or the generator dropped: no begin from here on
                deferred.cancel()
            raise
        if deferred is not None:
            deferred.close()
        yield from self._crash("after_handle", handled)
        ready = []
        for it in handled:  # time passed since the handler returned: a lease lost meanwhile is decided on
            if it.lease.lost:
                self._finish(it, self._settle_by(it, it.result), outcomes)
            else:
                ready.append(it)
        if ready:
            yield from self._commit_emit_ack(ready, jobs, outcomes, nxt)

    def _lookup(self, items: list[_Item], jobs: dict[str, Doc], outcomes: dict[int, Outcome]) -> list[_Item]:
        """2. lookup: one read for the round (a job that cannot be read settles its message
        alone); a message for a job nobody created is adopted where the stage takes new jobs.
        The items whose step is still to be done, each with its job."""
        store = self.backend.store
        read = self._isolate(items, lambda sub: _in_order(sub, store.get_docs([it.job_id for it in sub])))
        live: list[_Item] = []
        for it, found in zip(items, read, strict=True):
            job = self._adopt(it) if found is None else found
            if isinstance(job, Exception):
                self._finish(it, self._settle_by(it, Refused(job, "reading its job")), outcomes)
                continue
            if isinstance(job, Outcome):
                self._finish(it, job, outcomes)
                continue
            it.job = jobs[it.job_id] = job
            settled = recorded(job, it.key(self.stage.name))
            if settled is not None:
                self._finish(it, self._settle_by(it, settled), outcomes)
            else:
                live.append(it)
        return live

    def _begin(self, live: list[_Item], jobs: dict[str, Doc], outcomes: dict[int, Outcome]
               ) -> tuple[list[_Item], DeferredBegin[_Item] | None]:
        """3. begin: claim each step with its delivery's receipt (lease fencing). A lazy stage
        writes none (its commit records the step); a deferred one begins a redelivery now and
        a first delivery only if its round is still running ``begin_after_s`` from now. The
        items to handle, and the deferred begin."""
        st = self.stage
        if st.begin == "lazy" or not live:
            return live, None
        if st.begin == "eager":
            return self._begin_now(live, jobs, outcomes), None
        later = [it for it in live if it.delivery.receive_count <= 1]
        if len(later) == len(live):
            started = live
        else:
            started = self._begin_now([it for it in live if it.delivery.receive_count > 1], jobs, outcomes)
            started = sorted(started + later, key=lambda it: it.index)
        deferred = DeferredBegin(self.backend.clock, st.begin_after_s, later,
                                 lambda todo, at: self._begin_later(todo, jobs, at)) if later else None
        return started, deferred

    def _begin_items(self, items: list[_Item], jobs: dict[str, Doc], started_at: float | None
                     ) -> list[Doc | Exception]:
        st = self.stage
        return self._isolate(items, lambda sub: self.backend.store.begin_docs(
            [BeginItem(it.job_id, it.key(st.name), it.env.id, it.delivery.receipt, it.delivery.receive_count,
                       kept_input(it.delivery.body), st.source, started_at) for it in sub], known=jobs))

    def _begin_now(self, live: list[_Item], jobs: dict[str, Doc], outcomes: dict[int, Outcome],
                   started_at: float | None = None) -> list[_Item]:
        """The begins written now; the items whose begin went through."""
        started = []
        for it, res in zip(live, self._begin_items(live, jobs, started_at), strict=True):
            if isinstance(res, Exception):
                self._begin_refused(it, res, outcomes)
            else:
                self._took(it, res, jobs)
                started.append(it)
        return started

    @staticmethod
    def _took(it: _Item, job: Doc, jobs: dict[str, Doc]) -> None:
        """``it``'s begin went through: its job as begun, and its claim."""
        it.job = jobs[it.job_id] = job
        it.claim = it.delivery.receipt

    def _begin_later(self, items: list[_Item], jobs: dict[str, Doc], started_at: float) -> None:
        """A deferred begin (on the timer): a refusal is settled once the item's handler is done.
        An outage leaves the round's steps to their commits, whose own conditions hold without
        a claim (the first committer wins), rather than throwing the handlers' work away."""
        try:
            begun = self._begin_items(items, jobs, started_at)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self.log.warning("deferred begin not written; the commits will record the steps",
                             error=error_text(exc, 300), batch=len(items))
            return
        for it, res in zip(items, begun, strict=True):
            if isinstance(res, Exception):
                it.refusal = res
            else:
                self._took(it, res, jobs)

    def _begin_refused(self, it: _Item, res: Exception, outcomes: dict[int, Outcome]) -> None:
        if isinstance(res, StoreError):
            # finished meanwhile (settled as the record says), or a newer delivery holds it
            current = res.current_doc if isinstance(res, ConflictError) else None
            settled = recorded(current, it.key(self.stage.name)) if current is not None else None
            if settled is not None:
                it.job = current
            self._finish(it, self._settle_by(it, settled or res), outcomes)
        else:
            self._finish(it, self._settle_by(it, Refused(res, "its begin")), outcomes)

    def _handle_all(self, started: list[_Item], jobs: dict[str, Doc], outcomes: dict[int, Outcome],
                    should_stop: Callable[[], bool], deferred: DeferredBegin[_Item] | None) -> list[_Item]:
        """4. handle, one by one; the decision is ``decide``'s. The items to commit."""
        handled: list[_Item] = []
        for it in started:
            stopping = it.refusal is None and should_stop()
            action = None if stopping or it.refusal is not None else self._run_handler(it)
            if deferred is not None:
                deferred.finished(it)
            if it.refusal is not None:  # a deferred begin was refused: the record decides
                self._begin_refused(it, it.refusal, outcomes)
            elif action is None:  # the worker is stopping: handed back unrun
                self._finish(it, self._settle_by(it, Stopping()), outcomes)
            elif action.verdict == Verdict.ACK:
                handled.append(it)
            elif self._begun_to_record(it, action, jobs, outcomes, deferred):
                self._finish(it, self._act(it, action), outcomes)
        return handled

    def _begun_to_record(self, it: _Item, action: Action, jobs: dict[str, Doc], outcomes: dict[int, Outcome],
                         deferred: DeferredBegin[_Item] | None) -> bool:
        """A deferred step whose handler failed, raised or snoozed is begun before that is
        written, so its record holds the attempt and the input (an operator's retry re-sends
        it) as an eager stage's does. False: the begin was refused, which settled the item."""
        if deferred is None or it.claim is not None or action.verdict not in _RECORDED_ON_THE_STEP:
            return True
        res = self._begin_items([it], jobs, deferred.started_at)[0]
        if isinstance(res, JobNotFound):  # purged meanwhile: the write that follows finds that out too
            return True
        if isinstance(res, Exception):
            self._begin_refused(it, res, outcomes)
            return False
        self._took(it, res, jobs)
        return True

    def _commit_emit_ack(self, ready: list[_Item], jobs: dict[str, Doc], outcomes: dict[int, Outcome],
                         nxt: Prefetch | None) -> Generator[str, None, None]:
        """5-7. commit, emit, ack: one unit of work per (isolated) sub-batch."""
        won: list[_Item] = []
        results = yield from self._isolate_steps(ready, lambda sub: self._settle(sub, jobs, won, nxt))
        for it, res in zip(ready, results, strict=True):
            if isinstance(res, StoreError):
                self._finish(it, self._act(it, self._decide(it, res)), outcomes)
            elif isinstance(res, Exception):
                self._finish(it, self._settle_by(it, Refused(res, "its commit")), outcomes)
        yield from self._crash("after_ack", won)
        logged = _logs_info(self.log)
        for it in won:
            if logged:
                it.log.info("step committed")
            self.hook("on_commit", self.stage, it.delivery)
            self._finish(it, Outcome.COMMITTED, outcomes)

    def _settle(self, sub: list[_Item], jobs: dict[str, Doc], won: list[_Item], nxt: Prefetch | None
                ) -> Generator[str, None, list[Doc | StoreError]]:
        """Commit, emit and ack ``sub`` as one unit of work (and claim the next batch in it,
        when asked). The commits are worked out first, with no lock held; on SQLite and
        PostgreSQL the unit is one transaction, so a crash anywhere inside leaves none of them."""
        store = self.backend.store
        writes = store.prepare_commits([self._commit_item(it) for it in sub], known=jobs)
        with self.backend.unit() as u:
            results = store.apply(writes)
            sub_won = self._won(sub, results)
            yield from self._point(u, "after_commit", sub_won)
            self._emit(sub_won)
            yield from self._point(u, "after_emit", sub_won)
            if sub_won:
                self.backend.transport.ack_batch([it.delivery for it in sub_won])
            claimed = nxt.claim(self.backend.transport) if nxt is not None and u.atomic else []
        won.extend(sub_won)  # only now: the unit that acked them is done
        self._prefetched.extend(claimed)  # (and claimed these)
        return results

    def _point(self, u: Unit, point: str, items: Sequence[_Item]) -> Iterator[str]:
        """A crash point inside a unit of work. The fault plan is asked at every one; the
        simulation may interleave other controllers only where the unit is not one
        transaction (a step inside a transaction would hold its lock across theirs)."""
        if items:
            self._check(point, items)
            if not u.atomic:
                yield point

    # -- isolation --------------------------------------------------------------------------
    def _isolate(self, items: list[_Item], write: Callable[[list[_Item]], Sequence[R]]) -> list[R | Exception]:
        """``write`` for the batch, one result per item (see ``_isolate_steps``)."""

        def steps(sub: list[_Item]) -> Generator[str, None, Sequence[R]]:
            return write(sub)
            yield  # (a generator that passes no crash point)

        return _value_of(self._isolate_steps(items, steps))

    def _isolate_steps(self, items: list[_Item], write: Callable[[list[_Item]], Generator[str, None, Sequence[R]]]
                       ) -> Generator[str, None, list[R | Exception]]:
        """``write`` for the batch, one result per item. When it raises for a reason that is
        not an outage, the batch is halved until the failure is pinned on the items that fail
        alone: their result is the exception, and their batch-mates' writes go through in the
        same round (a write is a unit of work: on SQLite and PostgreSQL a failed one left
        nothing; elsewhere what it did is judged again by the step records). A unit that lost a
        deadlock is run again; another outage is raised as it is: the whole batch is
        redelivered later."""
        for conflicts in range(MAX_UNIT_CONFLICTS + 1):
            try:
                return list((yield from write(items)))
            except TransactionConflict:
                if conflicts == MAX_UNIT_CONFLICTS:
                    raise
            except Exception as exc:
                if is_outage(exc):
                    raise
                if len(items) == 1:
                    return [exc]
                self.log.warning("a batch write was refused; isolating the message it fails for",
                                 error=error_text(exc, 300), batch=len(items))
                break
        mid = len(items) // 2
        first = yield from self._isolate_steps(items[:mid], write)
        return first + (yield from self._isolate_steps(items[mid:], write))

    def _poisoned(self, it: _Item, action: Action) -> Outcome:
        """Settle a message whose own write (or read) the backend refused: dead-letter it
        with the reason, failing its job where the job can still be written."""
        refused: Refused = action.cause
        reason = storable_text(action.reason)
        it.log.error("message poisons its writes; dead-lettered", reason=reason)
        if it.job is not None:
            try:
                # a refused begin recorded no claim of ours: the failure is written without one
                return self._fail(it, reason, dead_letter=True, begun=refused.what != "its begin",
                                  error=refused.error)
            except Exception as again:  # the failure cannot be written either: the message alone
                if is_outage(again):
                    raise
        self.backend.transport.dead_letter(it.delivery, reason)
        self.hook("on_dead_letter", self.stage, it.delivery, reason)
        return Outcome.DEAD_LETTERED

    def _adopt(self, it: _Item) -> Doc | Outcome:
        """The job for a message whose job nobody created: created from the message (owned by
        its payload's ``user_id``) on a stage that takes new jobs; elsewhere dead-lettered."""
        if not self._takes_new_jobs:
            return self._settle_by(it, UnknownJob(it.job_id, self.stage.name))
        try:
            job, _ = self.backend.store.create_doc(it.job_id, user_id=user_of(it.env))
        except Exception as exc:
            if is_outage(exc):
                raise
            return self._settle_by(it, Refused(exc, "creating its job"))
        return job

    # -- pieces -----------------------------------------------------------------------------
    def _commit_item(self, it: _Item) -> CommitItem:
        fields = it.result.fields if it.result else {}
        if it.env.part is None:  # the usual message (no part, so no join): built once a message
            return CommitItem(it.job_id, self.stage.name, it.env.id, self.claim_of(it), it.status, fields, it.outbox,
                              None, None, it.delivery.receive_count, it.started_at)
        # a part keeps its fields in its own step, for the join (the parts would overwrite
        # each other's in the job's fields)
        return CommitItem(it.job_id, it.key(self.stage.name), it.env.id, self.claim_of(it), it.status, {},
                          it.outbox, result=dict(fields), join=self._join(it), attempt=it.delivery.receive_count,
                          started_at=it.started_at)

    def _join(self, it: _Item) -> JoinTrigger | None:
        """For a part of a stage that has a join: the join's one message, which the commit
        (or failure) of the last part to finish sends."""
        join = self._join_stage
        if join is None or it.env.part is None or it.env.parts is None:
            return None
        env = Envelope(id=derive_id("join", it.job_id, join.name), task=join.name, job_id=it.job_id,
                       payload={"parts": it.env.parts, "parts_of": self.stage.name}, parent_id=it.env.id,
                       trace_id=it.env.trace_id, created_at=self.backend.clock.now())
        return JoinTrigger(self.stage.name, it.env.parts, OutMessage(kind="queue", target=join.source, id=env.id,
                                                                     body=env.to_json()),
                           allow_failed=join.allow_failed)

    def _won(self, ready: list[_Item], results: Sequence[Doc | Exception]) -> list[_Item]:
        """The items whose commit won; a part sends what its committed step's outbox holds
        (the join's message too, when it was the last part)."""
        won = []
        for it, res in zip(ready, results, strict=True):
            if isinstance(res, Exception):  # refused (StoreError), or its write failed alone
                continue
            if it.env.part is not None:
                it.outbox = [out_message(m) for m in res["steps"][it.key(self.stage.name)]["outbox"]]
            won.append(it)
        return won

    def _finish(self, it: _Item, outcome: Outcome, outcomes: dict[int, Outcome]) -> None:
        # The delivery is settled: stop its heartbeat now, not when the whole batch is done
        # (a beat after the ack would find the message gone and report a lost lease).
        it.lease.stop()
        outcomes[it.index] = outcome

    def _decode(self, it: _Item) -> Outcome | None:
        """Decode into ``it.env``; an ``Outcome`` when the message is settled here."""
        d, st = it.delivery, self.stage
        try:
            env = self._codec.decode(resolve_body(self.backend.objects, d.body))
        except Exception as exc:
            if isinstance(exc, NothingToDo):
                return self._settle_by(it, NothingAsked(str(exc)))
            if isinstance(exc, MalformedMessage):
                return self._settle_by(it, Undecodable(f"malformed message: {exc.reason}", exc.job_id))
            it.error = exc  # the object store behind a claim check is unavailable: retry
            return self._settle_by(it, Unreadable(exc))
        it.env = d.envelope = env
        it.job_id = env.job_id
        if not st.accepts(env.task):
            # Addressed to some other stage or pipeline: not this job's business, so the job
            # is left as it is.
            return self._settle_by(it, Undecodable(f"unknown task {env.task!r} for stage {st.name}"))
        return None

    def claim_of(self, it: _Item) -> str | None:
        """The claim this delivery's writes are conditional on: its receipt on an eager stage;
        elsewhere the receipt once a begin claimed the step with it, else None (the first
        committer wins)."""
        return it.delivery.receipt if self.stage.begin == "eager" else it.claim

    def _backoff(self, d: Delivery) -> float:
        return self.stage.backoff_s(d.receive_count) * (0.8 + 0.4 * self.random.random())

    def _decide(self, it: _Item, outcome: object) -> Action:
        # only a raised error can be released with a backoff: a result needs no random draw
        backoff = self._backoff(it.delivery) if isinstance(outcome, BaseException | Unreadable) else 0.0
        d = it.delivery
        # only a snooze is judged by how long its message has waited (a clock read a message)
        waited = isinstance(outcome, Snooze) and d.first_received_at
        # (positionally, in decide's order: it is asked once a message)
        return decide(outcome, d.receive_count, self.stage.max_receives, it.lease.lost, backoff,
                      max(0.0, self.backend.clock.now() - d.first_received_at) if waited else 0.0,
                      self.stage.max_snooze_s, it.job["status"] if it.job else None)

    def _settle_by(self, it: _Item, situation: object) -> Outcome:
        """Decide on ``situation`` and carry the decision out."""
        return self._act(it, self._decide(it, situation))

    def _run_handler(self, it: _Item) -> Action:
        """Run the handler (unless the attempts are used up) and decide. On ACK the item
        holds the result, its encoded outbox and the status to write."""
        st, d, job = self.stage, it.delivery, it.job
        assert job is not None
        if d.receive_count > st.max_receives:
            # The handler already had max_receives tries and never finished (it killed its
            # process or hung): poison.
            return self._decide(it, NoResult(
                f"gave up after {st.max_receives} attempts without a result (receive {d.receive_count})"))
        # (positional, in its fields' order: a dataclass built with keywords costs twice as much)
        ctx = Context(job, st, it.env, d, self.backend.clock, lambda: it.log, self.backend.objects, it.lease,
                      self._cancel_check(it))
        self.hook("before_handle", ctx)
        it.started_at = self.backend.clock.now()
        started = time.monotonic()
        outcome: object
        try:
            result = st.handler(ctx, it.env) or Result()
            if isinstance(result, Snooze):
                check_fields(result.fields, "snooze fields")
                it.snooze = outcome = result
            elif not isinstance(result, Result):  # a programming error: retrying cannot help
                raise PermanentError(f"handler returned {type(result).__name__}, not Result or Snooze")
            else:
                # what no store could write fails this job, not the batch's shared commit
                check_fields(result.fields)
                it.outbox = outbox.build_outbox(st, self.backend, it.env, result)
                it.result = outcome = result
        except (Exception, SystemExit) as exc:  # (a script's sys.exit(): this step failed, not the worker)
            it.error = outcome = exc
        action = self._decide(it, outcome)
        took = time.monotonic() - started
        self.handler_seconds += took
        self.hook("after_handle", ctx, _LABELS[action.verdict], took)
        if action.verdict == Verdict.ACK:
            it.status = action.status
        return action

    def _cancel_check(self, it: _Item) -> Callable[[], bool]:
        store, job_id = self.backend.store, it.job_id

        def check() -> bool:
            job = store.get_docs([job_id]).get(job_id)
            return job is not None and job["status"] == CANCELLED

        return check

    def _act(self, it: _Item, action: Action) -> Outcome:
        """Carry out a verdict other than ACK for one delivery (ACK is the round's commit)."""
        match action.verdict:
            case Verdict.FAIL | Verdict.DEAD_LETTER:
                return self._fail(it, action.reason, dead_letter=action.verdict == Verdict.DEAD_LETTER)
            case Verdict.RETRY:
                return self._retry_later(it, action)
            case Verdict.SNOOZE:
                return self._snooze(it, action)
            case Verdict.DROP:
                return self._drop(it)
            case Verdict.REPLAY:
                return self._replay(it)
            case Verdict.SKIP:
                return self._skip(it, action.reason)
            case Verdict.REJECT:
                return self._reject(it, action.reason, getattr(action.cause, "job_id", None))
            case Verdict.RELEASE:
                return self._release(it, action.reason)
            case Verdict.REFUSED:
                return self._poisoned(it, action)
            case _:
                return self._discard(it, action.reason)

    def _skip(self, it: _Item, reason: str) -> Outcome:
        self.backend.transport.ack(it.delivery)
        it.log.info("nothing to do; message acked", reason=reason)
        return Outcome.SKIPPED

    def _release(self, it: _Item, reason: str) -> Outcome:
        self.backend.transport.release(it.delivery, 0)
        self._note(it, "released", reason)
        return Outcome.RELEASED

    def _retry_later(self, it: _Item, action: Action) -> Outcome:
        """Keep the failed attempt's exception on the step and a ``retried`` entry in the
        history, then hand the message back for ``action.delay_s``. A crash between the two
        leaves the message to come back after its visibility timeout: a later retry, no loss."""
        d, error = it.delivery, it.error or RuntimeError(action.reason)
        if it.job is not None:  # None: released before its job was looked up (a claim check unreadable)
            try:
                self.backend.store.retried(it.job_id, stage=it.key(self.stage.name), message_id=it.env.id,
                                           claim=self.claim_of(it), delay_s=action.delay_s,
                                           error=step_error(error, d.receive_count, self.backend.clock.now()))
            except ConflictError as exc:  # (JobCancelled too) the write's refusal is decided on
                return self._settle_by(it, exc)
            except JobNotFound:  # purged meanwhile: the message comes back as an unknown job's
                it.log.warning("job gone; retry not recorded")
        self.backend.transport.release(d, action.delay_s)
        self.hook("on_retry", self.stage, d, error, action.delay_s)
        return Outcome.RETRIED

    def _note(self, it: _Item, event: str, reason: str) -> None:
        """Best effort: a history entry for what happened to this attempt (the outcome stands
        without it, so a store that cannot take it now is only logged)."""
        if it.job is None:
            return
        try:
            self.backend.store.note(it.job_id, event=event, stage=it.key(self.stage.name), message_id=it.env.id,
                                    reason=reason)
        except Exception as exc:
            it.log.warning("history entry not written", history_event=event, error=error_text(exc))

    def _drop(self, it: _Item) -> Outcome:
        """The job is CANCELLED: the message has nothing left to do (and a committed step's
        outbox is not replayed: nothing is emitted for a cancelled job)."""
        self.backend.transport.ack(it.delivery)
        it.log.info("job cancelled; message dropped")
        return Outcome.CANCELLED

    def _replay(self, it: _Item) -> Outcome:
        """Settle the delivery by the recorded outcome of its finished step."""
        assert it.job is not None
        step = it.job["steps"][it.key(self.stage.name)]
        transport, d = self.backend.transport, it.delivery
        # Where commit and emit are one transaction, the outbox went out with the step's
        # record; elsewhere a crash may have come between them: it is sent again with the same
        # ids (downstream steps recognise them). A failed last part's outbox is the join's.
        if step["outbox"] and not self.backend.transactional:
            outbox.emit(self.backend, [([out_message(m) for m in step["outbox"]], it.job_id)])
        if step["state"] == "committed":
            if step["message_id"] != it.env.id:
                it.log.info("step already committed for another message; treating as duplicate",
                            committed_by=step["message_id"])
            transport.ack(d)
            it.log.info("duplicate delivery; recorded outcome replayed")
            return Outcome.DUPLICATE
        if step["dead_letter"]:
            transport.dead_letter(d, step["reason"] or "failed")
            return Outcome.DEAD_LETTERED
        transport.ack(d)
        return Outcome.FAILED

    def _fail(self, it: _Item, reason: str, *, dead_letter: bool, begun: bool = True,
              error: BaseException | None = None) -> Outcome:
        st, transport, d = self.stage, self.backend.transport, it.delivery
        reason = storable_text(reason)  # it may quote what the handler raised
        error = error or it.error
        failure = step_error(error, d.receive_count, self.backend.clock.now()) if error is not None else None

        try:
            with self.backend.unit():
                rec = self.backend.store.fail(it.job_id, stage=it.key(st.name), message_id=it.env.id,
                                              claim=self.claim_of(it) if begun else None, reason=reason,
                                              dead_letter=dead_letter, error=failure, join=self._join(it))
                self._check("after_commit", [it])
                step = rec.steps[it.key(st.name)]
                if step.outbox:  # the last part of a join that takes failures: the join's message
                    outbox.emit(self.backend, [(step.outbox, it.job_id)])
                if dead_letter:
                    transport.dead_letter(d, reason)
                else:
                    transport.ack(d)
        except ConflictError as exc:  # (JobCancelled too) the write's refusal is decided on
            return self._settle_by(it, exc)
        if error is not None:  # the whole story once, with the traceback
            it.log.error("handler failed for good", reason=reason, exception=exception_text(error))
        if dead_letter:
            self.hook("on_dead_letter", st, d, reason)
        elif error is None:
            it.log.error("job step failed", reason=reason)
        return Outcome.DEAD_LETTERED if dead_letter else Outcome.FAILED

    def _snooze(self, it: _Item, action: Action) -> Outcome:
        """Record the snooze in the job's history, then hand the message back to the queue
        for ``action.delay_s`` without using an attempt. A crash between the two leaves the
        message to come back after its visibility timeout: a shorter wait, never a loss."""
        st, transport, d = self.stage, self.backend.transport, it.delivery
        until = self.backend.clock.now() + action.delay_s
        reason = storable_text(action.reason)

        try:
            with self.backend.unit():
                self.backend.store.snooze(it.job_id, stage=it.key(st.name), message_id=it.env.id,
                                          claim=self.claim_of(it), reason=reason, until=until,
                                          fields=it.snooze.fields if it.snooze is not None else None)
                self._check("after_commit", [it])
                it.lease.stop()  # a beat after the snooze would find the receipt gone
                transport.snooze(d, action.delay_s)
        except ConflictError as exc:  # (JobCancelled too) the write's refusal is decided on
            return self._settle_by(it, exc)
        it.log.info("snoozed", seconds=action.delay_s, reason=reason)
        self.hook("on_snooze", st, d, action.delay_s, reason)
        return Outcome.SNOOZED

    def _reject(self, it: _Item, reason: str, job_id: str | None) -> Outcome:
        """Dead-letter a message this stage cannot take; fail its job if there is one."""
        store, st, d = self.backend.store, self.stage, it.delivery
        reason = storable_text(reason)

        with self.backend.unit():
            if job_id and store.get(job_id) is not None:
                # ConflictError: an earlier copy of this message already recorded the rejection
                with contextlib.suppress(ConflictError):
                    store.fail(job_id, stage=_rejected_step(st.name), message_id=d.message_id, claim=None,
                               reason=reason, dead_letter=True)
            self.backend.transport.dead_letter(d, reason)
        self.hook("on_dead_letter", st, d, reason)
        return Outcome.DEAD_LETTERED

    def _discard(self, it: _Item, why: str) -> Outcome:
        it.log.warning("result discarded", why=why)
        if it.lease.lost:
            self._note(it, "lease_lost", f"attempt {it.delivery.receive_count}: {why}")
        return Outcome.DISCARDED

    def _emit(self, items: Sequence[_Item]) -> None:
        outbox.emit(self.backend, [(it.outbox, it.job_id) for it in items],
                    on_emit=lambda m: self.hook("on_emit", self.stage, m))


#: the verdicts after a handler that write its step (a deferred stage begins the step first)
_RECORDED_ON_THE_STEP = frozenset({Verdict.FAIL, Verdict.DEAD_LETTER, Verdict.RETRY, Verdict.SNOOZE})

#: what ``after_handle`` hooks are told of a handler's outcome (the verdicts that follow a
#: handler; the rest are settled before one runs)
_LABELS = {Verdict.ACK: "handled", Verdict.FAIL: "failed", Verdict.DEAD_LETTER: "dead_lettered",
           Verdict.RETRY: "retried", Verdict.DISCARD: "discarded", Verdict.SNOOZE: "snoozed",
           Verdict.DROP: "cancelled", **{v: v.value for v in (Verdict.REPLAY, Verdict.SKIP, Verdict.REJECT,
                                                           Verdict.RELEASE, Verdict.REFUSED)}}


def step_error(exc: BaseException, attempt: int, now: float) -> dict[str, Any]:
    """A ``StepError`` (as a dict) for ``exc``: its type, message and the last
    ``MAX_TRACEBACK_CHARS`` of its traceback, as text every store can hold."""
    tb = "".join(traceback.format_exception(exc))
    if len(tb) > MAX_TRACEBACK_CHARS:
        tb = "...\n" + tb[-MAX_TRACEBACK_CHARS:]
    return {"type": type(exc).__name__, "message": storable_text(exc),
            "traceback": storable_text(tb, None), "attempt": attempt, "at": now}


def kept_input(body: str) -> str | None:
    """The input body a step record keeps for the sweeper, if it is small enough."""
    return body if len(body) <= MAX_KEPT_INPUT_BYTES else None


def _in_order(items: Sequence[_Item], found: dict[str, Doc]) -> list[Doc | None]:
    return [found.get(it.job_id) for it in items]
