"""Test harness for pipelines: deterministic simulation, crash plans, invariants.

Point it at your own pipeline::

    from orchestrator.testing import Simulation, pipeline_property

See docs/tutorial.md, "Test your pipeline against crashes".
"""

from orchestrator.controllers.faults import CRASH_POINTS, Fault, FaultPlan
from orchestrator.testing.simulation import Report, Simulation, SimulationStuck
from orchestrator.testing.strategies import (
    Schedule,
    crash_plans,
    envelopes,
    pipeline_property,
    schedules,
    simulate,
)

__all__ = [
    "CRASH_POINTS",
    "Fault",
    "FaultPlan",
    "Report",
    "Schedule",
    "Simulation",
    "SimulationStuck",
    "crash_plans",
    "envelopes",
    "pipeline_property",
    "schedules",
    "simulate",
]
