"""orchestrator: controller-pattern pipelines on message queues.

    from orchestrator import Pipeline, Result, PermanentError, JobStatus
"""

from orchestrator.backends import Backend, open_backend
from orchestrator.base import Delivery, QueueSpec
from orchestrator.clock import SimClock, SystemClock
from orchestrator.controllers import CRASH_POINTS, Controller, Fault, FaultPlan, Outcome, Worker
from orchestrator.envelope import Envelope
from orchestrator.errors import (
    ConfigError,
    ConflictError,
    MalformedMessage,
    OrchestratorError,
    PermanentError,
    RecordTooLarge,
    SimulatedCrash,
)
from orchestrator.pipeline import Context, Emit, Pipeline, Result, Snooze, Stage
from orchestrator.status import JobRecord, JobStatus

__all__ = [
    "CRASH_POINTS",
    "Backend",
    "ConfigError",
    "ConflictError",
    "Context",
    "Controller",
    "Delivery",
    "Emit",
    "Envelope",
    "Fault",
    "FaultPlan",
    "JobRecord",
    "JobStatus",
    "MalformedMessage",
    "OrchestratorError",
    "Outcome",
    "PermanentError",
    "RecordTooLarge",
    "Pipeline",
    "QueueSpec",
    "Result",
    "SimClock",
    "SimulatedCrash",
    "Snooze",
    "Stage",
    "SystemClock",
    "Worker",
    "open_backend",
]
