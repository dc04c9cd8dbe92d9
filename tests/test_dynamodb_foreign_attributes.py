"""Whatever the DynamoDB store writes, an attribute another program writes to the same item
between our read and our write survives: a property over every kind of write the store makes
(begin, commit, fail, retried, note, snooze, cancel, retry, reset, fields), on an item our
submit created or one another program created (a GAS web app's), with the other program
setting and removing its attributes at each of those moments (moto)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from helpers import aws_test_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from orchestrator.errors import StoreError
from orchestrator.jobdoc import Doc
from orchestrator.status import BeginItem, CommitItem, JobStatus
from orchestrator.stores.dynamodb import DynamoDBStatusStore

REGION = "us-east-1"
JOB = "web-1"
#: what the other program (a GAS web app, its thaw script) writes; our fields have other names
THEIRS = ["thaw_status", "thaw_id", "results_file_archive_id", "s3_key_log_file", "complete_time"]
OURS = ["f_a", "f_b"]

#: (name, value): value None removes the attribute
FOREIGN = st.lists(st.tuples(st.sampled_from(THEIRS), st.one_of(st.none(), st.text(max_size=8), st.integers(0, 99))),
                   max_size=3)
OUR_FIELDS = st.dictionaries(st.sampled_from(OURS), st.one_of(st.none(), st.integers(0, 9)), max_size=2)
OPS = st.sampled_from(["begin", "commit", "fail", "retried", "note", "snooze", "cancel", "retry", "reset", "fields"])
STATUSES = st.sampled_from([None, JobStatus.RUNNING, JobStatus.COMPLETED])
STEPS = st.lists(st.tuples(OPS, st.sampled_from(["s", "t"]), FOREIGN, OUR_FIELDS, STATUSES), min_size=1, max_size=10)
Step = tuple[str, str, list[tuple[str, Any]], dict[str, Any], JobStatus | None]


class Interleaved(DynamoDBStatusStore):
    """The store, with the other program's write made right after each read of ours."""

    pending: Callable[[], None] | None = None

    def _load(self, job_id: str) -> Doc | None:
        doc = super()._load(job_id)
        self.interleave()
        return doc

    def get_docs(self, job_ids: Any) -> dict[str, Doc]:
        docs = super().get_docs(job_ids)
        self.interleave()
        return docs

    def interleave(self) -> None:
        write, self.pending = self.pending, None
        if write is not None:
            write()


def _their_write(table: Any, writes: list[tuple[str, Any]], model: dict[str, Any]) -> Callable[[], None]:
    def write() -> None:
        for name, value in writes:
            if value is None:
                table.update_item(Key={"job_id": JOB}, UpdateExpression="REMOVE #n", ExpressionAttributeNames={"#n": name})
                model.pop(name, None)
            else:
                table.update_item(Key={"job_id": JOB}, UpdateExpression="SET #n = :v",
                                  ExpressionAttributeNames={"#n": name}, ExpressionAttributeValues={":v": value})
                model[name] = value
    return write


def _ours(store: Interleaved, op: str, stage: str, fields: dict[str, Any], status: JobStatus | None) -> None:
    """One write of ours; a step's lease is its stage's (``c-<stage>``)."""
    if op == "begin":
        store.begin_docs([BeginItem(JOB, stage, "m", f"c-{stage}", 1, "{}", "q")], known=store.get_docs([JOB]))
    elif op == "commit":
        store.commit_docs([CommitItem(JOB, stage, "m", f"c-{stage}", status, fields)], known=store.get_docs([JOB]))
    elif op == "fail":
        store.fail(JOB, stage=stage, message_id="m", claim=None, reason="boom", dead_letter=False)
    elif op == "retried":
        store.retried(JOB, stage=stage, message_id="m", claim=None, delay_s=1.0,
                      error={"type": "RuntimeError", "message": "flaky", "traceback": "", "attempt": 1, "at": 1.0})
    elif op == "note":
        store.note(JOB, event="released", stage=stage, message_id="m", reason="stopping")
    elif op == "snooze":
        store.snooze(JOB, stage=stage, message_id="m", claim=None, reason="not yet", until=100.0, fields=fields)
    elif op == "cancel":
        store.cancel(JOB, reason="the user asked")
    elif op == "retry":
        store.retry(JOB, stage=stage, message_id="m", input_body="{}", source="q", reason="again")
    elif op == "reset":
        store.reset(JOB, stage=stage, reason="redrive")
    else:
        store.update_fields(JOB, fields)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # one mock for the whole test, each example on a table of its own: a mock started and
    # stopped per example (a new boto3 session each time) made the moto tests after it slower
    aws_test_env(monkeypatch)
    with mock_aws():
        yield


def _run(adopted: bool, first: list[tuple[str, Any]], steps: list[Step]) -> set[str]:
    """Run ``steps`` with their writes of theirs interleaved, checking the property after each,
    on a table of its own (inside the test's one moto mock); the kinds of write of ours that
    went through."""
    name = f"jobs-{uuid.uuid4().hex[:8]}"
    store = Interleaved(name, region=REGION)
    table = boto3.resource("dynamodb", region_name=REGION).Table(name)
    theirs: dict[str, Any] = {}
    if adopted:  # the web app made the item: ours is the first framework write to it
        table.put_item(Item={"job_id": JOB, "user_id": "u", "job_status": "PENDING"})
    else:
        store.create(JOB, user_id="u")
    _their_write(table, first, theirs)()
    wrote: set[str] = set()
    for op, stage, writes, fields, status in steps:
        before = table.get_item(Key={"job_id": JOB})["Item"].get("orc_version")
        store.pending = _their_write(table, writes, theirs)
        with contextlib.suppress(StoreError):  # the rule refused (a commit with no running step...)
            _ours(store, op, stage, fields, status)
        store.interleave()  # a write of theirs not made yet (our write read nothing) is made now
        item = table.get_item(Key={"job_id": JOB})["Item"]
        if item.get("orc_version") != before:
            wrote.add(op)
        # Then every attribute of theirs holds what they last wrote, whatever we wrote since
        assert {k: item[k] for k in THEIRS if k in item} == theirs, (op, item)
        # and the item is still one our store reads, their attributes among its fields
        doc = store.get_docs([JOB])[JOB]
        assert {k: doc["fields"][k] for k in THEIRS if k in doc["fields"]} == theirs
        assert item["job_status"] in {s.value for s in JobStatus}
    table.delete()
    return wrote


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(adopted=st.booleans(), first=FOREIGN, steps=STEPS)
def test_their_attributes_survive_every_write_of_ours(aws_env: None, adopted: bool, first: list[tuple[str, Any]],
                                                     steps: list[Step]) -> None:
    _run(adopted, first, steps)


@pytest.mark.parametrize("adopted", [False, True])
def test_every_kind_of_write_of_ours_is_among_those_checked(aws_env: None, adopted: bool) -> None:
    # A lifecycle in which each kind of write goes through once, theirs interleaved at each
    theirs = [("thaw_status", "IN_PROGRESS"), ("thaw_id", None), ("complete_time", 7)]
    plan = ["begin", "snooze", "retried", "note", "fields", "commit", "fail", "retry", "fail", "reset", "cancel"]
    steps: list[Step] = [(op, "t" if op in ("fail", "retry", "reset") else "s", theirs[i % 3:i % 3 + 1],
                          {"f_a": i}, JobStatus.RUNNING) for i, op in enumerate(plan)]
    assert _run(adopted, [("thaw_id", "t-0")], steps) == set(plan)
