"""The controller loop and its runtime."""

from orchestrator.controllers.controller import Controller, Outcome
from orchestrator.controllers.faults import CRASH_POINTS, Fault, FaultPlan
from orchestrator.controllers.worker import Worker

__all__ = ["CRASH_POINTS", "Controller", "Fault", "FaultPlan", "Outcome", "Worker"]
