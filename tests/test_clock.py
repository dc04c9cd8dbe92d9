"""Repeating timers: cancelled ones let go of what they call at once and never fire again,
and live ones keep firing when the heap drops the cancelled."""

from __future__ import annotations

import gc
import threading
import weakref

from orchestrator.clock import _SCHEDULER, SimClock, SystemClock


class Owner:
    """Stands for a lease: what a heartbeat's bound method keeps alive."""

    def __init__(self) -> None:
        self.beats = 0

    def beat(self) -> None:
        self.beats += 1


def test_a_cancelled_system_timer_lets_go_of_its_callback_before_its_due_time() -> None:
    owners = [Owner() for _ in range(500)]
    refs = [weakref.ref(o) for o in owners]
    timers = [SystemClock().every(3600.0, o.beat) for o in owners]  # not due for an hour
    for t in timers:
        t.cancel()
    del owners, timers
    gc.collect()
    assert all(r() is None for r in refs)


def test_the_system_scheduler_heap_stays_bounded_by_the_live_timers() -> None:
    for _ in range(20):
        for t in [SystemClock().every(3600.0, Owner().beat) for _ in range(200)]:
            t.cancel()
    # 4,000 timers made and cancelled, none due: the heap keeps only a bounded remainder
    assert len(_SCHEDULER._heap) < 1000


def test_a_live_system_timer_keeps_firing_while_others_are_cancelled_around_it() -> None:
    fired = threading.Event()
    live = SystemClock().every(0.05, fired.set)
    try:
        for t in [SystemClock().every(3600.0, Owner().beat) for _ in range(2000)]:
            t.cancel()
        SystemClock().every(3600.0, Owner().beat).cancel()  # an add compacts the heap
        assert fired.wait(5.0)
    finally:
        live.cancel()


def test_sim_clock_timers_cancelled_do_not_fire_and_live_ones_do_across_compaction() -> None:
    clock = SimClock()
    live = Owner()
    clock.every(1.0, live.beat)
    dead = [Owner() for _ in range(1000)]
    refs = [weakref.ref(o) for o in dead]
    for t in [clock.every(1.0, o.beat) for o in dead]:
        t.cancel()
    clock.every(1.0, Owner().beat).cancel()
    del dead, t
    gc.collect()
    assert all(r() is None for r in refs)
    assert len(clock._heap) < 600
    clock.advance(10.0)
    assert live.beats == 10
