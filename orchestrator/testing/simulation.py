"""Deterministic simulation of a pipeline on a ``SimClock``: on the in-memory backend, or on
any backend given (SQLite, PostgreSQL) whose transport can say when its next message is due.

One seeded random source picks, step by step, what happens next: a controller receives, an
in-flight delivery advances to its next crash point, time passes, or a controller stalls
(its heartbeat stops, as in a long GC pause). A ``FaultPlan`` crashes deliveries at named
points. ``check_invariants`` then reports what a correct controller must never do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.backends import Backend, memory_backend
from orchestrator.base import Delivery, Transport
from orchestrator.clock import SimClock
from orchestrator.controllers.controller import Controller, Outcome, Steps
from orchestrator.controllers.faults import FaultPlan
from orchestrator.controllers.lease import Lease
from orchestrator.envelope import Envelope
from orchestrator.errors import (
    ConfigError,
    InvalidTransition,
    MalformedMessage,
    PermanentError,
    RetryImpossible,
    SimulatedCrash,
)
from orchestrator.kinds import seconds, whole
from orchestrator.pipeline import Context, Pipeline, Result, Snooze, Stage
from orchestrator.status import ALLOWED, WAYS_BACK, JobStatus
from orchestrator.testing.chaos import ChaosOdds, chaos_backend
from orchestrator.transports.common import DEAD_LETTER_REASON

DEFAULT_MAX_STEPS = 200_000


class SimulatedTransport(Transport, Protocol):
    def next_visible_at(self, queue: str) -> float | None: ...


class SimulationStuck(AssertionError):
    """The simulation did not become idle within its step budget."""


@dataclass
class _Flight:
    """A received batch on its way through the protocol, one crash point per step."""

    controller: Controller
    deliveries: list[Delivery]
    leases: list[Lease]
    steps: Steps
    stalled: bool = False

    def pause(self, paused: bool) -> None:
        self.stalled = paused
        for lease in self.leases:
            lease.pause(paused)

    def stop(self) -> None:
        for lease in self.leases:
            lease.stop()


@dataclass
class Report:
    lost: list[str] = field(default_factory=list)
    committed_twice: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    poison_over_limit: list[str] = field(default_factory=list)
    outbox_never_emitted: list[str] = field(default_factory=list)
    #: a step begun, committed, failed or snoozed after the job was CANCELLED
    written_after_cancel: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.committed_twice or self.regressions or self.poison_over_limit
                    or self.outbox_never_emitted or self.written_after_cancel)

    def __str__(self) -> str:
        parts = [f"{name}: {vals}" for name, vals in dataclasses.asdict(self).items() if vals]
        return "; ".join(parts) or "all invariants hold"


def _check_settings(controllers_per_stage: object, **odds: object) -> None:
    """``ConfigError`` for odds outside 0..1 (NaN never fires) or no controllers (every message
    would wait unhandled and the run would look stuck)."""
    problems = [f"{name} must be a probability 0..1, got {p!r}" for name, p in odds.items()
                if not (seconds(p) and p <= 1)]  # (a finite number >= 0, as seconds are)
    if not whole(controllers_per_stage, 1):
        problems.append(f"controllers_per_stage must be a whole number >= 1, got {controllers_per_stage!r}")
    if problems:
        raise ConfigError("simulation: " + "; ".join(problems))


class Simulation:
    def __init__(
        self,
        pipeline: Pipeline,
        *,
        seed: int = 0,
        faults: FaultPlan | None = None,
        controllers_per_stage: int = 2,
        stall_probability: float = 0.0,
        cancel_probability: float = 0.0,
        retry_probability: float = 0.0,
        tick_probability: float = 0.05,
        batch_probability: float = 0.0,
        fail_fast: bool = False,
        clock: SimClock | None = None,
        chaos: ChaosOdds | None = None,
        backend: Backend | None = None,
    ) -> None:
        _check_settings(controllers_per_stage, stall_probability=stall_probability,
                        cancel_probability=cancel_probability, retry_probability=retry_probability,
                        tick_probability=tick_probability, batch_probability=batch_probability)
        self.random = random.Random(seed)
        if backend is not None:
            if not isinstance(backend.clock, SimClock) or not hasattr(backend.transport, "next_visible_at"):
                raise ValueError("a simulated backend needs a SimClock and a transport with next_visible_at")
            clock = backend.clock
        self.clock = clock or SimClock()
        # the backend the checks read (named for its default)
        self.memory: Backend = backend or memory_backend(self.clock)
        # With chaos, controllers see a misbehaving transport and store; the checks read the
        # real ones underneath.
        self.backend: Backend = chaos_backend(self.memory, seed=seed, odds=chaos) if chaos else self.memory
        self.faults = faults
        self.stall_probability = stall_probability
        #: odds per step that an operator cancels a random job, or retries a random FAILED one
        self.cancel_probability = cancel_probability
        self.retry_probability = retry_probability
        self.cancels: list[str] = []  # jobs cancelled (by this simulation's operator)
        self.retries: list[str] = []  # jobs retried
        self.tick_probability = tick_probability
        # share of receives processed as one batch; the others are split into batches of one
        self.batch_probability = batch_probability
        self.fail_fast = fail_fast
        #: (job_id, step) -> calls; a step is a stage, or a part of one (``stage#i``)
        self.handler_calls: Counter[tuple[str, str]] = Counter()
        self.snoozes: Counter[tuple[str, str]] = Counter()  # (job_id, step) -> calls that snoozed
        self.handler_errors: list[BaseException] = []
        self.received: set[tuple[str, str]] = set()  # (queue, message id) ever received
        self.crashes: list[tuple[str, str]] = []
        self.stalled_jobs: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.submitted: list[str] = []
        self.pipeline = self._instrument(pipeline)
        self.pipeline.setup(self.memory)
        self.controllers = {
            name: [Controller(self.pipeline, name, self.backend, faults=faults, seed=self.random.randrange(2**32),
                              worker_id=f"{name}-{i}") for i in range(controllers_per_stage)]
            for name in self.pipeline.stages
        }
        self.flights: list[_Flight] = []
        self.schedule: Any = None  # the strategies' Schedule this run was made with, if any

    @property
    def transport(self) -> SimulatedTransport:
        return self.memory.transport  # type: ignore[return-value]  # checked in __init__

    def _instrument(self, pipeline: Pipeline) -> Pipeline:
        """A copy of the pipeline whose handlers count their calls and record errors."""
        copy = Pipeline(pipeline.name, middleware=pipeline.middleware)
        for st in pipeline.stages.values():
            copy.add_stage(dataclasses.replace(st, handler=self._wrap(st)))
        return copy

    def _wrap(self, st: Stage) -> Callable[[Context, Envelope], Result | Snooze | None]:
        inner = st.handler

        def handler(ctx: Context, env: Envelope) -> Result | Snooze | None:
            step = st.name if env.part is None else f"{st.name}#{env.part}"
            self.handler_calls[(env.job_id, step)] += 1
            try:
                out = inner(ctx, env)
                if isinstance(out, Snooze):
                    self.snoozes[(env.job_id, step)] += 1
                return out
            except PermanentError:
                raise
            except Exception as exc:
                self.handler_errors.append(exc)
                if self.fail_fast:
                    raise _Unexpected(exc) from exc
                raise

        return handler

    # -- driving ----------------------------------------------------------------------------
    def submit(self, job_id: str, payload: dict[str, Any], *, queue: str | None = None,
               topic: str | None = None, user_id: str | None = None, delay_s: float = 0.0,
               priority: int = 0) -> None:
        if queue is None and topic is None:
            queue = next(iter(self.pipeline.stages.values())).source
        self.pipeline.submit(self.memory, job_id=job_id, payload=payload, queue=queue, topic=topic, user_id=user_id,
                             delay_s=delay_s, priority=priority)
        self.submitted.append(job_id)

    def _ready_stages(self) -> list[str]:
        now = self.clock.now()
        return [name for name, st in self.pipeline.stages.items()
                if (at := self.transport.next_visible_at(st.source)) is not None and at <= now]

    def step(self) -> bool:
        """Take one random action; False when nothing can happen any more."""
        r = self.random.random()
        live = [f for f in self.flights if not f.stalled]
        if self.flights and r < self.stall_probability:
            self._stall(self.random.choice(self.flights))
            return True
        stalled = [f for f in self.flights if f.stalled]
        if stalled and r < 0.3:  # a stalled process wakes up, heartbeat and all
            self.random.choice(stalled).pause(False)
            return True
        if r < self.tick_probability:
            self.clock.advance(self.random.uniform(0.1, 5.0))
            return True
        if self.submitted and self.random.random() < self.cancel_probability:
            self._operator(self.random.choice(self.submitted), cancel=True)
            return True
        if self.submitted and self.random.random() < self.retry_probability:
            self._operator(self.random.choice(self.submitted), cancel=False)
            return True
        ready = self._ready_stages()
        choices: list[Callable[[], None]] = [lambda f=f: self._advance(f) for f in live]  # type: ignore[misc]
        choices += [lambda s=s: self._receive(s) for s in ready]  # type: ignore[misc]
        if choices:
            self.random.choice(choices)()
            return True
        if self.flights:  # only stalled flights: let them resume
            for f in self.flights:
                f.pause(False)
            return True
        nxt = [t for st in self.pipeline.stages.values() if (t := self.transport.next_visible_at(st.source)) is not None]
        if nxt:
            self.clock.advance(max(0.0, min(nxt) - self.clock.now()) + 0.001)
            return True
        return False

    def run_until_idle(self, *, max_steps: int = DEFAULT_MAX_STEPS) -> None:
        """Run until no message is left to process; re-raise controller bugs (and, with
        ``fail_fast``, unexpected handler errors)."""
        for _ in range(max_steps):
            if not self.step():
                return
        raise SimulationStuck(f"not idle after {max_steps} steps; flights={len(self.flights)}")

    def _operator(self, job_id: str, *, cancel: bool) -> None:
        """An operator's cancel, or retry, of ``job_id`` at this moment (refusals are fine)."""
        try:
            if cancel:
                self.pipeline.cancel(self.memory, job_id, reason="simulated operator")
                self.cancels.append(job_id)
            else:
                self.pipeline.retry(self.memory, job_id, by="simulated operator")
                self.retries.append(job_id)
        except (InvalidTransition, RetryImpossible):
            pass

    def _receive(self, stage: str) -> None:
        st = self.pipeline.stages[stage]
        ctrl = self.random.choice(self.controllers[stage])
        got = self.transport.receive(st.source, max_messages=self.random.randint(1, 4), wait_s=0,
                                     visibility_s=st.visibility_timeout_s)
        for d in got:
            self.received.add((d.queue, d.message_id))
        batches = [got] if got and self.random.random() < self.batch_probability else [[d] for d in got]
        for batch in batches:
            leases = ctrl.leases(batch)
            steps = ctrl.process(list(zip(batch, leases, strict=True)))
            self.flights.append(_Flight(ctrl, batch, leases, steps))

    def _advance(self, f: _Flight) -> None:
        try:
            next(f.steps)
            return
        except StopIteration as stop:
            for outcome in stop.value:
                self.outcomes[Outcome(outcome).value] += 1
        except SimulatedCrash as crash:
            self.crashes.append((crash.point, f.controller.stage.name))
        except _Unexpected as exc:
            self._land(f)
            raise exc.error from None
        self._land(f)

    def _land(self, f: _Flight) -> None:
        f.stop()
        self.flights.remove(f)

    def _stall(self, f: _Flight) -> None:
        """The flight's process freezes past its visibility timeout; its leases lapse."""
        f.pause(True)
        for d in f.deliveries:
            with contextlib.suppress(MalformedMessage):
                self.stalled_jobs[f.controller.stage.codec.decode(d.body).job_id] += 1
        self.clock.advance(f.controller.stage.visibility_timeout_s + 0.5)

    # -- invariants -------------------------------------------------------------------------
    def check_invariants(self) -> Report:
        rep = Report()
        store = self.memory.store
        for job_id in self.submitted:
            job = store.get(job_id)
            if job is None or not job.status.terminal:
                rep.lost.append(f"{job_id}: {job.status.value if job else 'missing'}")
                continue
            events = [h.event for h in job.history]
            if "cancelled" in events:
                after = [e for e in events[events.index("cancelled") + 1:]
                         if e in ("begin", "commit", "fail", "step_failed", "snoozed")]
                if after:
                    rep.written_after_cancel.append(f"{job_id}: {after}")
            for stage, step in job.steps.items():
                n = job.commits(stage)
                if n > 1:
                    rep.committed_twice.append(f"{job_id}/{stage}: {n} commits")
                if step.state == "committed" and job.status != JobStatus.CANCELLED:
                    # (a cancelled job's outbox may stay unsent: nothing is replayed for it)
                    for m in step.outbox:
                        queues = ([q for q, _ in self.memory.topic.subscriptions(m.target)]
                                  if m.kind == "topic" else [m.target])
                        for q in queues:
                            if (q, m.id) not in self.received and not any(
                                    x.message_id == m.id for x in self.transport.peek(q, 10_000)):
                                rep.outbox_never_emitted.append(f"{job_id}/{stage} -> {q}: {m.id}")
            prev: JobStatus | None = None
            for h in job.history:
                if h.to_status is None:
                    continue
                if prev is not None and h.to_status != prev and (prev, h.to_status) not in ALLOWED \
                        and h.event not in WAYS_BACK:
                    rep.regressions.append(f"{job_id}: {prev.value} -> {h.to_status.value}")
                prev = h.to_status
            if prev != job.status:
                rep.regressions.append(f"{job_id}: history ends {prev} but status is {job.status.value}")
        for (job_id, stage), calls in self.handler_calls.items():
            limit = self.pipeline.stages[stage.split("#")[0]].max_receives
            attempts = calls - self.snoozes[(job_id, stage)]  # a snooze uses no attempt
            limit *= 1 + self.retries.count(job_id)  # an operator's retry gives a fresh set
            if attempts > limit:
                rep.poison_over_limit.append(f"{job_id}/{stage}: handler ran {attempts} times without snoozing "
                                             f"(max_receives {limit})")
        return rep

    def dead_letters(self) -> list[tuple[str, str, str]]:
        """(queue, message id, reason) of every dead-lettered message."""
        out = []
        for st in self.pipeline.stages.values():
            for d in self.transport.peek(st.dead_letter_queue, 100_000):
                out.append((st.dead_letter_queue, d.message_id, d.attributes.get(DEAD_LETTER_REASON, "")))
        return out


class _Unexpected(BaseException):  # BaseException: must get past the controller's ``except Exception``
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error
