"""The contract suite on the AWS adapters (moto), plus SQS/SNS/DynamoDB behaviour of their own."""

from __future__ import annotations

import datetime
import json
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import boto3
import moto.core.utils
import pytest
from botocore.exceptions import ClientError
from contract import (
    BatchStoreContract,
    StatusStoreContract,
    TopicContract,
    TransportContract,
    UnitContract,
    make_queue,
    one,
)
from moto import mock_aws

from orchestrator import records
from orchestrator.base import Backend, Outgoing, QueueSpec
from orchestrator.clock import SimClock, SystemClock
from orchestrator.codec import Codec
from orchestrator.envelope import Envelope
from orchestrator.errors import BodyTooLarge, InvalidKey, ObjectNotFound
from orchestrator.objects.s3 import S3ObjectStore
from orchestrator.status import CommitItem, JobStatus
from orchestrator.stores.dynamodb import DynamoDBStatusStore
from orchestrator.transports.sns import SnsTopic
from orchestrator.transports.sqs import SqsTransport

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield


@pytest.fixture
def advance_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Move moto's clock (visibility, delays) forward without sleeping."""
    offset = [0.0]
    real = moto.core.utils.utcnow
    monkeypatch.setattr(moto.core.utils, "utcnow", lambda: real() + datetime.timedelta(seconds=offset[0]))

    def advance(seconds: float) -> None:
        offset[0] += seconds

    return advance


SQS_LIMIT = 256 * 1024  # per message (body + attributes) and per batch request


def _aws_error(code: str, message: str, op: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, op)


def message_size(body: str, attributes: dict[str, Any] | None) -> int:
    """SQS's measure: the body plus each attribute's name, data type and value."""
    return len(body.encode()) + sum(len(k.encode()) + len(v["DataType"].encode()) + len(v["StringValue"].encode())
                                    for k, v in (attributes or {}).items())


class StrictSqs:
    """An SQS client that enforces the limits AWS enforces and moto does not: ten entries
    per batch call, 256 KiB per message counting its attributes, 256 KiB per batch request."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def send_message(self, **kw: Any) -> Any:
        if message_size(kw["MessageBody"], kw.get("MessageAttributes")) > SQS_LIMIT:
            raise _aws_error("InvalidParameterValue", "message too long", "SendMessage")
        return self.inner.send_message(**kw)

    def send_message_batch(self, **kw: Any) -> Any:
        entries = kw["Entries"]
        if len(entries) > 10:
            raise _aws_error("AWS.SimpleQueueService.TooManyEntriesInBatchRequest", "too many", "SendMessageBatch")
        sizes = [message_size(e["MessageBody"], e.get("MessageAttributes")) for e in entries]
        if any(size > SQS_LIMIT for size in sizes):
            raise _aws_error("InvalidParameterValue", "message too long", "SendMessageBatch")
        if sum(sizes) > SQS_LIMIT:
            raise _aws_error("AWS.SimpleQueueService.BatchRequestTooLong", "batch too long", "SendMessageBatch")
        return self.inner.send_message_batch(**kw)

    def delete_message_batch(self, **kw: Any) -> Any:
        if len(kw["Entries"]) > 10:
            raise _aws_error("AWS.SimpleQueueService.TooManyEntriesInBatchRequest", "too many", "DeleteMessageBatch")
        return self.inner.delete_message_batch(**kw)


class MotoClock(SystemClock):
    """moto's clock (which ``advance_clock`` moves) as the transport's: a chained delay's due
    time and moto's own delays then run on one time line the test controls."""

    def now(self) -> float:
        return moto.core.utils.utcnow().replace(tzinfo=datetime.UTC).timestamp()


@pytest.fixture
def transport() -> SqsTransport:
    return SqsTransport(prefix="t-", region=REGION, sqs_client=StrictSqs(boto3.client("sqs", region_name=REGION)),
                        clock=MotoClock())


@pytest.fixture
def topic(transport: SqsTransport) -> SnsTopic:
    return SnsTopic(transport, prefix="t-", region=REGION)


class TestSqs(TransportContract):
    # moto accepts stale receipt handles for delete and visibility changes (real SQS "may"
    # not delete); fencing of stale holders is done by the store's claim, tested elsewhere.
    fences_stale_receipts = False
    # moto's concurrent receives occasionally hand out one message twice.
    exclusive_concurrent_receive = False
    # a queue per priority band; SQS orders no queue
    orders_within_priority = False


class TestSns(TopicContract):
    pass


class SerialClient:
    """A boto3 client whose calls run one at a time. moto checks a write's condition and then
    applies the write as two steps with no lock between, so two threads can both pass the check;
    DynamoDB does both atomically. The contract is about DynamoDB's semantics, not moto's race."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return call


class TestDynamoDB(StatusStoreContract, BatchStoreContract):
    @pytest.fixture
    def store(self) -> DynamoDBStatusStore:
        store = DynamoDBStatusStore("t-jobs", region=REGION, clock=SimClock())
        store.client = SerialClient(store.client)
        return store


class TestAwsUnit(UnitContract):
    """SQS, SNS and DynamoDB together: a unit applies its writes in order."""

    transactional = False

    @pytest.fixture
    def backend(self, transport: SqsTransport, topic: SnsTopic) -> Backend:
        store = DynamoDBStatusStore("t-jobs", region=REGION, clock=SimClock())
        return Backend(transport=transport, topic=topic, store=store, clock=MotoClock())


def test_redrive_policy_moves_a_message_to_the_dlq_after_max_receives(transport: SqsTransport,
                                                                       advance_clock: Callable[[float], None]) -> None:
    transport.ensure_queue(QueueSpec("rq", visibility_timeout_s=5, max_receives=1, dead_letter="rq-dlq"))
    transport.send("rq", Outgoing(body="poison"))
    for _ in range(3):  # max_receives + REDRIVE_SLACK receives, never deleted
        one(transport, "rq", vis=1)
        advance_clock(2)
    assert transport.receive("rq", max_messages=1, wait_s=0, visibility_s=1) == []
    assert [d.body for d in transport.peek("rq-dlq", 10)] == ["poison"]
    spec = transport.spec("rq")
    assert spec is not None and spec.dead_letter == "rq-dlq" and spec.max_receives == 1


def test_ensure_queue_is_idempotent_with_changed_settings(transport: SqsTransport) -> None:
    transport.ensure_queue(QueueSpec("iq", visibility_timeout_s=5, dead_letter="iq-dlq"))
    transport.ensure_queue(QueueSpec("iq", visibility_timeout_s=9, dead_letter="iq-dlq"))
    spec = transport.spec("iq")
    assert spec is not None and spec.visibility_timeout_s == 9


def test_fifo_queues_group_by_job_and_dedup_by_envelope_id(transport: SqsTransport) -> None:
    transport.ensure_queue(QueueSpec("f.fifo", dead_letter="f-dlq.fifo", fifo=True))
    for body, mid, group in [("a1", "m1", "jobA"), ("a1-again", "m1", "jobA"), ("a2", "m2", "jobA"), ("b1", "m3", "jobB")]:
        transport.send("f.fifo", Outgoing(body=body, message_id=mid, group_id=group))
    got = transport.receive("f.fifo", max_messages=10, wait_s=0, visibility_s=30)
    bodies = [d.body for d in got]
    assert "a1-again" not in bodies  # deduplicated by the envelope id
    assert bodies.index("a1") < bodies.index("a2") if "a2" in bodies else True


def test_sns_fans_out_wrapped_and_raw_with_a_queue_policy(transport: SqsTransport, topic: SnsTopic) -> None:
    a, b = make_queue(transport), make_queue(transport)
    topic.subscribe("results", a, raw=True)
    topic.subscribe("results", b, raw=False)
    env = Envelope(task="results", job_id="j", payload={"k": 1})
    topic.publish("results", env.to_json(), message_id=env.id)
    assert Codec().decode(one(transport, a).body) == env
    wrapped = one(transport, b)
    assert json.loads(wrapped.body)["Type"] == "Notification" and Codec().decode(wrapped.body) == env
    policy = json.loads(transport.sqs.get_queue_attributes(QueueUrl=transport.url(a), AttributeNames=["Policy"])
                        ["Attributes"]["Policy"])
    assert policy["Statement"][0]["Principal"] == {"Service": "sns.amazonaws.com"}
    assert sorted(topic.subscriptions("results")) == sorted([(a, True), (b, False)])


def test_sns_filter_policy_routes_by_attribute(transport: SqsTransport, topic: SnsTopic) -> None:
    a = make_queue(transport)
    topic.subscribe("t", a, raw=True, filter_policy={"message_id": ["keep"]})
    topic.publish("t", "drop-me", message_id="drop")
    topic.publish("t", "keep-me", message_id="keep")
    assert [d.body for d in transport.receive(a, max_messages=10, wait_s=0, visibility_s=5)] == ["keep-me"]


def test_oversize_sqs_bodies_are_refused_before_sending(transport: SqsTransport) -> None:
    q = make_queue(transport)
    with pytest.raises(BodyTooLarge):
        transport.send_batch(q, [Outgoing(body="x"), Outgoing(body="y" * (256 * 1024 + 1))])
    assert transport.depth(q).total == 0  # nothing of the batch was sent


def test_batches_are_split_by_total_size_and_attributes_count_toward_the_limit(transport: SqsTransport) -> None:
    q = make_queue(transport)
    # ten 60 KB messages: ten entries fit one call, 600 KB does not
    bodies = [str(i) * 60_000 for i in range(10)]
    # and a body as large as the transport accepts still fits with our message-id attribute
    bodies.append("z" * transport.max_body_bytes)
    transport.send_batch(q, [Outgoing(body=b) for b in bodies])
    got = []
    while batch := transport.receive(q, max_messages=10, wait_s=0, visibility_s=30):
        got += batch
    assert sorted(d.body for d in got) == sorted(bodies)
    # dead-lettering adds a reason attribute: the largest message still moves to the DLQ
    [big] = [d for d in got if d.body.startswith("z")]
    transport.dead_letter(big, "r" * 5000)
    [moved] = transport.peek(f"{q}-dlq", 10)
    assert moved.body == big.body and moved.attributes["dead_letter_reason"].startswith("r")


class FlakyBatches:
    """Wraps an SQS client so that the first call of each batch kind fails one entry."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failed: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _flaky(self, name: str, **kwargs: Any) -> Any:
        if name in self.failed:
            return getattr(self.inner, name)(**kwargs)
        self.failed.add(name)
        entries = kwargs["Entries"]
        victim, rest = entries[0], entries[1:]
        resp = getattr(self.inner, name)(**dict(kwargs, Entries=rest)) if rest else {"Successful": []}
        resp.setdefault("Failed", []).append({"Id": victim["Id"], "SenderFault": False, "Code": "InternalError",
                                              "Message": "injected"})
        return resp

    def send_message_batch(self, **kwargs: Any) -> Any:
        return self._flaky("send_message_batch", **kwargs)

    def delete_message_batch(self, **kwargs: Any) -> Any:
        return self._flaky("delete_message_batch", **kwargs)


def test_a_partially_failed_batch_retries_the_failed_entries() -> None:
    t = SqsTransport(prefix="p-", region=REGION, sqs_client=FlakyBatches(boto3.client("sqs", region_name=REGION)))
    q = make_queue(t)
    t.send_batch(q, [Outgoing(body=str(i)) for i in range(25)])  # three chunks; one entry fails once
    got = []
    while batch := t.receive(q, max_messages=10, wait_s=0, visibility_s=30):
        got += batch
    assert sorted(int(d.body) for d in got) == list(range(25))
    t.ack_batch(got)
    assert t.depth(q).total == 0


def test_dynamodb_adopts_items_written_by_another_program() -> None:
    store = DynamoDBStatusStore("gas-annotations", region=REGION)
    boto3.resource("dynamodb", region_name=REGION).Table("gas-annotations").put_item(Item={
        "job_id": "web-1", "user_id": "u", "job_status": "PENDING", "input_file_name": "a.vcf", "submit_time": 1700000000})
    rec = store.get("web-1")
    assert rec is not None and rec.version == 0 and rec.fields["input_file_name"] == "a.vcf"
    assert store.create("web-1")[1] is False  # never overwrites the web app's item
    records.begin_step(store, "web-1", stage="annotate", message_id="m", claim="c", attempt=1)
    records.commit_step(store, "web-1", stage="annotate", message_id="m", claim="c", status=JobStatus.COMPLETED,
                      fields={"complete_time": 1700000100, "ratio": 0.25, "nested": {"a": [1, 2.5]}}, outbox=[])
    item = boto3.resource("dynamodb", region_name=REGION).Table("gas-annotations").get_item(Key={"job_id": "web-1"})["Item"]
    assert item["job_status"] == "COMPLETED" and item["input_file_name"] == "a.vcf" and item["complete_time"] == 1700000100
    got = store.get("web-1")
    assert got is not None and got.fields["ratio"] == 0.25 and got.fields["nested"] == {"a": [1, 2.5]}
    assert [r.job_id for r in store.query(user_id="u")] == ["web-1"]


def test_attributes_another_program_writes_between_our_read_and_our_commit_survive() -> None:
    # Given a job the GAS web app created, begun by our worker, and read by it before its commit
    store = DynamoDBStatusStore("gas-annotations", region=REGION)
    table = boto3.resource("dynamodb", region_name=REGION).Table("gas-annotations")
    table.put_item(Item={"job_id": "web-1", "user_id": "u", "job_status": "PENDING", "thaw_status": "none"})
    records.begin_step(store, "web-1", stage="restore", message_id="m", claim="c", attempt=1)
    known = store.get_docs(["web-1"])
    # When the app's own thaw script writes its attributes in between (not touching our version)
    table.update_item(Key={"job_id": "web-1"}, UpdateExpression="SET thaw_id = :i, thaw_status = :s",
                      ExpressionAttributeValues={":i": "t-1", ":s": "IN_PROGRESS"})
    # and our commit goes through on the version it read (no second read: the window is real)
    [done] = store.commit_docs([CommitItem("web-1", "restore", "m", "c", JobStatus.COMPLETED,
                                           {"restored": True})], known=known)
    assert not isinstance(done, Exception)
    # Then the app's attributes survive beside ours, its newer value too
    item = table.get_item(Key={"job_id": "web-1"})["Item"]
    assert item["thaw_id"] == "t-1" and item["thaw_status"] == "IN_PROGRESS"
    assert item["restored"] is True and item["job_status"] == "COMPLETED"
    rec = store.get("web-1")
    assert rec is not None and rec.steps["restore"].state == "committed" and rec.fields["thaw_id"] == "t-1"
    # and a field our rule drops is removed, while theirs stay
    records.commit_step(store, "web-1", stage="notify", message_id="m2", claim=None, status=None, fields={"restored": None},
                      outbox=[])
    item = table.get_item(Key={"job_id": "web-1"})["Item"]
    assert "restored" not in item and item["thaw_id"] == "t-1"


def test_dynamodb_reads_items_in_the_earlier_layout_and_rewrites_them_in_the_current_one() -> None:
    # Given an item as the previous release wrote it: steps, history, timestamps, origin apart
    store = DynamoDBStatusStore("legacy-jobs", region=REGION)
    origin = {"kind": "queue", "target": "in", "id": "m0", "body": "{}"}
    table = boto3.resource("dynamodb", region_name=REGION).Table("legacy-jobs")
    table.put_item(Item={
        "job_id": "old", "user_id": "u", "job_status": "RUNNING", "orc_version": 3, "result_key": "r/old",
        "orc_steps": json.dumps({"annotate": {"stage": "annotate", "message_id": "m1", "state": "committed",
                                              "outbox": [origin]}}),
        "orc_history": json.dumps([{"at": 1.5, "event": "created", "to_status": "PENDING"}]),
        "orc_created_at": Decimal("1.5"), "orc_updated_at": Decimal("2.5"), "orc_origin": json.dumps(origin)})
    # When it is read and then written once
    rec = store.get("old")
    assert rec is not None and rec.version == 3 and rec.fields == {"result_key": "r/old"}
    assert rec.steps["annotate"].outbox[0].id == "m0" and rec.history[0].event == "created"
    assert (rec.created_at, rec.updated_at) == (1.5, 2.5) and rec.origin is not None and rec.origin.target == "in"
    records.commit_step(store, "old", stage="notify", message_id="m2", claim=None, status=None, fields={}, outbox=[])
    # Then nothing was lost, and the item holds the current layout only
    item = table.get_item(Key={"job_id": "old"})["Item"]
    assert "orc_state" in item and not {"orc_steps", "orc_history", "orc_origin", "orc_created_at"} & set(item)
    again = store.get("old")
    assert again is not None and set(again.steps) == {"annotate", "notify"} and again.origin == rec.origin
    assert again.fields == {"result_key": "r/old"} and again.created_at == 1.5 and again.version == 4


def test_s3_object_store_round_trip_and_key_validation() -> None:
    s3 = S3ObjectStore("t-objects", region=REGION)
    s3.put("a/b.txt", b"hello")
    assert s3.get("a/b.txt") == b"hello" and s3.exists("a/b.txt")
    assert "t-objects" in s3.url("a/b.txt")
    s3.delete("a/b.txt")
    s3.delete("a/b.txt")
    assert not s3.exists("a/b.txt")
    with pytest.raises(ObjectNotFound):
        s3.get("a/b.txt")
    for bad in ("../x", "/abs", "a/../../b", "nul\x00"):
        with pytest.raises(InvalidKey):
            s3.put(bad, b"")
    # a file read in parts (multipart past 8 MB), into the prefix and storage class the store has
    import io

    big = bytes(range(256)) * (9 * 4096 + 7)  # 9.4 MB
    archive = S3ObjectStore("t-objects", region=REGION, prefix="p/", storage_class="STANDARD_IA")
    archive.put_file("big.bin", io.BytesIO(big))
    assert archive.get("big.bin") == big
    head = archive.s3.head_object(Bucket="t-objects", Key="p/big.bin")
    assert head.get("StorageClass") == "STANDARD_IA" and head["ContentLength"] == len(big)


def test_large_bodies_travel_by_claim_check_when_the_stage_asks() -> None:
    from orchestrator import JobStatus, Pipeline, Result, Worker
    from orchestrator.backends.aws import aws_backend
    from orchestrator.controllers.controller import Outcome

    backend = aws_backend("aws://?region=us-east-1&prefix=cc-")
    big = "ACGT" * 100_000  # 400 KB: over SQS's 256 KiB
    p = Pipeline("cc")
    p.stage("make", source="in", emit_to="out", offload_large_bodies=True, wait_s=0)(
        lambda ctx, msg: Result(status=JobStatus.RUNNING, emit=[{"seq": big}]))
    p.stage("refuse", source="in2", emit_to="out2", wait_s=0)(
        lambda ctx, msg: Result(status=JobStatus.RUNNING, emit=[{"seq": big}]))
    p.stage("use", source="out", max_body_bytes=1_000_000, wait_s=0)(
        lambda ctx, msg: Result(status=JobStatus.COMPLETED, fields={"length": len(msg.payload["seq"])}))
    p.setup(backend)
    p.submit(backend, job_id="j", payload={}, queue="in")
    p.submit(backend, job_id="k", payload={}, queue="in2")
    for stage in ("make", "use"):
        Worker(p, stage, backend, wait_s=0).run(until_idle=True)
    job = backend.store.get("j")
    assert job is not None and job.status == JobStatus.COMPLETED and job.fields["length"] == len(big)
    assert backend.objects is not None and backend.objects.exists(f"claim-check/{job.steps['use'].message_id}")
    # without the stage's consent an oversize emit fails the step before anything is committed
    w = Worker(p, "refuse", backend, wait_s=0)
    w.run(until_idle=True)
    k = backend.store.get("k")
    assert k is not None and k.status == JobStatus.FAILED and w.count(Outcome.FAILED) == 1
    limit = backend.transport.max_body_bytes
    assert f"over the queue's {limit}-byte limit (enable offload_large_bodies" in (k.history[-1].reason or "")


@pytest.mark.parametrize("offload", [False, True])
def test_a_record_that_would_outgrow_the_item_limit_fails_its_step_and_spares_its_batch(offload: bool) -> None:
    from orchestrator import JobStatus, Pipeline, Result, Worker
    from orchestrator.backends.aws import aws_backend

    # Given a stage whose handler emits two 220 KB bodies for one job: each fits SQS, but
    # together in the step's outbox they outgrow DynamoDB's 400 KB item
    backend = aws_backend(f"aws://?region=us-east-1&prefix=big{int(offload)}-")
    p = Pipeline("big")
    p.stage("make", source="in", emit_to="out", wait_s=0, offload_large_bodies=offload)(
        lambda ctx, msg: Result(status=JobStatus.RUNNING,
                                emit=[{"seq": c * (220_000 if msg.job_id == "big" else 10)} for c in "AC"]))
    p.setup(backend)
    for job in ("small-1", "big", "small-2"):
        p.submit(backend, job_id=job, payload={}, queue="in")
    # When one worker takes them in one batch
    w = Worker(p, "make", backend, wait_s=0)
    w.run(until_idle=True)
    # Then the big job's step fails at once with the reason (or, offloaded, commits), and its
    # batch-mates commit: nothing waits for a redelivery
    big = backend.store.get("big")
    assert big is not None
    if offload:
        assert big.status == JobStatus.RUNNING and big.steps["make"].state == "committed"
    else:
        assert big.status == JobStatus.FAILED and w.stats["failed"] == 1
        reason = big.history[-1].reason or ""
        assert "over the store's 409600-byte item limit" in reason and "offload_large_bodies" in reason
    for job in ("small-1", "small-2"):
        rec = backend.store.get(job)
        assert rec is not None and rec.status == JobStatus.RUNNING
    assert backend.transport.depth("in").total == 0
    assert backend.transport.depth("out").total == (6 if offload else 4)


def test_the_per_message_path_fails_an_outgrown_record_too() -> None:
    from orchestrator import Controller, JobStatus, Pipeline, Result
    from orchestrator.backends.aws import aws_backend
    from orchestrator.controllers.controller import Outcome

    backend = aws_backend("aws://?region=us-east-1&prefix=big-one-")
    p = Pipeline("big")
    p.stage("make", source="in", emit_to="out", wait_s=0)(
        lambda ctx, msg: Result(status=JobStatus.RUNNING, emit=[{"seq": c * 220_000} for c in "AC"]))
    p.setup(backend)
    p.submit(backend, job_id="big", payload={}, queue="in")
    [d] = backend.transport.receive("in", max_messages=1, wait_s=0, visibility_s=30)
    assert Controller(p, p.get("make"), backend).handle(d) == Outcome.FAILED
    big = backend.store.get("big")
    assert big is not None and big.status == JobStatus.FAILED and "item limit" in (big.history[-1].reason or "")
    assert backend.transport.depth("in").total == 0 and backend.transport.depth("out").total == 0


class PartialBatchGets:
    """A DynamoDB client whose first BatchGetItem answers for only half of the keys, as a
    throttled or 16 MB-capped call does; everything else passes through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def batch_get_item(self, RequestItems: dict[str, Any]) -> Any:
        self.calls += 1
        if self.calls > 1:
            return self.inner.batch_get_item(RequestItems=RequestItems)
        [(table, req)] = RequestItems.items()
        half = len(req["Keys"]) // 2
        resp = self.inner.batch_get_item(RequestItems={table: dict(req, Keys=req["Keys"][:half])})
        resp["UnprocessedKeys"] = {table: dict(req, Keys=req["Keys"][half:])}
        return resp


def test_unprocessed_keys_of_a_batch_get_are_asked_for_again() -> None:
    store = DynamoDBStatusStore("partial-jobs", region=REGION)
    store.client = ddb = PartialBatchGets(store.client)
    for i in range(7):
        store.create(f"j{i}")
    got = records.get_many(store, [f"j{i}" for i in range(7)] + ["missing"])
    assert sorted(got) == [f"j{i}" for i in range(7)] and ddb.calls == 2


def test_a_batch_get_that_never_completes_backs_off_then_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.stores.dynamodb as dynamodb_module
    from orchestrator.errors import StoreError

    class NeverAnswers(PartialBatchGets):
        def batch_get_item(self, RequestItems: dict[str, Any]) -> Any:
            self.calls += 1
            return {"Responses": {}, "UnprocessedKeys": RequestItems}

    delays: list[float] = []
    monkeypatch.setattr(dynamodb_module.time, "sleep", delays.append)
    store = DynamoDBStatusStore("stuck-jobs", region=REGION)
    store.client = NeverAnswers(store.client)
    with pytest.raises(StoreError, match="unprocessed"):
        records.get_many(store, ["a", "b"])
    assert len(delays) == dynamodb_module.UNPROCESSED_RETRIES
    assert delays == sorted(delays) and delays[0] < delays[-1] <= 2.0


def test_a_fifo_source_gets_a_fifo_dead_letter_queue_and_dead_letters_into_it() -> None:
    from orchestrator import JobStatus, Pipeline, Result, Worker
    from orchestrator.backends.aws import aws_backend
    from orchestrator.base import Outgoing as Out

    # Given a stage reading a FIFO queue (AWS refuses "in.fifo-dlq": the suffix must come last)
    backend = aws_backend("aws://?region=us-east-1&prefix=ff-")
    p = Pipeline("ff")
    p.stage("make", source="in.fifo", wait_s=0)(lambda ctx, msg: Result(status=JobStatus.COMPLETED))
    p.setup(backend)
    assert p.get("make").dead_letter_queue == "in-dlq.fifo"
    # When a good job and an unreadable message arrive
    p.submit(backend, job_id="j", payload={}, queue="in.fifo")
    backend.transport.send("in.fifo", Out(body="not json", group_id="g"))
    Worker(p, "make", backend, wait_s=0).run(until_idle=True)
    # Then the job completes and the bad message sits in the FIFO dead-letter queue
    job = backend.store.get("j")
    assert job is not None and job.status == JobStatus.COMPLETED
    assert [d.body for d in backend.transport.peek("in-dlq.fifo", 10)] == ["not json"]


def test_a_dead_letter_queue_of_the_wrong_type_is_refused_at_start() -> None:
    from orchestrator import Pipeline, Result

    p = Pipeline("ff")
    p.stage("make", source="in.fifo", dead_letter="in-dlq", wait_s=0)(lambda ctx, msg: Result())
    assert any("must be a FIFO queue exactly when" in problem for problem in p.get("make").problems(max_visibility_s=43200, max_delay_s=900))


def test_a_fifo_topic_fans_out_to_fifo_queues() -> None:
    from orchestrator import JobStatus, Pipeline, Result, Worker
    from orchestrator.backends.aws import aws_backend

    # Given requests published to a FIFO topic (SNS needs FifoTopic and a MessageGroupId)
    backend = aws_backend("aws://?region=us-east-1&prefix=ft-")
    p = Pipeline("ft")
    p.stage("first", source="in.fifo", subscribe=("requests.fifo",), publish_to="events.fifo", wait_s=0)(
        lambda ctx, msg: Result(status=JobStatus.RUNNING, emit=[{"n": msg.payload["n"]}]))
    p.stage("second", source="b.fifo", subscribe=("events.fifo",), wait_s=0)(
        lambda ctx, msg: Result(status=JobStatus.COMPLETED, fields={"n": msg.payload["n"]}))
    p.setup(backend)
    for i in range(3):
        p.submit(backend, job_id=f"j{i}", payload={"n": i}, topic="requests.fifo")
    # When both stages run
    for stage in ("first", "second"):
        Worker(p, stage, backend, wait_s=0).run(until_idle=True)
    # Then every job went through both FIFO hops
    for i in range(3):
        job = backend.store.get(f"j{i}")
        assert job is not None and job.status == JobStatus.COMPLETED and job.fields["n"] == i


def test_a_fifo_topic_subscription_needs_a_fifo_source() -> None:
    from orchestrator import Pipeline, Result

    p = Pipeline("ft")
    p.stage("s", source="plain", subscribe=("events.fifo",), wait_s=0)(lambda ctx, msg: Result())
    assert any("delivers only to FIFO queues" in x for x in p.get("s").problems(max_visibility_s=43200, max_delay_s=900))


class NoExpeditedCapacity:
    """An S3 client out of expedited Glacier capacity, as S3 answers with a 503; records tiers."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tiers: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def restore_object(self, **kw: Any) -> Any:
        tier = kw["RestoreRequest"]["GlacierJobParameters"]["Tier"]
        self.tiers.append(tier)
        if tier == "Expedited":
            raise ClientError({"Error": {"Code": "GlacierExpeditedRetrievalNotAvailable", "Message": "busy"}},
                              "RestoreObject")
        return self.inner.restore_object(**kw)


@pytest.mark.parametrize("storage_class, tiers", [("GLACIER", ["Expedited", "Standard"]),
                                                   ("DEEP_ARCHIVE", ["Standard"])])
def test_an_archived_object_is_restored_at_the_tier_s3_can_give(storage_class: str, tiers: list[str]) -> None:
    from orchestrator.errors import ObjectArchived

    client = NoExpeditedCapacity(boto3.client("s3", region_name=REGION))
    s3 = S3ObjectStore("t-archive", region=REGION, s3_client=client, storage_class=storage_class)
    s3.put("results/j.annot.vcf", b"annotated")
    with pytest.raises(ObjectArchived):
        s3.get("results/j.annot.vcf")
    assert client.tiers == tiers
    head = boto3.client("s3", region_name=REGION).head_object(Bucket="t-archive", Key="results/j.annot.vcf")
    assert "Restore" in head  # a restore was asked for (moto finishes it at once)


def test_presigned_urls_are_refused_past_sigv4s_seven_days() -> None:
    s3 = S3ObjectStore("t-urls", region=REGION)
    url = s3.url("k", expires_s=604800)
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "X-Amz-Expires=604800" in url
    for bad in (0, 604801):
        with pytest.raises(ValueError, match="expires_s"):
            s3.url("k", expires_s=bad)


class FlakySns:
    """An SNS client whose first PublishBatch fails its first entry on SNS's side (or, with
    ``sender_fault``, refuses it); records each call's entry count and payload size."""

    def __init__(self, inner: Any, *, sender_fault: bool = False) -> None:
        self.inner, self.sender_fault, self.calls = inner, sender_fault, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def publish_batch(self, **kw: Any) -> Any:
        entries = kw["PublishBatchRequestEntries"]
        self.calls.append((len(entries), sum(len(e["Message"]) for e in entries)))
        if len(self.calls) > 1:
            return self.inner.publish_batch(**kw)
        victim, rest = entries[0], entries[1:]
        resp = self.inner.publish_batch(**dict(kw, PublishBatchRequestEntries=rest)) if rest else {"Successful": []}
        resp.setdefault("Failed", []).append({"Id": victim["Id"], "Code": "InternalError" if not self.sender_fault
                                              else "InvalidParameter", "SenderFault": self.sender_fault})
        return resp


def test_sns_publish_batch_retries_failed_entries_and_splits_by_size(transport: SqsTransport) -> None:
    sns = FlakySns(boto3.client("sns", region_name=REGION))
    topic = SnsTopic(transport, prefix="t-", region=REGION, sns_client=sns)
    q = make_queue(transport)
    topic.subscribe("big", q, raw=True)
    bodies = [str(i) * 60_000 for i in range(5)] + ["small"]
    topic.publish_batch("big", [Outgoing(body=b, message_id=f"m{i}") for i, b in enumerate(bodies)])
    got = []
    while batch := transport.receive(q, max_messages=10, wait_s=0, visibility_s=30):
        got += batch
    assert sorted(d.body for d in got) == sorted(bodies)  # the failed entry was sent again
    assert all(size <= 256 * 1024 for _, size in sns.calls) and len(sns.calls) >= 3


def test_sns_publish_batch_raises_when_sns_refuses_an_entry(transport: SqsTransport) -> None:
    from orchestrator.errors import OrchestratorError

    topic = SnsTopic(transport, prefix="t-", region=REGION,
                     sns_client=FlakySns(boto3.client("sns", region_name=REGION), sender_fault=True))
    with pytest.raises(OrchestratorError, match="refused"):
        topic.publish_batch("t", [Outgoing(body="x", message_id="m")])


class Denied:
    """A boto3 client or resource whose role may not make the named calls (AccessDenied)."""

    def __init__(self, inner: Any, deny: set[str], code: str = "AccessDeniedException", client: Any = None) -> None:
        self.inner, self.deny, self.code = inner, deny, code
        if client is not None:
            self.meta = type("Meta", (), {"client": client})()

    def __getattr__(self, name: str) -> Any:
        if name in self.deny:
            def refuse(**_: Any) -> Any:
                raise ClientError({"Error": {"Code": self.code, "Message": f"not allowed: {name}"}}, name)
            return refuse
        return getattr(self.inner, name)


@pytest.mark.parametrize("may_describe", [True, False])
def test_a_worker_role_without_create_permissions_starts_on_existing_resources(may_describe: bool) -> None:
    DynamoDBStatusStore("iam-jobs", region=REGION)  # created by an operator's role
    S3ObjectStore("iam-objects", region=REGION)
    # a worker's role: items and objects only (perhaps not even DescribeTable / ListBucket)
    ddb = boto3.resource("dynamodb", region_name=REGION)
    client = Denied(ddb.meta.client, set() if may_describe else {"describe_table"})
    store = DynamoDBStatusStore("iam-jobs", region=REGION,
                                dynamodb_resource=Denied(ddb, {"create_table"}, client=client))
    store.create("j1")
    assert store.get("j1") is not None
    s3_deny = {"create_bucket"} | (set() if may_describe else {"head_bucket"})
    s3_client = Denied(boto3.client("s3", region_name=REGION), s3_deny, code="AccessDenied" if may_describe else "403")
    objects = S3ObjectStore("iam-objects", region=REGION, s3_client=s3_client)
    objects.put("k", b"v")
    assert objects.get("k") == b"v"


def test_a_missing_table_that_may_not_be_created_is_a_clear_error() -> None:
    ddb = boto3.resource("dynamodb", region_name=REGION)
    with pytest.raises(ClientError, match="not allowed: create_table"):
        DynamoDBStatusStore("nowhere-jobs", region=REGION,
                            dynamodb_resource=Denied(ddb, {"create_table"}, client=ddb.meta.client))


def test_sqs_ack_batch_says_which_receipts_were_stale_and_a_refused_send_is_not_dropped() -> None:
    from orchestrator.transports.sqs import BatchError, SqsTransport

    t = SqsTransport(prefix="stale-", region=REGION)
    q = make_queue(t)
    t.send_batch(q, [Outgoing(body=f"m{i}") for i in range(3)])
    got = t.receive(q, max_messages=3, wait_s=0, visibility_s=30)
    real = t.sqs.delete_message_batch

    def stale_second(**kw: Any) -> dict[str, Any]:
        # what SQS answers for a receipt handle superseded by a redelivery
        entries = kw["Entries"]
        out = real(QueueUrl=kw["QueueUrl"], Entries=[e for e in entries if e["Id"] != "1"])
        out.setdefault("Failed", []).extend({"Id": "1", "SenderFault": True, "Code": "ReceiptHandleIsInvalid",
                                             "Message": "stale"} for e in entries if e["Id"] == "1")
        return out

    t.sqs.delete_message_batch = stale_second
    assert t.ack_batch(got) == [True, False, True]
    # a send SQS refuses (a sender fault that is no stale receipt) raises, it is not taken as sent
    t.sqs.send_message_batch = lambda **kw: {"Failed": [{"Id": e["Id"], "SenderFault": True,
                                                         "Code": "InvalidParameterValue", "Message": "bad"}
                                                        for e in kw["Entries"]]}
    with pytest.raises(BatchError, match="refused 1 message"):
        t.send(q, Outgoing(body="y"))


def test_sqs_spec_says_none_only_for_a_queue_that_is_gone_and_lets_other_errors_through() -> None:
    from orchestrator.transports.sqs import SqsTransport

    t = SqsTransport(prefix="spec-", region=REGION)
    q = make_queue(t)

    def failing(code: str) -> Callable[..., Any]:
        def call(**_: Any) -> Any:
            raise ClientError({"Error": {"Code": code, "Message": code}}, "GetQueueAttributes")
        return call

    t.sqs.get_queue_attributes = failing("AWS.SimpleQueueService.NonExistentQueue")
    assert t.spec(q) is None  # deleted between the look and the read
    t.sqs.get_queue_attributes = failing("ThrottlingException")
    with pytest.raises(ClientError, match="Throttling"):
        t.spec(q)  # a busy service is not "no queue": doctor must not report a missing queue


def test_opening_many_sessions_does_not_grow_the_shared_loaders_search_paths() -> None:
    # Given the loader of service descriptions every session of ours shares
    from orchestrator import aws_common

    aws_common.client("sqs", region=REGION)
    before = list(aws_common._LOADER.search_paths)
    # When a long-running process opens many more sessions (each boto3 session adds its folder)
    for _ in range(50):
        aws_common.client("sqs", region=REGION)
    # Then the loader still searches each folder once: lookups do not slow down as it runs
    after = aws_common._LOADER.search_paths
    assert after == before and len(after) == len(set(after))
