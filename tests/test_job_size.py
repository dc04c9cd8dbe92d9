"""What a finished job costs in the job table: a step keeps its outbox only until what it sent
has arrived, and the stored record leaves out what holds its default. A finished two-stage
job (a queue hop or a topic hop between the stages) is at most 1.5 KB plus its own fields,
on every backend that stores bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import aws_test_env, drain
from moto import mock_aws

from orchestrator import JobStatus, Pipeline, Result
from orchestrator.backends import Backend, postgres_backend, sqlite_backend
from orchestrator.clock import SimClock

BUDGET = 1536


def two_stages(via_topic: bool) -> Pipeline:
    p = Pipeline("size")
    hop = {"publish_to": "between"} if via_topic else {"emit_to": "b"}
    p.stage("first", source="a", **hop)(
        lambda ctx, msg: Result(status=JobStatus.RUNNING, emit=[{"n": msg.payload["n"]}]))
    p.stage("second", source="b", **({"subscribe": ["between"]} if via_topic else {}))(
        lambda ctx, msg: Result(status=JobStatus.COMPLETED, fields={"total": msg.payload["n"] * 2}))
    return p


def stored_bytes(backend: Backend, job_id: str) -> int:
    """The bytes the backend holds for the job, besides its fields."""
    store = backend.store
    if hasattr(backend.transport, "db"):
        [(doc,)] = backend.transport.db.read("SELECT doc FROM jobs WHERE job_id=?", (job_id,))
        return len(doc.encode() if isinstance(doc, str) else bytes(doc))
    from orchestrator.stores.dynamodb import STATE, VERSION, DynamoDBStatusStore, item_bytes

    assert isinstance(store, DynamoDBStatusStore)
    item = store.client.get_item(TableName=store.table_name, Key={store.key_attr: job_id})["Item"]
    own = (store.key_attr, store.status_attr, VERSION, STATE, "user_id")
    return sum(len(k.encode()) + item_bytes(item[k]) for k in own if k in item)


@pytest.fixture(params=["sqlite", "postgres", "dynamodb"])
def storing_backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                    ) -> Iterator[Backend]:
    clock = SimClock()
    if request.param == "sqlite":
        b = sqlite_backend(tmp_path / "size.db", clock=clock)
    elif request.param == "postgres":
        b = postgres_backend(request.getfixturevalue("pg_url"), clock=clock)
    else:
        aws_test_env(monkeypatch)
        with mock_aws():
            from orchestrator.backends.aws import aws_backend

            b = aws_backend("aws://?region=us-east-1&prefix=size-", clock=clock)
            yield b
            return
    yield b
    b.close()


@pytest.mark.parametrize("via_topic", [False, True], ids=["queue", "topic"])
def test_a_finished_two_stage_job_fits_the_budget(storing_backend: Backend, via_topic: bool) -> None:
    p = two_stages(via_topic)
    p.setup(storing_backend)
    for n in range(3):
        p.submit(storing_backend, job_id=f"job-{n:06d}", payload={"n": n}, queue="a", user_id="ann")
    drain(storing_backend, p, "first")
    drain(storing_backend, p, "second")
    for n in range(3):
        job = storing_backend.store.get(f"job-{n:06d}")
        assert job is not None and job.status == JobStatus.COMPLETED and job.fields == {"total": n * 2}
        # what was sent arrived: no step carries it any longer, and the record reads whole
        assert all(s.outbox == [] for s in job.steps.values())
        assert job.steps["first"].stage == "first" and job.steps["first"].reason is None
        assert [h.event for h in job.history] == ["created", "begin", "commit", "commit"]
        assert stored_bytes(storing_backend, job.job_id) <= BUDGET + len('"total":4,')
