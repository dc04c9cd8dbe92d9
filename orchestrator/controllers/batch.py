"""The commit protocol for a whole received batch: the worker's hot path.

Same steps and the same order per message as ``Controller.process`` — decode, lookup,
begin, handle, commit, emit, ack — but each store and queue step is done for the batch at
once: one lookup (``get_many``), one ``begin_steps``, one ``commit_steps``, one send per
target queue, one ``ack_batch``. On the SQLite default the commit, emit and ack of the batch
are one transaction; on DynamoDB the begins and commits are each one transaction when nothing
conflicts. A crash point fires for every message of the batch at each phase boundary: a crash
loses the whole batch's in-memory state, as a dead process would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.base import Delivery
from orchestrator.controllers.controller import Controller, Outcome, _user_of, kept_input
from orchestrator.controllers.lease import Lease
from orchestrator.envelope import Envelope
from orchestrator.errors import ConflictError, InvalidTransition, MalformedMessage, RecordTooLarge, StoreError
from orchestrator.pipeline import Result
from orchestrator.status import BeginItem, CommitItem, JobRecord, JobStatus, OutMessage


@dataclass
class _Item:
    index: int
    delivery: Delivery
    lease: Lease
    env: Envelope
    log: Any
    job: JobRecord | None = None
    result: Result | None = None
    outbox: list[OutMessage] | None = None
    status: JobStatus | None = None


def handle_batch(
    ctrl: Controller,
    batch: list[tuple[Delivery, Lease]],
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[Outcome]:
    st, backend = ctrl.stage, ctrl.backend
    store, transport = backend.store, backend.transport
    outcomes: dict[int, Outcome] = {}

    for d, _ in batch:
        ctrl._check_point(d, "after_receive", None, d.message_id)

    # 1. decode
    items: list[_Item] = []
    for n, (d, lease) in enumerate(batch):
        log = ctrl.log.bind(message_id=d.message_id, attempt=d.receive_count)
        try:
            env = ctrl.decode(d)
        except MalformedMessage as exc:
            outcomes[n] = ctrl._reject(d, f"malformed message: {exc.reason}", exc.job_id, log)
            continue
        d.envelope = env
        log = log.bind(job_id=env.job_id, message_id=env.id)
        if not st.accepts(env.task):
            outcomes[n] = ctrl._reject(d, f"unknown task {env.task!r} for stage {st.name}", env.job_id, log)
            continue
        items.append(_Item(n, d, lease, env, log))

    # 2. lookup
    jobs = store.get_many([it.env.job_id for it in items])
    live: list[_Item] = []
    for it in items:
        job = jobs.get(it.env.job_id)
        if job is None:
            job, _ = store.create(it.env.job_id, user_id=_user_of(it.env))
            jobs[job.job_id] = job
        replayed = ctrl._replay(job, it.delivery, it.env, it.log)
        if replayed is not None:
            outcomes[it.index] = replayed
            # a replay may have written nothing, but the next item of the same job must re-read
            jobs.pop(job.job_id, None)
        else:
            live.append(it)

    # 3. begin (a lazy stage writes none: its commit records the step)
    started: list[_Item] = []
    if st.claim == "lazy":
        for it in live:
            it.job = jobs[it.env.job_id]
        started = live
        begun: list[JobRecord | StoreError] = []
    else:
        begun = store.begin_steps(
            [BeginItem(it.env.job_id, st.name, it.env.id, it.delivery.receipt, it.delivery.receive_count,
                       kept_input(it.delivery.body), st.source) for it in live], known=jobs)
    for it, res in zip(live if begun else [], begun, strict=True):
        if isinstance(res, StoreError):
            current = res.current if isinstance(res, ConflictError) else None
            replayed = ctrl._replay(current, it.delivery, it.env, it.log) if current is not None else None
            outcomes[it.index] = replayed if replayed is not None else ctrl._discard(it.log, f"begin refused: {res}")
            continue
        it.job = jobs[it.env.job_id] = res
        started.append(it)
    for it in started:
        ctrl._check_point(it.delivery, "after_begin", it.env.job_id, it.env.id)

    # 4. handle, one by one
    handled: list[_Item] = []
    for it in started:
        d = it.delivery
        if should_stop():  # never started: make it visible again at once
            transport.release(d, 0)
            outcomes[it.index] = Outcome.RELEASED
            continue
        if d.receive_count > st.max_receives:
            reason = f"gave up after {st.max_receives} attempts without a result (receive {d.receive_count})"
            outcomes[it.index] = ctrl._fail(d, it.env, reason, dead_letter=True, log=it.log)
            continue
        assert it.job is not None
        ran = ctrl._run_handler(d, it.env, it.job, it.lease, it.log)
        if isinstance(ran, Outcome):
            outcomes[it.index] = ran
            continue
        it.result, it.outbox, it.status = ran
        handled.append(it)
    for it in handled:
        ctrl._check_point(it.delivery, "after_handle", it.env.job_id, it.env.id)
    ready = []
    for it in handled:
        if it.lease.lost:
            outcomes[it.index] = ctrl._discard(it.log, "lease lost during handling")
        else:
            ready.append(it)

    # 5-7. commit, emit, ack
    def unit() -> list[JobRecord | StoreError]:
        results = store.commit_steps(
            [CommitItem(it.env.job_id, st.name, it.env.id, ctrl.claim_of(it.delivery), it.status,
                        it.result.fields if it.result else {}, it.outbox or []) for it in ready],
            known=jobs)
        won = [it for it, r in zip(ready, results, strict=True) if not isinstance(r, StoreError)]
        for it in won:
            ctrl._check_point(it.delivery, "after_commit", it.env.job_id, it.env.id)
        ctrl._emit_many([(it.outbox or [], it.env.job_id) for it in won])
        for it in won:
            ctrl._check_point(it.delivery, "after_emit", it.env.job_id, it.env.id)
        if won:
            transport.ack_batch([it.delivery for it in won])
        return results

    results = backend.run_atomic(unit) if ready else []
    for it, res in zip(ready, results, strict=True):
        if isinstance(res, InvalidTransition):
            outcomes[it.index] = ctrl._fail(it.delivery, it.env, f"handler asked for an invalid status change: {res}",
                                            dead_letter=True, log=it.log)
        elif isinstance(res, RecordTooLarge):
            outcomes[it.index] = ctrl._fail(it.delivery, it.env, str(res), dead_letter=False, log=it.log)
        elif isinstance(res, StoreError):
            it.log.warning("commit lost; result discarded", reason=str(res))
            outcomes[it.index] = Outcome.DISCARDED
        else:
            ctrl._check_point(it.delivery, "after_ack", it.env.job_id, it.env.id)
            ctrl.hook("on_commit", st, it.delivery)
            outcomes[it.index] = Outcome.COMMITTED
    return [outcomes[n] for n in range(len(batch))]

