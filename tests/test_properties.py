"""The invariants of DESIGN.md, checked on random pipelines, crash plans and interleavings.

Given a random pipeline of 1-3 stages, 1-30 jobs whose handlers sometimes fail (transient or
permanent) or snooze (more times than max receives allows attempts), submitted and emitted
with random delays (past SQS's 15 minutes too) and priorities, a crash plan over every crash
point, random visibility timeouts, stalls and controller interleavings; when the simulation
runs until idle; then no job is lost, no step is committed twice, status never goes
backwards, poison is bounded by max receives, snoozes use no attempt, no message is received
before its time, and every committed outbox reached its queue.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from pg import drop_schema, new_schema, with_schema

from orchestrator import CRASH_POINTS, Emit, Fault, FaultPlan, JobStatus, PermanentError, Pipeline, Result, Snooze
from orchestrator.backends import Backend, postgres_backend, sqlite_backend
from orchestrator.clock import SimClock
from orchestrator.testing.simulation import Simulation

BEHAVIOURS = ("ok", "flaky", "permanent", "poison", "slow", "snoozer")
DELAYS = (0.0, 0.0, 0.0, 4.0, 45.0, 2000.0)  # seconds; 2000 s is past SQS's 900 s cap


class Transient(Exception):
    pass


@dataclass
class Scenario:
    stages: int
    jobs: int
    visibility: float
    max_receives: int
    behaviour: dict[tuple[int, int], str]  # (job, stage) -> behaviour
    flaky_failures: int
    faults: list[Fault]
    seed: int
    stall_probability: float
    via_topic: bool
    batch_probability: float
    claim: str
    snoozes: int  # how many times a "snoozer" handler says "not yet" before it does its work
    submit_delay: dict[int, float]  # job -> seconds its first message waits
    emit_delay: dict[int, float]  # stage -> seconds what it emits waits
    priority: dict[int, int]  # job -> priority
    cancel_probability: float  # per simulation step: an operator cancels a random job
    retry_probability: float  # per step: an operator retries a random FAILED job


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n_stages = draw(st.integers(1, 3))
    n_jobs = draw(st.integers(1, 30))
    behaviour = draw(st.dictionaries(
        st.tuples(st.integers(0, n_jobs - 1), st.integers(0, n_stages - 1)),
        st.sampled_from(BEHAVIOURS), max_size=8))
    faults = draw(st.lists(
        st.builds(Fault, point=st.sampled_from(CRASH_POINTS),
                  stage=st.sampled_from([f"s{i}" for i in range(n_stages)]),
                  job_id=st.sampled_from([f"job-{j}" for j in range(n_jobs)]) | st.none(),
                  attempt=st.integers(1, 3) | st.none(), times=st.integers(1, 2)),
        max_size=6))
    return Scenario(
        stages=n_stages, jobs=n_jobs, visibility=draw(st.sampled_from([3.0, 10.0, 30.0])),
        max_receives=draw(st.integers(2, 5)), behaviour=behaviour, flaky_failures=draw(st.integers(1, 4)),
        faults=faults, seed=draw(st.integers(0, 2**32)), stall_probability=draw(st.sampled_from([0.0, 0.0, 0.02])),
        via_topic=draw(st.booleans()), batch_probability=draw(st.sampled_from([0.0, 0.5, 1.0])),
        claim=draw(st.sampled_from(["deferred", "eager", "lazy"])),
        snoozes=draw(st.integers(1, 7)),
        submit_delay=draw(st.dictionaries(st.integers(0, n_jobs - 1), st.sampled_from(DELAYS), max_size=6)),
        emit_delay=draw(st.dictionaries(st.integers(0, n_stages - 1), st.sampled_from(DELAYS), max_size=2)),
        priority=draw(st.dictionaries(st.integers(0, n_jobs - 1), st.integers(0, 9), max_size=8)),
        cancel_probability=draw(st.sampled_from([0.0, 0.0, 0.01, 0.05])),
        retry_probability=draw(st.sampled_from([0.0, 0.0, 0.02])),
    )


def build(sc: Scenario, early: list[str] | None = None) -> Pipeline:
    """The scenario's pipeline; a message received before its time is appended to ``early``."""
    p = Pipeline("prop")
    attempts: dict[tuple[str, int], int] = {}
    snoozed: dict[tuple[str, int], int] = {}
    early = early if early is not None else []
    for i in range(sc.stages):
        last = i == sc.stages - 1

        def handler(ctx, msg, i=i, last=last):  # type: ignore[no-untyped-def]
            job = int(msg.job_id.split("-")[1])
            how = sc.behaviour.get((job, i), "ok")
            key = (msg.job_id, i)
            if ctx.clock.now() < msg.payload.get("not_before", 0.0):
                early.append(f"{msg.job_id}/s{i} at {ctx.clock.now()}, due {msg.payload['not_before']}")
            if how == "snoozer" and snoozed.get(key, 0) < sc.snoozes:
                snoozed[key] = snoozed.get(key, 0) + 1
                return Snooze(sc.visibility * 1.5, reason=f"not yet ({snoozed[key]})")
            attempts[key] = attempts.get(key, 0) + 1
            if how == "permanent":
                raise PermanentError(f"job {job} cannot be done at s{i}")
            if how == "poison":
                raise Transient("always fails")
            if how == "flaky" and attempts[key] <= sc.flaky_failures:
                raise Transient(f"flaky attempt {attempts[key]}")
            if how == "slow":
                ctx.clock.sleep(sc.visibility * 2.5)  # longer than the lease: the heartbeat must hold it
            total = msg.payload["total"] + i + 1
            if last:
                return Result(status=JobStatus.COMPLETED, fields={f"s{i}": total})
            delay = sc.emit_delay.get(i, 0.0)
            out = {"total": total, "not_before": ctx.clock.now() + delay}
            return Result(status=JobStatus.RUNNING, fields={f"s{i}": total},
                          emit=[Emit(out, delay_s=delay, priority=sc.priority.get(job, 0))])

        opts: dict[str, object] = {}
        if not last:
            if sc.via_topic and not sc.emit_delay.get(i):  # a delayed emit goes to a queue
                opts["publish_to"] = f"t{i}"
            else:
                opts["emit_to"] = f"q{i + 1}"
        if i > 0 and sc.via_topic and not sc.emit_delay.get(i - 1):
            opts["subscribe"] = (f"t{i - 1}",)
            opts["raw_subscription"] = i % 2 == 0  # odd stages get SNS-wrapped bodies
        p.stage(f"s{i}", source=f"q{i}", max_receives=sc.max_receives, visibility_timeout_s=sc.visibility,
                retry_base_s=0.5, retry_max_s=5.0, begin=sc.claim, **opts)(handler)  # type: ignore[arg-type]
    return p


@given(scenarios())
def test_invariants_hold_under_random_crashes_and_interleavings(sc: Scenario) -> None:
    check_scenario(sc)


# The same properties on the database backends, where commit + emit + ack are one transaction:
# fewer examples (each opens a database), the same invariants.
SQL_EXAMPLES = 40 if os.environ.get("CI") else 8


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_invariants_hold_on_the_database_backends(kind: str, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("pg_server") if kind == "postgres" else ""

    @settings(max_examples=SQL_EXAMPLES)
    @given(scenarios())
    def run(sc: Scenario) -> None:
        on_database(kind, server, lambda backend: check_scenario(sc, backend))

    run()


def on_database(kind: str, server: str, check: Callable[[Backend], None]) -> None:
    """Run ``check`` on a fresh SQLite file or PostgreSQL schema, on a simulated clock."""
    clock = SimClock()
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            backend = sqlite_backend(Path(tmp) / "p.db", clock=clock)
            try:
                check(backend)
            finally:
                backend.close()
        return
    schema = new_schema()
    backend = postgres_backend(with_schema(server, schema), clock=clock)
    try:
        check(backend)
    finally:
        backend.close()
        drop_schema(server, schema)


def check_scenario(sc: Scenario, backend: Backend | None = None) -> None:
    # Given
    early: list[str] = []
    sim = Simulation(build(sc, early), seed=sc.seed, faults=FaultPlan.of(sc.faults),
                     stall_probability=sc.stall_probability, batch_probability=sc.batch_probability, backend=backend,
                     cancel_probability=sc.cancel_probability, retry_probability=sc.retry_probability)
    for j in range(sc.jobs):
        delay = sc.submit_delay.get(j, 0.0)
        sim.submit(f"job-{j}", {"total": 0, "not_before": sim.clock.now() + delay}, queue="q0", delay_s=delay,
                   priority=sc.priority.get(j, 0))
    # When
    sim.run_until_idle()
    # Then
    report = sim.check_invariants()
    note(f"crashes={sim.crashes} outcomes={sim.outcomes}")
    assert report.ok, str(report)
    assert not early, f"received before their time: {early}"
    for j in range(sc.jobs):
        job = sim.backend.store.get(f"job-{j}")
        assert job is not None
        bad = {sc.behaviour.get((j, i), "ok") for i in range(sc.stages)} & {"permanent", "poison"}
        if job.status == JobStatus.CANCELLED:
            assert f"job-{j}" in sim.cancels, f"job-{j} CANCELLED by nobody"
            continue
        if job.status == JobStatus.COMPLETED:
            assert not bad, f"job-{j} completed although a stage always fails"
            assert job.fields[f"s{sc.stages - 1}"] == sum(range(1, sc.stages + 1))
            assert all(job.commits(f"s{i}") == 1 for i in range(sc.stages))
        else:
            reason = [h.reason for h in job.history if h.event == "fail"]
            assert reason and reason[0], f"job-{j} FAILED without a reason"
            # A job fails only for a reason: a failing stage, or attempts used up by crashes,
            # stalls and flaky errors.
            crashes = sum(1 for f in sc.faults if f.job_id in (None, f"job-{j}")) * 2
            if sc.batch_probability:
                # a crash drops the whole batch it happened in: batch-mates lose an attempt too
                crashes = len(sim.crashes)
            flaky = sc.flaky_failures if any(sc.behaviour.get((j, i)) == "flaky" for i in range(sc.stages)) else 0
            assert bad or crashes + flaky + sim.stalled_jobs[f"job-{j}"] >= sc.max_receives, (
                f"job-{j} FAILED ({reason}) with no cause")
    # Poison ends in a dead-letter queue with its reason.
    dead = sim.dead_letters()
    assert all(reason for _, _, reason in dead)
    for j in range(sc.jobs):
        if any(sc.behaviour.get((j, i)) == "poison" for i in range(sc.stages)):
            job = sim.backend.store.get(f"job-{j}")
            assert job is not None and job.status in (JobStatus.FAILED, JobStatus.CANCELLED)


@given(n_jobs=st.integers(1, 20), visibility=st.sampled_from([3.0, 9.0, 30.0]), seed=st.integers(0, 2**32),
       stretch=st.floats(1.5, 6.0))
def test_heartbeat_keeps_live_long_handlers_from_redelivery(n_jobs: int, visibility: float, seed: int,
                                                           stretch: float) -> None:
    # Given handlers that run several visibility timeouts, and time passing between steps
    p = Pipeline("slow")

    @p.stage("work", source="in", visibility_timeout_s=visibility, max_receives=2)
    def work(ctx, msg):  # type: ignore[no-untyped-def]
        ctx.clock.sleep(visibility * stretch)
        return Result(status=JobStatus.COMPLETED)

    sim = Simulation(p, seed=seed, tick_probability=0.3)
    for j in range(n_jobs):
        sim.submit(f"job-{j}", {})
    # When
    sim.run_until_idle()
    # Then no message was handled twice while its controller was alive
    assert sim.check_invariants().ok
    assert all(calls == 1 for calls in sim.handler_calls.values()), sim.handler_calls
    assert sim.outcomes == {"committed": n_jobs}


@dataclass
class JoinScenario:
    jobs: int
    parts: int
    faults: list[Fault]
    seed: int
    stall_probability: float
    batch_probability: float
    cancel_probability: float
    claim: str
    visibility: float


@st.composite
def join_scenarios(draw: st.DrawFn) -> JoinScenario:
    n_jobs = draw(st.integers(1, 8))
    return JoinScenario(
        jobs=n_jobs, parts=draw(st.integers(1, 6)),
        faults=draw(st.lists(st.builds(
            Fault, point=st.sampled_from(CRASH_POINTS), stage=st.sampled_from(["split", "part", "merge"]) | st.none(),
            job_id=st.sampled_from([f"job-{j}" for j in range(n_jobs)]) | st.none(),
            attempt=st.integers(1, 3) | st.none(), times=st.integers(1, 2)), max_size=5)),
        seed=draw(st.integers(0, 2**32)), stall_probability=draw(st.sampled_from([0.0, 0.0, 0.02])),
        batch_probability=draw(st.sampled_from([0.0, 0.5, 1.0])),
        cancel_probability=draw(st.sampled_from([0.0, 0.0, 0.02])),
        claim=draw(st.sampled_from(["deferred", "eager", "lazy"])), visibility=draw(st.sampled_from([3.0, 10.0])))


def build_join(sc: JoinScenario, joins: Counter[str]) -> Pipeline:
    p = Pipeline("joinprop")
    # more receives than the crash plan can take from one message (5 faults, twice each), so
    # every job must complete: a job given up as poison here would be the protocol's fault
    opts = {"max_receives": 14, "visibility_timeout_s": sc.visibility, "retry_base_s": 0.5, "retry_max_s": 2.0,
            "begin": sc.claim}
    p.stage("split", source="split", emit_to="parts", **opts)(  # type: ignore[arg-type]
        lambda ctx, msg: Result(status=JobStatus.RUNNING, parts=[{"i": i} for i in range(sc.parts)]))
    p.stage("part", source="parts", **opts)(  # type: ignore[arg-type]
        lambda ctx, msg: Result(fields={"v": msg.payload["i"] * 10}))

    def merge(ctx, msg):  # type: ignore[no-untyped-def]
        joins[msg.job_id] += 1
        return Result(status=JobStatus.COMPLETED, fields={"vs": [p["v"] for p in ctx.parts]})

    p.join("merge", parts_of="part", **opts)(merge)  # type: ignore[arg-type]
    return p


@given(join_scenarios())
def test_each_part_commits_once_and_each_join_runs_once_under_crashes(sc: JoinScenario) -> None:
    check_join_scenario(sc)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_joins_hold_on_the_database_backends(kind: str, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("pg_server") if kind == "postgres" else ""

    @settings(max_examples=SQL_EXAMPLES)
    @given(join_scenarios())
    def run(sc: JoinScenario) -> None:
        on_database(kind, server, lambda backend: check_join_scenario(sc, backend))

    run()


def check_join_scenario(sc: JoinScenario, backend: Backend | None = None) -> None:
    joins: Counter[str] = Counter()
    sim = Simulation(build_join(sc, joins), seed=sc.seed, faults=FaultPlan.of(sc.faults),
                     stall_probability=sc.stall_probability, batch_probability=sc.batch_probability,
                     cancel_probability=sc.cancel_probability, backend=backend)
    for j in range(sc.jobs):
        sim.submit(f"job-{j}", {}, queue="split")
    sim.run_until_idle()
    report = sim.check_invariants()
    note(f"crashes={sim.crashes} outcomes={sim.outcomes} joins={joins}")
    assert report.ok, str(report)
    merge_crashes = sum(1 for point, stage in sim.crashes if stage == "merge")
    for j in range(sc.jobs):
        job = sim.backend.store.get(f"job-{j}")
        assert job is not None
        if job.status == JobStatus.CANCELLED:
            continue
        assert job.status == JobStatus.COMPLETED, f"job-{j} {job.status.value}: {job.history[-1]}"
        assert job.fields["vs"] == [10 * i for i in range(sc.parts)]
        assert all(job.commits(f"part#{i}") == 1 for i in range(sc.parts))
        assert job.commits("merge") == 1
        # the join's handler runs once, but for a crash or stall of its own before it committed
        assert joins[f"job-{j}"] <= 1 + merge_crashes + sim.stalled_jobs[f"job-{j}"], joins
