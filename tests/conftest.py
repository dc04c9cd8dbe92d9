import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from pg import drop_schema, new_schema, server_url, with_schema

from orchestrator.backends import Backend, memory_backend, postgres_backend, sqlite_backend
from orchestrator.clock import SimClock

settings.register_profile("dev", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=500, deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL server the tests use (see tests/pg.py)."""
    return server_url()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A ``postgresql://`` backend URL on a schema of its own, dropped afterwards."""
    schema = new_schema()
    yield with_schema(pg_server, schema)
    drop_schema(pg_server, schema)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend on a simulated clock (the controller tests run on all three)."""
    clock = SimClock()
    if request.param == "postgres":
        b = postgres_backend(request.getfixturevalue("pg_url"), clock=clock)
    elif request.param == "sqlite":
        b = sqlite_backend(tmp_path / "o.db", clock=clock)
    else:
        b = memory_backend(clock)
    yield b
    b.close()
