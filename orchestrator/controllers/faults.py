"""Named crash points and the plans that fire them.

A ``FaultPlan`` matches (crash point, stage, job or message, attempt) and either raises
``SimulatedCrash`` (in-process tests: the controller's state is dropped, the queue and store
keep what was written) or ends the process at once with ``os._exit`` (real-process tests).
A plan can come from the environment (``ORCHESTRATOR_FAULTS``, JSON) for worker processes.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.errors import ConfigError, SimulatedCrash

CRASH_POINTS = ("after_receive", "after_begin", "after_handle", "after_commit", "after_emit", "after_ack")
FAULTS_ENV = "ORCHESTRATOR_FAULTS"
EXIT_CODE = 137  # what a SIGKILLed process reports, so tests can't tell the two apart


@dataclass(frozen=True)
class Fault:
    point: str
    stage: str | None = None
    job_id: str | None = None
    message_id: str | None = None
    attempt: int | None = None  # the delivery's receive count; None: any
    times: int = 1  # how often it fires; 0: every time it matches

    def __post_init__(self) -> None:
        if self.point not in CRASH_POINTS:
            raise ConfigError(f"unknown crash point {self.point!r}; known: {', '.join(CRASH_POINTS)}")

    def matches(self, point: str, stage: str, job_id: str | None, message_id: str, attempt: int) -> bool:
        return (
            self.point == point
            and self.stage in (None, stage)
            and self.job_id in (None, job_id)
            and self.message_id in (None, message_id)
            and self.attempt in (None, attempt)
        )


@dataclass
class FaultPlan:
    faults: list[Fault] = field(default_factory=list)
    action: Literal["raise", "exit"] = "raise"
    fired: list[tuple[str, str, str | None, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # how often each fault fired, by position; a dict, so faults appended later count too
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, faults: Iterable[Fault], *, action: Literal["raise", "exit"] = "raise") -> FaultPlan:
        return cls(list(faults), action=action)

    @classmethod
    def from_env(cls) -> FaultPlan | None:
        raw = os.environ.get(FAULTS_ENV)
        if not raw:
            return None
        try:
            items = json.loads(raw)
            return cls([Fault(**f) for f in items], action="exit")
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{FAULTS_ENV} is not a JSON list of faults: {exc}") from exc

    def check(self, point: str, *, stage: str, job_id: str | None, message_id: str, attempt: int) -> None:
        with self._lock:
            for i, f in enumerate(self.faults):
                if f.matches(point, stage, job_id, message_id, attempt) and (
                        f.times == 0 or self._counts.get(i, 0) < f.times):
                    self._counts[i] = self._counts.get(i, 0) + 1
                    self.fired.append((point, stage, job_id, attempt))
                    break
            else:
                return
        if self.action == "exit":
            os._exit(EXIT_CODE)
        raise SimulatedCrash(point, (stage, job_id, message_id, attempt))
