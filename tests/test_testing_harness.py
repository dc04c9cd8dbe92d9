"""The public harness: strategies, chaos wrappers, and the pytest plugin's fixtures."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.quickstart import pipeline as quickstart
from orchestrator import ConfigError, FaultPlan, JobStatus, Pipeline, Result
from orchestrator.codec import Codec
from orchestrator.envelope import Envelope
from orchestrator.testing import Simulation, crash_plans, envelopes, pipeline_property
from orchestrator.testing.chaos import ChaosOdds

pytest_plugins = ["pytester"]


def submit_ten(sim: Simulation) -> None:
    for i in range(10):
        sim.submit(f"j{i}", {"x": i}, queue="numbers")


def answers_are_right(sim: Simulation) -> None:
    for i in range(10):
        job = sim.backend.store.get(f"j{i}")
        assert job is not None
        if job.status == JobStatus.COMPLETED:
            assert job.fields["answer"] == i * i + 1


test_quickstart_survives_random_crash_plans = settings(max_examples=100)(
    pipeline_property(quickstart, submit_ten, check=answers_are_right))


@given(envelopes(task="numbers"))
def test_generated_envelopes_round_trip_through_the_codec(env: Envelope) -> None:
    assert Codec().decode(env.to_json()) == env


@given(crash_plans(quickstart, job_ids=["a", "b"]))
def test_crash_plans_name_only_real_stages_and_points(plan: FaultPlan) -> None:
    assert all(f.stage in (None, "square", "plus_one") and f.job_id in (None, "a", "b") for f in plan.faults)


@settings(max_examples=150)
@given(seed=st.integers(0, 2**32 - 1), duplicate=st.sampled_from([0.0, 0.2]), delay=st.sampled_from([0.0, 0.3]),
       fail_extend=st.sampled_from([0.0, 0.3]), fail_writes=st.sampled_from([0.0, 0.1]),
       lose_replies=st.sampled_from([0.0, 0.1]), batch=st.sampled_from([0.0, 1.0]))
def test_invariants_hold_under_chaos(seed: int, duplicate: float, delay: float, fail_extend: float,
                                     fail_writes: float, lose_replies: float, batch: float) -> None:
    # Given a pipeline whose transport duplicates, delays and reorders, and whose store fails
    p = Pipeline("chaos")
    p.stage("a", source="qa", emit_to="qb", max_receives=30, retry_base_s=0.1, retry_max_s=1)(
        lambda ctx, msg: Result(status=JobStatus.RUNNING, emit=[{"n": msg.payload["n"] + 1}]))
    p.stage("b", source="qb", max_receives=30, retry_base_s=0.1, retry_max_s=1)(
        lambda ctx, msg: Result(status=JobStatus.COMPLETED, fields={"n": msg.payload["n"]}))
    odds = ChaosOdds(duplicate=duplicate, delay=delay, reorder=True, fail_extend=fail_extend,
                     fail_writes=fail_writes, lose_replies=lose_replies)
    sim = Simulation(p, seed=seed, chaos=odds, batch_probability=batch)
    for i in range(8):
        sim.submit(f"j{i}", {"n": i})
    # When it runs until idle, Then nothing is lost or committed twice, and results are right
    sim.run_until_idle()
    report = sim.check_invariants()
    assert report.ok, str(report)
    for i in range(8):
        job = sim.memory.store.get(f"j{i}")
        assert job is not None and job.status == JobStatus.COMPLETED and job.fields["n"] == i + 1


def test_the_plugin_gives_a_seeded_simulation(pytester) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        """
        from orchestrator import Fault, JobStatus, Pipeline, Result

        def test_crash_then_finish(sim, fault_plan, orchestrator_seed):
            p = Pipeline("p")
            p.stage("s", source="in")(lambda ctx, msg: Result(status=JobStatus.COMPLETED))
            fault_plan.faults.append(Fault("after_handle"))
            fault_plan.__post_init__()
            s = sim(p)
            s.submit("j", {})
            s.run_until_idle()
            assert s.check_invariants().ok and s.crashes
            assert orchestrator_seed == 1234
            assert False, "show the seed"
        """
    )
    result = pytester.runpytest("--orchestrator-seed=1234", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*replay with --orchestrator-seed=1234*"])


def test_a_fault_appended_to_the_fixture_plan_fires(sim, fault_plan) -> None:  # type: ignore[no-untyped-def]
    # Given the plugin's empty plan, with a crash appended after it was made
    from orchestrator import Fault, JobStatus, Pipeline, Result

    p = Pipeline("t")
    p.stage("s", source="in")(lambda ctx, msg: Result(status=JobStatus.COMPLETED))
    fault_plan.faults.append(Fault("after_handle", stage="s"))
    # When a job runs through the simulation
    s = sim(p)
    s.submit("j", {}, queue="in")
    s.run_until_idle()
    # Then the crash fired once and the job still completed
    assert [f[0] for f in fault_plan.fired] == ["after_handle"]
    assert s.check_invariants().ok


@pytest.mark.parametrize("settings", [{"stall_probability": math.nan}, {"cancel_probability": 1.5},
                                      {"tick_probability": -0.1}, {"batch_probability": "0.5"},
                                      {"controllers_per_stage": 0}, {"controllers_per_stage": 1.5}])
def test_a_simulation_with_odds_or_controllers_it_cannot_run_is_refused(settings: dict[str, Any]) -> None:
    p = Pipeline("sim")
    p.stage("s", source="in")(lambda ctx, msg: Result())
    with pytest.raises(ConfigError, match=next(iter(settings))):
        Simulation(p, **settings)
