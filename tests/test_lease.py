"""The visibility heartbeat of a received batch: one timer beats every lease of the batch, and
each lease still stops on its own."""

from __future__ import annotations

import threading

from orchestrator.base import Outgoing, QueueSpec
from orchestrator.clock import SimClock
from orchestrator.controllers.lease import Lease
from orchestrator.transports.memory import MemoryTransport


def _batch(n: int) -> tuple[SimClock, MemoryTransport, list[Lease]]:
    clock = SimClock()
    transport = MemoryTransport(clock=clock)
    transport.ensure_queue(QueueSpec("q"))
    for i in range(n):
        transport.send("q", Outgoing(body=str(i)))
    batch = transport.receive("q", max_messages=n, wait_s=0, visibility_s=3)
    return clock, transport, Lease.batch(transport, batch, clock, visibility_s=3)


def test_one_timer_keeps_a_whole_batch_leased_and_a_stopped_lease_lapses_alone() -> None:
    # Given a batch of three leased for 3 s, beaten every second
    clock, transport, leases = _batch(3)
    clock.advance(2.5)
    assert [lease.extensions for lease in leases] == [2, 2, 2]
    # When the first is settled (and stopped twice, as a holder and a time limit may both do)
    leases[0].stop()
    leases[0].stop()
    clock.advance(5)
    # Then its message lapses back to the queue while its batch-mates stay leased
    assert [lease.extensions for lease in leases] == [2, 7, 7]
    assert transport.depth("q").visible == 1
    # and stopping it twice did not count as a second lease: the third still beats alone
    leases[1].stop()
    clock.advance(3)
    assert leases[2].extensions == 10 and transport.depth("q").visible == 2
    assert clock.cancelled == 0
    # When the last one stops, the shared timer is cancelled
    leases[2].stop()
    assert clock.cancelled == 1


def test_leases_stopped_from_two_threads_at_once_stop_the_timer_exactly_when_the_last_one_goes() -> None:
    for _ in range(50):
        clock, _, leases = _batch(8)
        go = threading.Barrier(2)

        def stop_all(order: list[Lease], go: threading.Barrier = go) -> None:
            go.wait()
            for lease in order:
                lease.stop()

        threads = [threading.Thread(target=stop_all, args=(leases[:7],)),
                   threading.Thread(target=stop_all, args=(leases[6::-1],))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert clock.cancelled == 0  # the eighth still holds the timer
        clock.advance(1.5)
        assert leases[7].extensions == 1
        leases[7].stop()
        assert clock.cancelled == 1


def test_committed_batches_leave_no_reference_cycles_behind() -> None:
    # Given a two-stage pipeline on the memory backend, and the cyclic collector switched off
    import gc

    from orchestrator import JobStatus, Pipeline, Result
    from orchestrator.backends import memory_backend
    from orchestrator.controllers.controller import Controller
    from orchestrator.controllers.submit import submit_many

    p = Pipeline("cycles")
    p.stage("one", source="a", emit_to="b")(lambda ctx, msg: Result(status=JobStatus.RUNNING, fields={"n": 1},
                                                                    emit=[{}]))
    p.stage("two", source="b")(lambda ctx, msg: Result(status=JobStatus.COMPLETED))
    backend = memory_backend(SimClock())
    p.setup(backend)
    submit_many(backend, [(f"j{i}", {}) for i in range(45)], queue="a")
    gc.collect()
    gc.disable()
    try:
        # When both stages receive and handle their batches to the end
        for stage, queue in (("one", "a"), ("two", "b")):
            ctrl = Controller(p, stage, backend)
            while got := backend.transport.receive(queue, max_messages=10, wait_s=0, visibility_s=30):
                ctrl.handle_batch(got)
        # Then every job is done, and nothing the protocol made waits for the cyclic collector:
        # a cycle per batch would keep its deliveries, envelopes and leases until a collection
        # (whose passes over a large heap cost a busy worker a good part of its time)
        assert {backend.store.get(f"j{i}").status for i in range(45)} == {JobStatus.COMPLETED}  # type: ignore[union-attr]
        assert gc.collect() == 0
    finally:
        gc.enable()
