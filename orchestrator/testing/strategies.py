"""hypothesis strategies for a user's pipeline, and a helper that makes a property test.

    from orchestrator.testing import pipeline_property

    test_billing_survives_crashes = pipeline_property(
        pipeline, submit=lambda sim: [sim.submit(f"j{i}", {"amount": 5}) for i in range(3)],
        check=lambda sim: ...)  # your own invariant, on top of check_invariants()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import given, note, settings
from hypothesis import strategies as st

from orchestrator.controllers.faults import CRASH_POINTS, Fault, FaultPlan
from orchestrator.envelope import Envelope
from orchestrator.pipeline import Pipeline
from orchestrator.storable import MAX_INT
from orchestrator.testing.simulation import Simulation


@dataclass(frozen=True)
class Schedule:
    """How the simulation interleaves controllers: a seed and the odds of each event."""

    seed: int
    stall_probability: float = 0.0
    tick_probability: float = 0.05
    batch_probability: float = 0.0
    controllers_per_stage: int = 2


def crash_plans(
    pipeline: Pipeline, *, job_ids: Sequence[str] | None = None, max_faults: int = 4, max_attempt: int = 3
) -> st.SearchStrategy[FaultPlan]:
    """Crash plans over every crash point and stage of ``pipeline`` (optionally pinned to
    some jobs). Shrinks towards fewer, earlier faults."""
    jobs = st.sampled_from(list(job_ids)) | st.none() if job_ids else st.none()
    fault = st.builds(
        Fault,
        point=st.sampled_from(CRASH_POINTS),
        stage=st.sampled_from(sorted(pipeline.stages)) | st.none(),
        job_id=jobs,
        attempt=st.integers(1, max_attempt) | st.none(),
        times=st.integers(1, 2),
    )
    return st.lists(fault, max_size=max_faults).map(FaultPlan.of)


def schedules(*, stalls: bool = True, batches: bool = True) -> st.SearchStrategy[Schedule]:
    """Interleavings: seeds, time ticks, stalled controllers, batch vs message-at-a-time."""
    return st.builds(
        Schedule,
        seed=st.integers(0, 2**32 - 1),
        stall_probability=st.sampled_from([0.0, 0.02]) if stalls else st.just(0.0),
        tick_probability=st.sampled_from([0.0, 0.05, 0.2]),
        batch_probability=st.sampled_from([0.0, 0.5, 1.0]) if batches else st.just(0.0),
        controllers_per_stage=st.integers(1, 3),
    )


def envelopes(
    *, task: str | st.SearchStrategy[str] = "task", job_ids: st.SearchStrategy[str] | None = None,
    payloads: st.SearchStrategy[dict[str, Any]] | None = None,
) -> st.SearchStrategy[Envelope]:
    """Envelopes with valid ids and payloads every backend stores (``orchestrator.storable``),
    for codec and handler tests."""
    tasks = st.just(task) if isinstance(task, str) else task
    ids = st.text("abcdef0123456789", min_size=8, max_size=32)
    values = st.none() | st.booleans() | st.integers(-MAX_INT, MAX_INT) | st.text(max_size=20)
    return st.builds(
        Envelope,
        id=ids,
        task=tasks,
        job_id=job_ids or st.text("abcdefghij-0123456789", min_size=1, max_size=20),
        payload=payloads or st.dictionaries(st.text(min_size=1, max_size=10), values, max_size=5),
    )


def simulate(pipeline: Pipeline, submit: Callable[[Simulation], Any], plan: FaultPlan, schedule: Schedule
             ) -> Simulation:
    """Run ``pipeline`` once under ``plan`` and ``schedule`` until idle."""
    sim = Simulation(pipeline, seed=schedule.seed, faults=plan, stall_probability=schedule.stall_probability,
                     tick_probability=schedule.tick_probability, batch_probability=schedule.batch_probability,
                     controllers_per_stage=schedule.controllers_per_stage)
    sim.schedule = schedule
    submit(sim)
    sim.run_until_idle()
    return sim


def pipeline_property(
    pipeline: Pipeline,
    submit: Callable[[Simulation], Any],
    *,
    check: Callable[[Simulation], None] | None = None,
    job_ids: Sequence[str] | None = None,
    max_examples: int | None = None,
    stalls: bool = True,
    batches: bool = True,
) -> Callable[[], None]:
    """A property test (hypothesis ``@given``) for ``pipeline``: for random crash plans and
    schedules, ``submit`` jobs, run until idle, then assert ``check_invariants()`` and your
    own ``check(sim)``. A failure is shrunk to the smallest crash plan and printed."""

    @given(plan=crash_plans(pipeline, job_ids=job_ids), schedule=schedules(stalls=stalls, batches=batches))
    def property_test(plan: FaultPlan, schedule: Schedule) -> None:
        sim = simulate(pipeline, submit, plan, schedule)
        note(f"crash plan: {plan.faults}; fired: {plan.fired}; schedule: {schedule}")
        report = sim.check_invariants()
        assert report.ok, str(report)
        if check is not None:
            check(sim)

    test = property_test
    if max_examples is not None:
        test = settings(max_examples=max_examples)(test)
    return test
