"""The worker runtime: N threads each running the controller loop on one stage."""

from __future__ import annotations

import gc
import threading
import time
import uuid
from collections import Counter, deque

import structlog

from orchestrator.backends import Backend
from orchestrator.base import Delivery
from orchestrator.controllers.batching import BatchSizer
from orchestrator.controllers.controller import Controller, Outcome
from orchestrator.controllers.faults import FaultPlan
from orchestrator.controllers.lease import Lease
from orchestrator.errors import ConfigError, FatalBackendError, SimulatedCrash, WorkerDied
from orchestrator.kinds import seconds, whole
from orchestrator.logging import error_text, exception_text
from orchestrator.middleware import Middleware
from orchestrator.outage import is_outage
from orchestrator.pipeline import Pipeline, Stage
from orchestrator.schedules import Scheduler
from orchestrator.stop_signals import on_stop_signals

IDLE_CHECK_INTERVAL_S = 0.1
#: an empty receive that came back sooner than this (a stage with ``wait_s=0``, or a transport
#: that does not block) is followed by a pause for the rest: a thread polling an empty queue in a
#: tight loop costs a request each time on SQS and, in-process, holds the GIL so long that the
#: other threads (heartbeats, the idle check, a web server) wait seconds for it
EMPTY_POLL_FLOOR_S = 0.02
RECEIVE_ERROR_BACKOFF_S = 1.0
#: an unavailable backend is tried again after this, doubling per failure in a row up to the max
UNAVAILABLE_BACKOFF_S = 0.1
UNAVAILABLE_BACKOFF_MAX_S = 10.0
#: how long ``run`` waits, once stopped, for handlers still running before it hands their
#: messages back to the queue and returns (SIGTERM must end a worker, even a hung one)
DEFAULT_GRACE_S = 30.0

#: objects allocated (less those freed) between young-generation collections in a worker
#: process; CPython's default is 700. A message's protocol makes some hundreds of short-lived
#: containers, nearly all freed by reference counting within the batch: at 700 the collector
#: ran several times a batch over objects about to go anyway (2.7% of a no-op pipeline's
#: instructions; collecting no more often than every 5,000 saved all of it).
WORKER_GC_THRESHOLD = 5000

log = structlog.get_logger("orchestrator.worker")


def settle_process() -> None:
    """Ready the garbage collector of a process that will run workers until it exits
    (``orchestrator worker`` calls it before ``run``): what is alive now (modules, the
    pipeline, the backend) lives as long as the process, so full collections stop walking it
    (``gc.freeze``), and young collections run less often. A library user running a ``Worker``
    in a process of its own may call it too; it changes the whole process's collector."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(WORKER_GC_THRESHOLD, older, oldest)


class Worker:
    """Runs one stage with ``concurrency`` threads.

    Each thread receives a batch, keeps every message of the batch alive with a heartbeat,
    and runs the protocol for the batch (``Controller.handle_batch``: handlers one by one,
    store and queue writes batched). ``stop(drain=True)`` lets in-flight messages
    finish and releases prefetched-but-unstarted ones at once (visibility 0) instead of
    leaving them invisible until their lease lapses.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        stage: str | Stage,
        backend: Backend,
        *,
        concurrency: int = 1,
        faults: FaultPlan | None = None,
        batch_size: int | None = None,
        wait_s: float | None = None,
        middleware: list[Middleware] | None = None,
        grace_s: float = DEFAULT_GRACE_S,
        idle_queues: list[str] | None = None,
        fire_schedules: bool = True,
    ) -> None:
        self.pipeline = pipeline
        #: whether this worker also fires the pipeline's schedules (any worker may: firing a
        #: tick twice is an idempotent submit)
        self.fire_schedules = fire_schedules
        self.grace_s = grace_s
        #: what must be empty for ``run(until_idle=True)`` to end: the stage's source by
        #: default; a chain of stages passes every queue of the chain, so that a later stage
        #: does not leave before an earlier one has handed it its work
        self.idle_queues = idle_queues
        #: a ``FatalBackendError`` that stopped the worker; ``run`` raises it
        self.fatal: FatalBackendError | None = None
        #: what ended a thread past the protocol (``run`` raises ``WorkerDied`` when all ended)
        self.died: list[BaseException] = []
        # what each thread holds right now, so a stop past the grace period can hand it back
        self._holding: dict[str, tuple[list[Delivery], list[Lease]]] = {}
        self.middleware = list(middleware or [])
        self.last_loop_at = time.monotonic()  # liveness: the loop went round recently
        self.ready = False  # readiness: a receive has succeeded
        self.stage = stage if isinstance(stage, Stage) else pipeline.get(stage)
        self.backend = backend
        self.concurrency = concurrency
        self.faults = faults
        #: messages per receive when fixed; None: sized to the handler's pace (``BatchSizer``)
        self.batch_size = self.stage.batch_size if batch_size is None else batch_size
        self.wait_s = self.stage.wait_s if wait_s is None else wait_s
        self.id = uuid.uuid4().hex[:8]
        self.stats: Counter[str] = Counter()
        # the latest errors, for tests and operators; bounded, as a worker may run for months
        self.errors: deque[BaseException] = deque(maxlen=100)
        # stop was asked for: a plain flag, which a signal handler may set (``request_stop``);
        # ``_stopping`` wakes what sleeps, and is set outside any handler
        self._stop_requested = False
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._busy = 0
        self._threads: list[threading.Thread] = []
        pipeline.validate(backend)
        problems = _problems(concurrency=concurrency, batch_size=batch_size, wait_s=wait_s, grace_s=grace_s,
                             idle_queues=idle_queues, max_batch=backend.transport.max_batch)
        if problems:
            raise ConfigError(f"worker for stage {self.stage.name}: " + "; ".join(problems))

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self.backend.transport.ensure_queue(self.stage.queue_spec())
        if self.fire_schedules:
            Scheduler(self.pipeline, self.backend).start(self._stopping)
        for i in range(self.concurrency):
            t = threading.Thread(target=self._loop, name=f"worker-{self.stage.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        log.info("worker started", stage=self.stage.name, worker=self.id, concurrency=self.concurrency)

    def request_stop(self) -> None:
        """Ask the threads to stop after their current message. Safe anywhere, a signal
        handler included: it takes no lock (``stop_signals`` says why that matters). The
        threads see it at their next check; ``run`` wakes what sleeps within
        ``IDLE_CHECK_INTERVAL_S``."""
        self._stop_requested = True

    def stop_on_signals(self) -> None:
        """``request_stop`` on SIGTERM or SIGINT (call from the main thread)."""
        on_stop_signals(self.request_stop)

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop the threads. With ``drain``, wait up to ``timeout`` seconds in all (None:
        forever) for messages being handled; a handler still running then is abandoned: its
        heartbeat stops and its messages go back to the queue at once, for another worker (its
        late result is fenced off by the claim)."""
        self._stopping.set()
        if not drain:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        stuck = [t for t in self._threads if t.is_alive()]
        for t in stuck:
            deliveries, leases = self._holding.get(t.name, ([], []))
            for lease in leases:
                lease.stop()
            released = sum(bool(self.backend.transport.release(d, 0)) for d in deliveries)
            log.warning("handler still running after the grace period; its messages were handed back",
                        stage=self.stage.name, thread=t.name, released=released, grace_s=timeout)

    @property
    def stopping_event(self) -> threading.Event:
        return self._stopping

    @property
    def stopping(self) -> bool:
        return self._stop_requested or self._stopping.is_set()

    def is_idle(self) -> bool:
        with self._lock:
            busy = self._busy
        queues = self.idle_queues or [self.stage.source]
        return busy == 0 and all(self.backend.transport.depth(q).total == 0 for q in queues)

    def run(self, *, until_idle: bool = False, idle_checks: int = 3) -> None:
        """Block until stopped (SIGTERM in the CLI) or, with ``until_idle``, until the source
        queue has been empty with nothing in flight for ``idle_checks`` checks in a row."""
        if not self._threads:
            self.start()
        quiet = 0
        while not self._stop_requested and not self._stopping.wait(IDLE_CHECK_INTERVAL_S):
            if until_idle:
                quiet = quiet + 1 if self.is_idle() else 0
                if quiet >= idle_checks:
                    break
            if not any(t.is_alive() for t in self._threads):
                break
        self.stop(drain=True, timeout=self.grace_s)
        if self.fatal is not None:
            raise self.fatal
        if self.died and not any(t.is_alive() for t in self._threads):
            raise WorkerDied(f"worker for stage {self.stage.name}: every thread ended on an exception "
                             f"({error_text(self.died[0])})") from self.died[0]

    # -- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # past the protocol: the thread ends, loudly, and is counted
            self.died.append(exc)
            log.error("worker thread ended; its batch comes back after the visibility timeout",
                      stage=self.stage.name, thread=threading.current_thread().name, exception=exception_text(exc))

    def _serve(self) -> None:
        ctrl = Controller(self.pipeline, self.stage, self.backend, faults=self.faults, worker_id=self.id,
                          middleware=self.middleware)
        transport, st = self.backend.transport, self.stage
        sizer = BatchSizer(limit=transport.max_batch, fixed=self.batch_size)
        outages = 0  # in a row
        while not self.stopping:
            polled_at = time.monotonic()
            try:
                # the last batch's commit may have claimed this one in its transaction
                batch = ctrl.take_prefetched() or transport.receive(
                    st.source, max_messages=sizer.size, wait_s=self.wait_s, visibility_s=st.visibility_timeout_s)
            except FatalBackendError as exc:
                self._die(exc)
                return
            except Exception as exc:
                outages = self._back_off(ctrl, exc, outages, "receive")
                continue
            finally:
                self.last_loop_at = time.monotonic()
            outages = 0
            self.ready = True
            ctrl.hook("on_receive", st, len(batch))
            if not batch:
                self._stopping.wait(max(0.0, EMPTY_POLL_FLOOR_S - (self.last_loop_at - polled_at)))
                continue
            outages = self._work(ctrl, sizer, batch, outages)
        if self.fatal is None:
            self._hand_back(ctrl.take_prefetched())

    def _work(self, ctrl: Controller, sizer: BatchSizer, batch: list[Delivery], outages: int) -> int:
        """Handle one received batch, its messages kept alive meanwhile; the outages in a row."""
        with self._lock:
            self._busy += len(batch)
        leases = ctrl.leases(batch)  # prefetched messages stay leased too
        me = threading.current_thread().name
        self._holding[me] = (batch, leases)
        try:
            if self.stopping:  # stopped while receiving: hand them back at once
                self._hand_back(batch)
                return outages
            handled_before = ctrl.handler_seconds

            def next_size() -> int:  # sized by this batch's handlers, as ``record`` below sizes it
                return sizer.next_size(len(batch), ctrl.handler_seconds - handled_before)

            outcomes = ctrl.handle_batch(batch, leases, should_stop=lambda: self.stopping, prefetch=next_size)
            sizer.record(len(batch), ctrl.handler_seconds - handled_before)
            self.stats.update(outcome.value for outcome in outcomes)
        except FatalBackendError as exc:
            self._die(exc)
        except SimulatedCrash:
            # An in-process "crash": the batch is dropped, leases and all, as a dead
            # process would drop it. The queue redelivers after the visibility timeout.
            ctrl.take_prefetched()  # (and what it claimed for the next)
            self.stats["crashed"] += 1
        except Exception as exc:  # store or queue unavailable: redelivery retries
            self.stats["errors"] += 1
            self.errors.append(exc)
            if is_outage(exc):
                return self._back_off(ctrl, exc, outages, "batch")
            log.error("batch not processed; left for redelivery", stage=self.stage.name,
                      exception=exception_text(exc))
        finally:
            self._holding.pop(me, None)
            for lease in leases:
                lease.stop()
            with self._lock:
                self._busy -= len(batch)
        return outages

    def _hand_back(self, deliveries: list[Delivery]) -> None:
        """Messages received (or claimed by the last commit) as the stop came, not started:
        visible again at once (if the backend cannot say so now, their visibility timeout will)."""
        for d in deliveries:
            try:
                self.backend.transport.release(d, 0)
            except Exception as exc:
                log.warning("message not handed back; it returns after its visibility timeout",
                            stage=self.stage.name, error=error_text(exc, 300))
                return

    def _back_off(self, ctrl: Controller, exc: Exception, outages: int, what: str) -> int:
        """Wait before trying the backend again: doubling while it stays unavailable (counted
        in ``stats["unavailable"]`` and the ``on_backend_unavailable`` hook); a fixed pause
        after any other receive error. The failures in a row so far."""
        if not is_outage(exc):
            log.warning(f"{what} failed; backing off", error=error_text(exc), stage=self.stage.name)
            self._stopping.wait(RECEIVE_ERROR_BACKOFF_S)
            return outages
        delay = min(UNAVAILABLE_BACKOFF_MAX_S, UNAVAILABLE_BACKOFF_S * 2 ** min(outages, 20))
        self.stats["unavailable"] += 1
        log.warning("backend unavailable; trying again", what=what, stage=self.stage.name, delay_s=delay,
                    error=error_text(exc, 300))
        ctrl.hook("on_backend_unavailable", self.stage, exc, delay)
        self._stopping.wait(delay)
        return outages + 1

    def _die(self, exc: FatalBackendError) -> None:
        log.error("worker stopping", stage=self.stage.name, error=error_text(exc))
        self.fatal = exc
        self._stopping.set()

    def count(self, outcome: Outcome) -> int:
        return self.stats[outcome.value]


#: the most threads one worker process runs (as the command line allows)
MAX_CONCURRENCY = 1024


def _problems(*, concurrency: object, batch_size: object, wait_s: object, grace_s: object, idle_queues: object,
              max_batch: int) -> list[str]:
    """What a worker cannot run with, each explained (a concurrency of 2.5 started no thread
    and a million started a million; a string of queues was read letter by letter)."""
    out = [] if whole(concurrency, 1, MAX_CONCURRENCY) else [
        f"concurrency must be a whole number 1..{MAX_CONCURRENCY}, got {concurrency!r}"]
    if batch_size is not None and not whole(batch_size, 1, max_batch):
        out.append(f"batch_size must be 1..{max_batch} on this backend, got {batch_size!r}")
    out += [f"{name} must be a finite number of seconds >= 0, got {value!r}"
            for name, value in (("wait_s", wait_s), ("grace_s", grace_s))
            if not seconds(value) and not (name == "wait_s" and value is None)]  # (None: the stage's wait)
    if idle_queues is not None and (isinstance(idle_queues, str) or not isinstance(idle_queues, list | tuple)
                                    or not all(isinstance(q, str) for q in idle_queues)):
        out.append(f"idle_queues must be a list of queue names, got {idle_queues!r}")
    return out
