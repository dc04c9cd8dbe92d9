"""pytest plugin (entry point ``pytest11``): fixtures for simulating pipelines.

Fixtures: ``orchestrator_seed`` (from ``--orchestrator-seed``, else random and reported on
failure), ``sim_clock`` (a ``SimClock``), ``fault_plan`` (an empty ``FaultPlan`` to fill),
``sim`` (a factory: ``sim(pipeline, **options) -> Simulation`` using the three above).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.clock import SimClock
from orchestrator.controllers.faults import FaultPlan
from orchestrator.pipeline import Pipeline
from orchestrator.testing.simulation import Simulation


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--orchestrator-seed", type=int, default=None,
                     help="seed for orchestrator simulations (replays a failing case)")


@pytest.fixture
def orchestrator_seed(request: pytest.FixtureRequest) -> int:
    """The seed of this test's simulations: ``--orchestrator-seed`` when given, else random
    (reported with a failure, so the case can be replayed)."""
    seed = request.config.getoption("--orchestrator-seed")
    if seed is None:
        seed = random.randrange(2**32)
    request.node.user_properties.append(("orchestrator_seed", seed))
    return int(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for key, value in item.user_properties:
            if key == "orchestrator_seed":
                report.sections.append(("orchestrator", f"replay with --orchestrator-seed={value}"))


@pytest.fixture
def sim_clock() -> SimClock:
    """A simulated clock: time moves only when the test (or the simulation) advances it."""
    return SimClock()


@pytest.fixture
def fault_plan() -> FaultPlan:
    """An empty ``FaultPlan`` used by ``sim``; add crashes with
    ``fault_plan.faults.append(Fault("after_commit", stage=...))`` before the run."""
    return FaultPlan()


@pytest.fixture
def sim(orchestrator_seed: int, sim_clock: SimClock, fault_plan: FaultPlan) -> Callable[..., Simulation]:
    """A factory: ``sim(pipeline, **options)`` is a ``Simulation`` of ``pipeline`` on the
    in-memory backend with this test's seed, ``sim_clock`` and ``fault_plan`` (options override)."""

    def make(pipeline: Pipeline, **options: Any) -> Simulation:
        options.setdefault("seed", orchestrator_seed)
        options.setdefault("faults", fault_plan)
        options.setdefault("clock", sim_clock)
        return Simulation(pipeline, **options)

    return make
