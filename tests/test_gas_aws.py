"""GAS on moto: an existing web app's raw requests and table items, served by our annotator."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator

import boto3
import moto.core.utils
import pytest
from moto import mock_aws

from examples.gas import app
from examples.gas.config import GasConfig
from examples.gas.samples import samples_dir
from orchestrator import Controller, JobStatus, Worker
from orchestrator.clock import SystemClock

SAMPLES = samples_dir()
URL = "aws://?region=us-east-1&prefix=gas-"


@pytest.fixture
def gas(monkeypatch: pytest.MonkeyPatch) -> Iterator[app.Gas]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        g = app.open_gas(URL, config=GasConfig(retention_s=1.0, visibility_timeout_s=10.0, retry_base_s=0.1,
                                               restore_poll_s=0.2))  # moto restores at once
        app.setup(g)
        yield g


def run(gas: app.Gas, *stages: str) -> None:
    for stage in stages:
        Worker(gas.pipeline, stage, gas.backend, wait_s=0).run(until_idle=True)


def web_app_submit(job_id: str, sample: str, *, json_structure: bool = False, extra: dict[str, object] | None = None,
                   drop: str | None = None) -> dict[str, object]:
    """What the existing GAS web app does, with plain boto3: upload, write the item, publish."""
    s3, ddb, sns = boto3.client("s3"), boto3.resource("dynamodb"), boto3.client("sns")
    key = f"gas/u1/{job_id}~{sample}"
    s3.put_object(Bucket="gas-gas-inputs", Key=key, Body=(SAMPLES / sample).read_bytes())
    request: dict[str, object] = {"job_id": job_id, "user_id": "u1", "input_file_name": sample,
                                  "s3_inputs_bucket": "gas-gas-inputs", "s3_key_input_file": key,
                                  "submit_time": 1700000000, "job_status": "PENDING", **(extra or {})}
    if drop:
        request.pop(drop)
    ddb.Table("gas-annotations").put_item(Item=request)
    topic_arn = sns.create_topic(Name="gas-job_requests")["TopicArn"]
    if json_structure:
        sns.publish(TopicArn=topic_arn, Message=json.dumps({"default": json.dumps(request)}), MessageStructure="json")
    else:
        sns.publish(TopicArn=topic_arn, Message=json.dumps(request))
    return request


def test_raw_web_app_requests_are_annotated_into_the_existing_table(gas: app.Gas) -> None:
    # Given two requests published by the existing web app, one with MessageStructure=json
    web_app_submit("web-1", "test.vcf", extra={"client_tag": "kept"})
    web_app_submit("web-2", "free_1.vcf", json_structure=True)
    # When the annotate and notify stages run
    run(gas, "annotate", "notify")
    # Then the table items carry the GAS attributes, and the web app's own attributes survive
    table = boto3.resource("dynamodb").Table("gas-annotations")
    for job_id, sample, variants in (("web-1", "test.vcf", 350), ("web-2", "free_1.vcf", 1141)):
        item = table.get_item(Key={"job_id": job_id})["Item"]
        assert item["job_status"] == "COMPLETED"
        assert item["s3_results_bucket"] == "gas-gas-results"
        assert item["s3_key_result_file"] == f"gas/u1/{job_id}~{sample.removesuffix('.vcf')}.annot.vcf"
        assert item["s3_key_log_file"] == f"gas/u1/{job_id}~{sample}.count.log"
        assert int(item["complete_time"]) > 0 and item["input_file_name"] == sample
        assert int(item["variants"]) == variants
        body = boto3.client("s3").get_object(Bucket="gas-gas-results", Key=item["s3_key_result_file"])["Body"].read()
        assert b"VT=" in body
    assert table.get_item(Key={"job_id": "web-1"})["Item"]["client_tag"] == "kept"
    # the web app keeps emails in its own user database, and this deployment named no accounts
    # source: notify says so (no mail to an address made up from the user id)
    assert gas.resources.mailer.sent() == []
    for job_id in ("web-1", "web-2"):
        rec = gas.backend.store.get(job_id)
        assert rec is not None and rec.status == JobStatus.COMPLETED
        assert "no email address for user 'u1'" in str(rec.steps["notify"].reason)
    # the results message on job_results has the GAS keys
    import time

    time.sleep(1.1)  # the archive queue delays messages by the (shortened) retention
    notes = gas.backend.transport.peek("gas_archive", 10)
    assert len(notes) == 2
    results = json.loads(json.loads(notes[0].body)["Message"])
    assert {"job_id", "user_id", "s3_results_bucket", "s3_key_result_file", "s3_key_log_file",
            "complete_time"} <= set(results)


def test_a_request_missing_required_keys_is_malformed(gas: app.Gas) -> None:
    web_app_submit("web-3", "test.vcf", drop="s3_key_input_file")
    run(gas, "annotate")
    item = boto3.resource("dynamodb").Table("gas-annotations").get_item(Key={"job_id": "web-3"})["Item"]
    assert item["job_status"] == "FAILED"
    [dead] = gas.backend.transport.peek("gas_annotate-dlq", 10)
    assert "lacks required keys: s3_key_input_file" in dead.attributes["dead_letter_reason"]


def test_free_results_go_to_glacier_and_come_back_on_upgrade(gas: app.Gas) -> None:
    job = app.submit(gas, SAMPLES / "test.vcf", user_id="fay", tier="free")
    run(gas, "annotate", "notify", "archive")
    rec = gas.backend.store.get(job)
    assert rec is not None and rec.status == JobStatus.COMPLETED and rec.fields["results_file_archive_id"]
    s3 = boto3.client("s3")
    head = s3.head_object(Bucket="gas-gas-archive", Key=rec.fields["results_file_archive_id"])
    assert head.get("StorageClass") == "GLACIER"
    assert app.upgrade(gas, "fay") == [job]
    run(gas, "restore")
    rec = gas.backend.store.get(job)
    assert rec is not None and "results_file_archive_id" not in rec.fields
    assert s3.head_object(Bucket="gas-gas-results", Key=rec.fields["s3_key_result_file"])


class SlowGlacier:
    """An S3 client whose Glacier restores take ``restore_s`` on the test's clock (moto's restore
    is instant): until then a read of the object says InvalidObjectState, as S3 does."""

    def __init__(self, inner: object, clock: object, restore_s: float) -> None:
        self.inner, self.clock, self.restore_s = inner, clock, restore_s
        self.requested: dict[str, float] = {}
        self.tiers: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def restore_object(self, **kw: object) -> object:
        self.tiers.append(kw["RestoreRequest"]["GlacierJobParameters"]["Tier"])  # type: ignore[index]
        self.requested.setdefault(str(kw["Key"]), self.clock.now())  # type: ignore[attr-defined]
        return self.inner.restore_object(**kw)  # type: ignore[attr-defined]

    def get_object(self, **kw: object) -> object:
        since = self.requested.get(str(kw["Key"]))
        if since is not None and self.clock.now() < since + self.restore_s:  # type: ignore[attr-defined]
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "InvalidObjectState", "Message": "restore in progress"}}, "GetObject")
        return self.inner.get_object(**kw)  # type: ignore[attr-defined]


class MotoClock(SystemClock):
    """moto's time, which the test moves (SQS's delays and visibility follow it)."""

    def now(self) -> float:
        return moto.core.utils.utcnow().replace(tzinfo=datetime.UTC).timestamp()


@pytest.fixture
def glacier(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[app.Gas, SlowGlacier, str]]]:
    """GAS on moto with Glacier restores of ``restore_s`` on a clock the test moves, and one
    free user's result archived; yields a maker (config overrides) -> (gas, glacier, job id)."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "GAS_RESTORE_TIER": "Standard"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    real = moto.core.utils.utcnow
    monkeypatch.setattr(moto.core.utils, "utcnow", lambda: real() + datetime.timedelta(seconds=OFFSET[0]))
    OFFSET[0] = 0.0

    def make(restore_s: float, **cfg: object) -> tuple[app.Gas, SlowGlacier, str]:
        gas = app.open_gas(URL, config=GasConfig(**{"retention_s": 1.0, "visibility_timeout_s": 10.0,  # type: ignore[arg-type]
                                                     "retry_base_s": 0.1, "max_receives": 2, **cfg}),
                           clock=MotoClock())
        app.setup(gas)
        slow = SlowGlacier(gas.resources.archive.s3, gas.backend.clock, restore_s=restore_s)  # type: ignore[attr-defined]
        gas.resources.archive.s3 = slow  # type: ignore[attr-defined]
        job = app.submit(gas, SAMPLES / "test.vcf", user_id="fay", tier="free")
        for stage in ("annotate", "archive"):
            OFFSET[0] += 2
            take(gas, stage)
        return gas, slow, job

    with mock_aws():
        yield make


OFFSET = [0.0]


def take(gas: app.Gas, stage: str) -> list[str]:
    st = gas.pipeline.get(stage)
    got = gas.backend.transport.receive(st.source, max_messages=10, wait_s=0, visibility_s=30)
    return [str(o) for o in Controller(gas.pipeline, st, gas.backend).handle_batch(got)] if got else []


def restore_until_settled(gas: app.Gas, job: str, *, step_s: float = 5, looks: int = 400) -> list[str]:
    """Run the restore stage whenever its message is back (the clock moving ``step_s`` between
    looks) until it ends otherwise than snoozed; every snooze must show the restoring state."""
    table = boto3.resource("dynamodb").Table("gas-annotations")
    outcomes: list[str] = []
    for _ in range(looks):
        outcomes += take(gas, "restore")
        if outcomes and outcomes[-1] != "snoozed":
            return outcomes
        if outcomes:
            assert table.get_item(Key={"job_id": job})["Item"]["restore_status"] == "RESTORING"
        OFFSET[0] += step_s
    return outcomes


def test_a_restore_that_takes_minutes_snoozes_without_using_attempts_and_shows_restoring(
        glacier: Callable[..., tuple[app.Gas, SlowGlacier, str]]) -> None:
    # Given a free user's archived result, and Glacier restores that take 7 minutes
    gas, slow, job = glacier(7 * 60)
    table = boto3.resource("dynamodb").Table("gas-annotations")
    assert table.get_item(Key={"job_id": job})["Item"]["results_file_archive_id"]
    # When the user upgrades and the restore stage looks every time its message comes back
    assert app.upgrade(gas, "fay") == [job]
    outcomes = restore_until_settled(gas, job)
    # Then it snoozed 30 s, 60 s, 120 s, 240 s (7.5 minutes in all), then restored, on its first attempt
    assert outcomes == ["snoozed"] * 4 + ["committed"], outcomes
    item = table.get_item(Key={"job_id": job})["Item"]
    assert item["restore_status"] == "RESTORED" and "results_file_archive_id" not in item
    assert boto3.client("s3").head_object(Bucket="gas-gas-results", Key=item["s3_key_result_file"])
    rec = gas.backend.store.get(job)
    assert rec is not None and rec.steps["restore"].attempt == 1
    assert [h.event for h in rec.history].count("snoozed") == 4
    assert set(slow.tiers) == {"Standard"}


def test_a_restore_that_waited_too_long_fails_and_upgrading_again_restores_it(
        glacier: Callable[..., tuple[app.Gas, SlowGlacier, str]]) -> None:
    # Given restores that take an hour, and a stage that waits at most five minutes
    gas, _, job = glacier(3600, restore_max_wait_s=300)
    assert app.upgrade(gas, "fay") == [job]
    # When the wait runs out, the job's restore step FAILS with the reason; the job stays COMPLETED
    assert restore_until_settled(gas, job)[-1] == "failed"
    rec = gas.backend.store.get(job)
    assert rec is not None and rec.status == JobStatus.COMPLETED and rec.steps["restore"].state == "failed"
    assert "gave up waiting" in str(rec.steps["restore"].reason)
    # Then upgrading again restores it once Glacier is done
    OFFSET[0] += 3600
    assert app.upgrade(gas, "fay") == [job]
    assert restore_until_settled(gas, job) == ["committed"]
    rec = gas.backend.store.get(job)
    assert rec is not None and rec.status == JobStatus.COMPLETED and rec.steps["restore"].state == "committed"


def test_a_finished_jobs_item_is_small_and_a_users_unpaginated_query_sees_500_jobs(gas: app.Gas) -> None:
    from orchestrator.stores.dynamodb import STATE, VERSION, DynamoDBStatusStore, item_bytes

    # Given a premium job and a free one, as the web app submits them, through every stage
    # that writes them (annotate, notify; archive for the free user's result)
    web_app_submit("web-p", "test.vcf", extra={"user_email": "u1@example.org"})
    free = app.submit(gas, SAMPLES / "free_1.vcf", user_id="u1", tier="free", email="u1@example.org")
    run(gas, "annotate", "notify")
    import time

    time.sleep(1.1)  # the archive queue delays by the (shortened) retention
    run(gas, "archive")
    table = boto3.resource("dynamodb").Table("gas-annotations")
    store = gas.backend.store
    assert isinstance(store, DynamoDBStatusStore)
    items = [table.get_item(Key={"job_id": j})["Item"] for j in ("web-p", free)]
    assert items[1].get("results_file_archive_id")  # the free one went all the way
    for item in items:
        # Then our own attributes hold at most 2 KB: no envelopes, no outbox once sent
        own = sum(len(k.encode()) + item_bytes(item[k]) for k in (VERSION, STATE, store.status_attr) if k in item)
        assert own <= 2048, own
        state = json.loads(item[STATE])
        assert all(not s.get("outbox") for s in state["steps"].values())
        assert '"payload"' not in item[STATE]  # no message bodies kept
        whole = sum(len(k.encode()) + item_bytes(v) for k, v in item.items())
        assert whole <= 2000, whole
    # And a user with 600 such jobs: the web app's un-paginated Query on its user index
    # gets at least 500 of them in its one 1 MB page
    with table.batch_writer() as batch:
        for n in range(600):
            batch.put_item(Item={**items[n % 2], "job_id": f"copy-{n:04d}", "user_id": "many"})
    [index] = [i["IndexName"] for i in table.global_secondary_indexes or []]
    page = table.query(IndexName=index, KeyConditionExpression=boto3.dynamodb.conditions.Key("user_id").eq("many"))
    assert page["Count"] >= 500, page["Count"]


def test_migrate_lists_the_old_consumers_unsubscribes_them_and_undo_puts_them_back(
        gas: app.Gas, capsys: pytest.CaptureFixture[str]) -> None:
    from examples.gas import migrate
    from examples.gas.__main__ import main

    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    arn = {t: sns.create_topic(Name=f"gas-{t}")["TopicArn"] for t in ("job_requests", "job_results")}
    # Given the deployment's old scripts: an annotator queue with a backlog on job_requests,
    # a notify queue (raw delivery, a filter policy) and a Lambda on job_results
    old = {}
    for name in ("old-annotator", "old-notify"):
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        old[name] = (url, sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])
    sns.subscribe(TopicArn=arn["job_requests"], Protocol="sqs", Endpoint=old["old-annotator"][1])
    policy = json.dumps({"job_status": ["COMPLETED"]})
    sns.subscribe(TopicArn=arn["job_results"], Protocol="sqs", Endpoint=old["old-notify"][1],
                  Attributes={"RawMessageDelivery": "true", "FilterPolicy": policy})
    lam = "arn:aws:lambda:us-east-1:123456789012:function:gas-thaw"
    sns.subscribe(TopicArn=arn["job_results"], Protocol="lambda", Endpoint=lam)
    for i in range(3):
        sqs.send_message(QueueUrl=old["old-annotator"][0], MessageBody=f"old request {i}")

    def endpoints(topic: str) -> set[str]:
        return {s["Endpoint"] for s in sns.list_subscriptions_by_topic(TopicArn=arn[topic])["Subscriptions"]}

    ours = {t: endpoints(t) for t in arn}
    # When an operator inspects the deployment
    assert main(["migrate", "--backend", URL]) == 0
    text = capsys.readouterr().out
    # Then every other consumer is listed, with its backlog and what it would do twice; ours are not
    assert f"job_requests: sqs {old['old-annotator'][1]}, 3 message(s) waiting" in text
    assert "each request annotated twice" in text and "each user emailed twice" in text
    assert lam in text and f"sqs {old['old-notify'][1]}" in text
    assert not [e for e in set().union(*ours.values()) if e.endswith(("gas_annotate", "gas_notify", "gas_archive"))
                and e in text]
    # When it applies the migration (twice: the second finds nothing more to do)
    assert {c.endpoint for c in migrate.apply(gas)} == {old["old-annotator"][1], old["old-notify"][1], lam}
    assert migrate.apply(gas) == []
    # Then only our stages' queues are subscribed, and a request reaches our queue alone
    assert endpoints("job_requests") == ours["job_requests"] - {old["old-annotator"][1]}
    assert endpoints("job_results") == ours["job_results"] - {old["old-notify"][1], lam}
    web_app_submit("mig-1", "test.vcf")
    assert int(sqs.get_queue_attributes(QueueUrl=old["old-annotator"][0], AttributeNames=["ApproximateNumberOfMessages"])
               ["Attributes"]["ApproximateNumberOfMessages"]) == 3  # the old backlog only
    assert gas.backend.transport.depth("gas_annotate").visible == 1
    # And undo subscribes them again as they were (delivery attributes included), once
    assert main(["migrate", "--backend", URL, "--undo"]) == 0
    assert endpoints("job_requests") == ours["job_requests"] and endpoints("job_results") == ours["job_results"]
    [notify_sub] = [s for s in sns.list_subscriptions_by_topic(TopicArn=arn["job_results"])["Subscriptions"]
                    if s["Endpoint"] == old["old-notify"][1]]
    attrs = sns.get_subscription_attributes(SubscriptionArn=notify_sub["SubscriptionArn"])["Attributes"]
    assert attrs["RawMessageDelivery"] == "true" and json.loads(attrs["FilterPolicy"]) == json.loads(policy)
    assert migrate.recorded(gas) == [] and migrate.undo(gas) == []


def test_an_archive_the_web_apps_archiver_put_in_a_glacier_vault_is_restored_through_the_glacier_api(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "GAS_LEGACY_VAULT": "gas-legacy", "GAS_RESTORE_TIER": "Standard"
                 }.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        gas = app.open_gas(URL, config=GasConfig(retention_s=60.0, visibility_timeout_s=10.0, retry_base_s=0.1,
                                                 restore_poll_s=1.0))
        app.setup(gas)
        # Given a result the web app's own archiver moved to its vault before the switch-over
        web_app_submit("old-1", "test.vcf", extra={"user_email": "u1@example.org"})
        run(gas, "annotate")
        table = boto3.resource("dynamodb").Table("gas-annotations")
        key = table.get_item(Key={"job_id": "old-1"})["Item"]["s3_key_result_file"]
        s3, glacier = boto3.client("s3"), boto3.client("glacier")
        annotated = s3.get_object(Bucket="gas-gas-results", Key=key)["Body"].read()
        glacier.create_vault(vaultName="gas-legacy")
        archive_id = glacier.upload_archive(vaultName="gas-legacy", body=annotated)["archiveId"]
        s3.delete_object(Bucket="gas-gas-results", Key=key)
        table.update_item(Key={"job_id": "old-1"}, UpdateExpression="SET results_file_archive_id = :a",
                          ExpressionAttributeValues={":a": archive_id})
        # When the user upgrades, and the restore stage looks whenever its message is back
        # (moto completes a Standard retrieval after 5 s, in real time)
        assert app.upgrade(gas, "u1") == ["old-1"]
        outcomes: list[str] = []
        job_ids = set()
        import time

        deadline = time.monotonic() + 40
        while not outcomes or outcomes[-1] == "snoozed":
            assert time.monotonic() < deadline, outcomes
            got = take(gas, "restore")
            outcomes += got
            if got == ["snoozed"]:
                item = table.get_item(Key={"job_id": "old-1"})["Item"]
                assert item["restore_status"] == "RESTORING"
                job_ids.add(item["restore_job_id"])
            time.sleep(0.2)
        # Then it snoozed on one retrieval job (no second one started), used no attempt, and
        # the result is back where the web app looks, the item as the app expects it
        assert outcomes[-1] == "committed" and outcomes.count("snoozed") >= 2, outcomes
        assert len(job_ids) == 1
        [job] = glacier.list_jobs(vaultName="gas-legacy")["JobList"]
        assert job["ArchiveId"] == archive_id and job["Tier"] == "Standard"
        assert s3.get_object(Bucket="gas-gas-results", Key=key)["Body"].read() == annotated
        item = table.get_item(Key={"job_id": "old-1"})["Item"]
        assert "results_file_archive_id" not in item and "restore_job_id" not in item
        assert item["restore_status"] == "RESTORED" and int(item["restore_time"]) > 0
        rec = gas.backend.store.get("old-1")
        assert rec is not None and rec.steps["restore"].attempt == 1 and rec.status == JobStatus.COMPLETED


def test_a_vault_retrieval_started_but_not_recorded_is_found_again_not_started_twice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from examples.gas.vault import LegacyVault

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        glacier = boto3.client("glacier")
        glacier.create_vault(vaultName="v")
        a = glacier.upload_archive(vaultName="v", body=b"result A")["archiveId"]
        b = glacier.upload_archive(vaultName="v", body=b"result B")["archiveId"]
        vault = LegacyVault("v", tier="Expedited")
        first = vault.retrieve(a, None)
        # a crash before the job's id was recorded: the next look knows no id
        again = vault.retrieve(a, None)
        other = vault.retrieve(b, None)  # (moto fails on an unknown job id instead of answering 404)
        assert first.data is None and "in progress (Expedited)" in first.waiting
        assert again.job_id == first.job_id and other.job_id != first.job_id
        assert len(glacier.list_jobs(vaultName="v")["JobList"]) == 2
        import time

        time.sleep(2.2)  # moto completes an Expedited retrieval after 2 s
        assert vault.retrieve(a, first.job_id).data == b"result A"
        assert vault.retrieve(b, other.job_id).data == b"result B"
