import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from orchestrator.backends import Backend, memory_backend, sqlite_backend
from orchestrator.clock import SimClock

settings.register_profile("dev", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=500, deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each embedded backend on a simulated clock (the controller tests run on both)."""
    clock = SimClock()
    b = memory_backend(clock) if request.param == "memory" else sqlite_backend(tmp_path / "o.db", clock=clock)
    yield b
    b.close()
