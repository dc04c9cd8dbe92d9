"""The commit protocol for one delivery: decode, lookup, begin, handle, commit, emit, ack.

``Controller.process`` is a generator that yields the name of each crash point it passes,
so a deterministic simulation can interleave several deliveries step by step; the worker
runtime simply drives it to the end (``Controller.handle``). Crashes come from the
``FaultPlan`` *before* each yield.

Every branch answers "what if the process dies right here?": the queue redelivers after
the visibility timeout and the step record in the status store says how far we got.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Generator, Iterator
from enum import StrEnum
from typing import Any

import structlog

from orchestrator.backends import Backend
from orchestrator.base import Delivery, Outgoing
from orchestrator.controllers.faults import FaultPlan
from orchestrator.controllers.lease import Lease
from orchestrator.envelope import Envelope
from orchestrator.errors import ConflictError, InvalidTransition, MalformedMessage, PermanentError, RecordTooLarge
from orchestrator.middleware import LoggingMiddleware, Middleware, call_hooks
from orchestrator.objects.claim_check import offload_body, resolve_body
from orchestrator.pipeline import Context, Emit, Pipeline, Result, Stage
from orchestrator.status import JobRecord, JobStatus, OutMessage
from orchestrator.transports.common import sns_wrapped_bytes

Steps = Generator[str, None, "Outcome"]

# Outbox bodies above this go by claim check when the stage allows it, keeping job records
# small; step records keep their input for the sweeper only up to MAX_KEPT_INPUT_BYTES.
INLINE_OUTBOX_BYTES = 64 * 1024
MAX_KEPT_INPUT_BYTES = 16 * 1024


class Outcome(StrEnum):
    COMMITTED = "committed"  # handler ran, step committed, outbox emitted, message acked
    DUPLICATE = "duplicate"  # step was finished already: outcome replayed, message acked
    SKIPPED = "skipped"  # job FAILED elsewhere: nothing to do, message acked
    FAILED = "failed"  # PermanentError: job FAILED, message acked
    RETRIED = "retried"  # transient error: message released with backoff
    DEAD_LETTERED = "dead_lettered"  # malformed, unknown, or out of attempts
    DISCARDED = "discarded"  # our lease was lost: result thrown away, message left alone
    RELEASED = "released"  # never started (the worker is stopping): visible again at once


def _rejected_step(stage: str) -> str:
    # Misrouted or undecodable messages are recorded under their own step key, so they can
    # never mark the stage's real step as failed.
    return f"{stage}!rejected"


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
        self.stage = stage if isinstance(stage, Stage) else pipeline.get(stage)
        self.backend = backend
        self.faults = faults
        self.random = random.Random(seed)
        self.worker_id = worker_id or uuid.uuid4().hex[:8]
        self.log = structlog.get_logger("orchestrator.controller").bind(stage=self.stage.name, worker=self.worker_id)

    # -- entry points -----------------------------------------------------------------------
    def lease(self, delivery: Delivery) -> Lease:
        st = self.stage
        return Lease(self.backend.transport, delivery, self.backend.clock,
                     visibility_s=st.visibility_timeout, time_limit_s=st.time_limit_s,
                     on_extend=lambda d: self.hook("on_lease_extended", st, d),
                     on_lost=lambda d: self.hook("on_lease_lost", st, d))

    def hook(self, name: str, *args: object) -> None:
        if self.middleware:
            call_hooks(self.middleware, name, *args)

    def handle(self, delivery: Delivery, lease: Lease | None = None) -> Outcome:
        """Run the whole protocol for one delivery (the worker's path)."""
        own = lease is None
        lease = lease or self.lease(delivery)
        gen = self.process(delivery, lease)
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            if own:
                lease.stop()

    def _crash(self, point: str, d: Delivery, job_id: str | None, message_id: str | None = None) -> Iterator[str]:
        if self.faults is not None:
            self.faults.check(point, stage=self.stage.name, job_id=job_id,
                              message_id=message_id or d.message_id, attempt=d.receive_count)
        yield point

    # -- the protocol -----------------------------------------------------------------------
    def process(self, d: Delivery, lease: Lease) -> Steps:
        st, store, atomic = self.stage, self.backend.store, self.backend.atomic is not None
        log = self.log.bind(message_id=d.message_id, attempt=d.receive_count)
        yield from self._crash("after_receive", d, None)

        # 1. decode
        try:
            env = self.decode(d)
        except MalformedMessage as exc:
            return self._reject(d, f"malformed message: {exc.reason}", exc.job_id, log)
        d.envelope = env
        log = log.bind(job_id=env.job_id, message_id=env.id)
        if not st.accepts(env.task):
            return self._reject(d, f"unknown task {env.task!r} for stage {st.name}", env.job_id, log)

        # 2. lookup
        job = store.get(env.job_id)
        if job is None:  # a message for a job nobody created (plain producers): adopt it
            job, _ = store.create(env.job_id, user_id=_user_of(env))
        replayed = self._replay(job, d, env, log)
        if replayed is not None:
            return replayed

        # 3. begin: claim the step with this delivery's receipt (lease fencing)
        if st.claim == "eager":
            try:
                job = store.begin_step(env.job_id, stage=st.name, message_id=env.id, claim=d.receipt,
                                       attempt=d.receive_count, input_body=kept_input(d.body), source=st.source)
            except ConflictError as exc:
                assert exc.current is not None
                replayed = self._replay(exc.current, d, env, log)
                # Not finished but not ours either: a newer delivery holds the step.
                return replayed if replayed is not None else self._discard(log, "a newer delivery holds the step")
        yield from self._crash("after_begin", d, env.job_id, env.id)

        if d.receive_count > st.max_receives:
            # The handler already had max_receives tries and never finished (it killed its
            # process or hung): poison.
            reason = f"gave up after {st.max_receives} attempts without a result (receive {d.receive_count})"
            return self._fail(d, env, reason, dead_letter=True, log=log)

        # 4. handle
        ran = self._run_handler(d, env, job, lease, log)
        if isinstance(ran, Outcome):
            return ran
        result, outbox, status = ran
        yield from self._crash("after_handle", d, env.job_id, env.id)
        if lease.lost:
            return self._discard(log, "lease lost during handling")

        # 5-7. commit, emit, ack
        def commit() -> JobRecord:
            return store.commit_step(env.job_id, stage=st.name, message_id=env.id, claim=self.claim_of(d),
                                     status=status, fields=result.fields, outbox=outbox)

        try:
            if atomic:
                # Same database for queue and store: one transaction, no replay ever needed.
                # A crash anywhere inside rolls all three back.
                def unit() -> None:
                    commit()
                    self._check(d, "after_commit", env)
                    self._emit(outbox, env.job_id)
                    self._check(d, "after_emit", env)
                    self.backend.transport.ack(d)

                self.backend.run_atomic(unit)
            else:
                commit()
                yield from self._crash("after_commit", d, env.job_id, env.id)
                self._emit(outbox, env.job_id)
                yield from self._crash("after_emit", d, env.job_id, env.id)
                self.backend.transport.ack(d)
        except ConflictError as exc:
            # A stale lease: someone else claimed or committed this step first. Our result
            # is discarded; the current holder finishes (or has finished) the job.
            log.warning("commit lost; result discarded", reason=str(exc))
            return Outcome.DISCARDED
        except InvalidTransition as exc:
            return self._fail(d, env, f"handler asked for an invalid status change: {exc}", dead_letter=True, log=log)
        except RecordTooLarge as exc:
            return self._fail(d, env, str(exc), dead_letter=False, log=log)
        yield from self._crash("after_ack", d, env.job_id, env.id)
        self.hook("on_commit", st, d)
        return Outcome.COMMITTED

    # -- pieces -----------------------------------------------------------------------------
    def claim_of(self, d: Delivery) -> str | None:
        """The claim this delivery's writes are conditional on (None for a lazy stage)."""
        return d.receipt if self.stage.claim == "eager" else None

    def _run_handler(
        self, d: Delivery, env: Envelope, job: JobRecord, lease: Lease, log: Any
    ) -> Outcome | tuple[Result, list[OutMessage], JobStatus | None]:
        """Run the handler; an ``Outcome`` when the delivery is finished here (failed,
        retried, discarded), else the result, its encoded outbox and the status to write."""
        st = self.stage
        ctx = Context(job=job, stage=st, envelope=env, delivery=d, clock=self.backend.clock,
                      log=log, objects=self.backend.objects, lease=lease)
        self.hook("before_handle", ctx)
        started = time.monotonic()
        outcome = self._call_handler(ctx, d, env, lease, log)
        label = outcome.value if isinstance(outcome, Outcome) else "handled"
        self.hook("after_handle", ctx, label, time.monotonic() - started)
        return outcome

    def _call_handler(
        self, ctx: Context, d: Delivery, env: Envelope, lease: Lease, log: Any
    ) -> Outcome | tuple[Result, list[OutMessage], JobStatus | None]:
        st, job = self.stage, ctx.job
        try:
            result = st.handler(ctx, env) or Result()
            if not isinstance(result, Result):
                raise PermanentError(f"handler returned {type(result).__name__}, not Result")
            outbox = self._outbox(env, result)
        except PermanentError as exc:
            if lease.lost:
                return self._discard(log, "permanent error after lease lost")
            return self._fail(d, env, str(exc) or type(exc).__name__, dead_letter=False, log=log)
        except Exception as exc:
            if lease.lost:
                return self._discard(log, "error after lease lost")
            reason = f"{type(exc).__name__}: {exc}"
            if d.receive_count >= st.max_receives:
                return self._fail(d, env, f"{reason} (attempt {d.receive_count} of {st.max_receives})",
                                  dead_letter=True, log=log)
            delay = st.backoff_s(d.receive_count) * (0.8 + 0.4 * self.random.random())
            self.backend.transport.release(d, delay)
            self.hook("on_retry", st, d, exc, delay)
            return Outcome.RETRIED
        status = result.status
        if status is not None and job.status.terminal and status != job.status:
            log.info("post-completion stage asked for a status change; keeping", status=job.status.value,
                     requested=status.value)
            status = None
        return result, outbox, status

    def _check(self, d: Delivery, point: str, env: Envelope) -> None:
        self._check_point(d, point, env.job_id, env.id)

    def _check_point(self, d: Delivery, point: str, job_id: str | None, message_id: str) -> None:
        for _ in self._crash(point, d, job_id, message_id):
            pass

    def _replay(self, job: JobRecord, d: Delivery, env: Envelope, log: Any) -> Outcome | None:
        """If this stage's step is finished, replay its recorded outcome and ack."""
        step = job.steps.get(self.stage.name)
        transport = self.backend.transport
        if step is not None and step.state == "committed":
            if step.message_id != env.id:
                log.info("step already committed for another message; treating as duplicate",
                         committed_by=step.message_id)

            def redo() -> None:
                self._emit(step.outbox, env.job_id)  # same ids: downstream sees duplicates only
                transport.ack(d)

            self.backend.run_atomic(redo)
            log.info("duplicate delivery; outbox re-emitted")
            return Outcome.DUPLICATE
        if step is not None and step.state == "failed":
            if step.dead_letter:
                transport.dead_letter(d, step.reason or "failed")
                return Outcome.DEAD_LETTERED
            transport.ack(d)
            return Outcome.FAILED
        if job.status.value == "FAILED":
            log.info("job already FAILED; message dropped", reason=_last_reason(job))
            transport.ack(d)
            return Outcome.SKIPPED
        return None

    def _fail(self, d: Delivery, env: Envelope, reason: str, *, dead_letter: bool, log: Any) -> Outcome:
        st, transport = self.stage, self.backend.transport

        def unit() -> None:
            self.backend.store.fail(env.job_id, stage=st.name, message_id=env.id, claim=self.claim_of(d),
                                    reason=reason, dead_letter=dead_letter)
            self._check(d, "after_commit", env)
            if dead_letter:
                transport.dead_letter(d, reason)
            else:
                transport.ack(d)

        try:
            self.backend.run_atomic(unit)
        except ConflictError as exc:
            log.warning("failure not recorded: step no longer ours", reason=str(exc))
            return Outcome.DISCARDED
        if dead_letter:
            self.hook("on_dead_letter", st, d, reason)
        else:
            log.error("job step failed", reason=reason)
        return Outcome.DEAD_LETTERED if dead_letter else Outcome.FAILED

    def _reject(self, d: Delivery, reason: str, job_id: str | None, log: Any) -> Outcome:
        """Dead-letter a message this stage cannot take; fail its job if there is one."""
        store, st = self.backend.store, self.stage

        def unit() -> None:
            if job_id and store.get(job_id) is not None:
                # ConflictError: an earlier copy of this message already recorded the rejection
                with contextlib.suppress(ConflictError):
                    store.fail(job_id, stage=_rejected_step(st.name), message_id=d.message_id, claim=None,
                               reason=reason, dead_letter=True)
            self.backend.transport.dead_letter(d, reason)

        self.backend.run_atomic(unit)
        self.hook("on_dead_letter", st, d, reason)
        return Outcome.DEAD_LETTERED

    def _discard(self, log: Any, why: str) -> Outcome:
        log.warning("result discarded", why=why)
        return Outcome.DISCARDED

    def _outbox(self, env: Envelope, result: Result) -> list[OutMessage]:
        st, now, out = self.stage, self.backend.clock.now(), []
        for i, item in enumerate(result.emit):
            em = item if isinstance(item, Emit) else Emit(payload=dict(item))
            topic = em.topic if em.topic is not None else (None if em.to else st.publish_to)
            queue = em.to if em.to is not None else (None if em.topic else st.emit_to)
            target = topic or queue
            if target is None:
                raise PermanentError(f"stage {st.name} emitted a message but has no emit_to/publish_to")
            child = env.child(stage=st.name, index=i, task=em.task or target, payload=em.payload, now=now)
            plain = em.plain if em.plain is not None else st.emit_format == "plain"
            body = self._fit(_plain_body(child) if plain else child.to_json(), child.id, via_topic=topic is not None)
            out.append(OutMessage(kind="topic" if topic else "queue", target=target, id=child.id, body=body))
        return out

    def _fit(self, body: str, message_id: str, *, via_topic: bool = False) -> str:
        """Check an emitted body's size before it is committed (after the commit it could
        only fail forever). A topic's wrapped subscribers receive the body escaped inside an
        SNS notification, so a published body is measured as that (subscriptions may change
        after the commit). With ``offload_large_bodies`` a large body goes to the object
        store and the outbox keeps a claim-check pointer: small on the queue and in the job
        record (DynamoDB items stop at 400 KB)."""
        st, objects = self.stage, self.backend.objects
        size = len(body.encode())
        wire = sns_wrapped_bytes(body) if via_topic else size
        limit = self.backend.transport.max_body_bytes
        if st.offload_large_bodies and objects is not None and (size > INLINE_OUTBOX_BYTES or wire > limit):
            return offload_body(objects, message_id, body)
        if wire > limit:
            as_sent = f" ({wire} bytes as an SNS notification)" if via_topic else ""
            raise PermanentError(f"stage {st.name} emitted a {size}-byte message{as_sent}, over the queue's "
                                 f"{limit}-byte limit (enable offload_large_bodies to send it by claim check)")
        return body

    def decode(self, d: Delivery) -> Envelope:
        """The delivery's envelope, fetching a claim-checked body from the object store."""
        return self.stage.codec.decode(resolve_body(self.backend.objects, d.body))

    def _emit(self, outbox: list[OutMessage], job_id: str) -> None:
        self._emit_many([(outbox, job_id)])

    def _emit_many(self, outboxes: list[tuple[list[OutMessage], str]]) -> None:
        """Send every outbox message: one batch per target queue and one per topic."""
        by_queue: dict[str, list[Outgoing]] = defaultdict(list)
        by_topic: dict[str, list[Outgoing]] = defaultdict(list)
        for outbox, job_id in outboxes:
            for m in outbox:
                self.hook("on_emit", self.stage, m)
                (by_topic if m.kind == "topic" else by_queue)[m.target].append(
                    Outgoing(body=m.body, message_id=m.id, group_id=job_id))
        for topic, items in by_topic.items():
            self.backend.topic.publish_batch(topic, items)
        for queue, items in by_queue.items():
            self.backend.transport.send_batch(queue, items)


def kept_input(body: str) -> str | None:
    """The input body a step record keeps for the sweeper, if it is small enough."""
    return body if len(body) <= MAX_KEPT_INPUT_BYTES else None


def _plain_body(env: Envelope) -> str:
    import json

    doc: dict[str, Any] = {"job_id": env.job_id}
    doc.update(env.payload)
    return json.dumps(doc, default=str)


def _user_of(env: Envelope) -> str | None:
    user = env.payload.get("user_id")
    return str(user) if user is not None else None


def _last_reason(job: JobRecord) -> str | None:
    for h in reversed(job.history):
        if h.reason:
            return h.reason
    return None
