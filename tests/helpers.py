"""Small drivers shared by the tests."""

from __future__ import annotations

from orchestrator import Controller, Pipeline
from orchestrator.backends import Backend
from orchestrator.clock import SimClock
from orchestrator.controllers.controller import Outcome


def drain(backend: Backend, pipeline: Pipeline, stage: str, *, max_rounds: int = 1000) -> list[Outcome]:
    """Process ``stage``'s queue to empty on a SimClock-driven backend, advancing time over
    delays and leases; returns the outcomes in order."""
    clock = backend.clock
    assert isinstance(clock, SimClock)
    st = pipeline.get(stage)
    ctrl = Controller(pipeline, st, backend, seed=1)
    outcomes: list[Outcome] = []
    for _ in range(max_rounds):
        got = backend.transport.receive(st.source, max_messages=10, wait_s=0, visibility_s=st.visibility_timeout_s)
        if not got:
            if backend.transport.depth(st.source).total == 0:
                return outcomes
            clock.advance(max(st.retry_max_s, st.visibility_timeout_s) + 1)
            continue
        outcomes += ctrl.handle_batch(got)
    raise AssertionError(f"{stage} did not drain")


def aws_test_env(monkeypatch: object) -> None:
    """What a moto test needs in the environment: fake credentials, a region, no endpoint."""
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
