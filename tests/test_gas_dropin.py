"""GAS as a drop-in for existing web apps (on moto): their item attribute names, bucket names,
users database, thaw topic, results-message shape and status values, driven with the message
and item shapes those apps send and read."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from examples.gas import app
from examples.gas.config import GasConfig
from examples.gas.samples import samples_dir
from orchestrator import JobStatus, Worker
from orchestrator.errors import ConfigError

SAMPLES = samples_dir()
URL = "aws://?region=us-east-1&prefix=gas-"
ROOT = Path(__file__).resolve().parents[1]
Open = Callable[..., app.Gas]


@pytest.fixture
def open_gas(monkeypatch: pytest.MonkeyPatch) -> Iterator[Open]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        def make(**cfg: object) -> app.Gas:
            # a restore looks again at Glacier after 0.2 s, not the default 30 s: moto restores at once
            base: dict[str, object] = {"retention_s": 1.0, "visibility_timeout_s": 10.0, "retry_base_s": 0.1,
                                       "restore_poll_s": 0.2}
            g = app.open_gas(URL, config=GasConfig(**{**base, **cfg}))  # type: ignore[arg-type]
            app.setup(g)
            return g
        yield make


def run(gas: app.Gas, *stages: str) -> None:
    for stage in stages:
        Worker(gas.pipeline, stage, gas.backend, wait_s=0).run(until_idle=True)


def web_app_submit(gas: app.Gas, job_id: str, user_id: str, sample: str = "test.vcf") -> None:
    """As a GAS web app does it with boto3: upload, put the item (no tier, no email), publish."""
    key = f"gas/{user_id}/{job_id}~{sample}"
    boto3.client("s3").put_object(Bucket=gas.config.inputs_bucket, Key=key, Body=(SAMPLES / sample).read_bytes())
    request = {"job_id": job_id, "user_id": user_id, "input_file_name": sample,
               "s3_inputs_bucket": gas.config.inputs_bucket, "s3_key_input_file": key,
               "submit_time": 1700000000, "job_status": "PENDING"}
    boto3.resource("dynamodb").Table("gas-annotations").put_item(Item=request)
    arn = boto3.client("sns").create_topic(Name="gas-job_requests")["TopicArn"]
    boto3.client("sns").publish(TopicArn=arn, Message=json.dumps(request))


def their_results_queue() -> str:
    """A web app's own queue, subscribed raw to the job_results topic (their notify script's)."""
    sqs = boto3.client("sqs")
    theirs = sqs.create_queue(QueueName="their-notify")["QueueUrl"]
    q_arn = sqs.get_queue_attributes(QueueUrl=theirs, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    topic = boto3.client("sns").create_topic(Name="gas-job_results")["TopicArn"]
    boto3.client("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=q_arn,
                                  Attributes={"RawMessageDelivery": "true"})
    return str(theirs)


def item(job_id: str) -> dict[str, object]:
    got: dict[str, object] = boto3.resource("dynamodb").Table("gas-annotations").get_item(Key={"job_id": job_id})["Item"]
    return got


def users_table(rows: list[dict[str, str]]) -> None:
    """The web app's users table: user_id, role (free_user / premium_user), email."""
    ddb = boto3.resource("dynamodb")
    t = ddb.create_table(TableName="gas-users", KeySchema=[{"AttributeName": "user_id", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "user_id", "AttributeType": "S"}],
                         BillingMode="PAY_PER_REQUEST")
    for r in rows:
        t.put_item(Item=r)


def test_result_attributes_take_the_names_the_web_app_reads(open_gas: Open) -> None:
    gas = open_gas(attribute_names={"complete_time": "completion_time", "s3_key_result_file": "result_key"})
    web_app_submit(gas, "w1", "u1")
    run(gas, "annotate")
    it = item("w1")
    assert it["job_status"] == "COMPLETED" and int(str(it["completion_time"])) > 0
    assert "complete_time" not in it and str(it["result_key"]).endswith("w1~test.annot.vcf")


def test_buckets_have_fixed_names_and_underscores_are_refused(open_gas: Open, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAS_INPUTS_BUCKET", "gas-inputs")
    monkeypatch.setenv("GAS_RESULTS_BUCKET", "gas-results")
    monkeypatch.setenv("GAS_ARCHIVE_BUCKET", "gas-archive")
    gas = open_gas()
    web_app_submit(gas, "w1", "u1")
    run(gas, "annotate")
    assert item("w1")["s3_results_bucket"] == "gas-results"
    assert boto3.client("s3").get_object(Bucket="gas-results", Key=str(item("w1")["s3_key_result_file"]))
    monkeypatch.setenv("GAS_RESULTS_BUCKET", "gas_results")
    with pytest.raises(ConfigError, match="'gas_results' has '_'"):
        open_gas()


def test_tier_and_email_come_from_the_web_apps_users_table(open_gas: Open) -> None:
    # Given users kept by the web app: a free one, a premium one, and one it does not know
    gas = open_gas(accounts="dynamodb:gas-users?key=user_id&tier=role&email=email")
    users_table([{"user_id": "fay", "role": "free_user", "email": "fay@example.org"},
                 {"user_id": "pam", "role": "premium_user", "email": "pam@example.org"}])
    for job, user in (("f1", "fay"), ("p1", "pam"), ("x1", "xena")):
        web_app_submit(gas, job, user)
    # When every stage runs
    run(gas, "annotate", "notify")
    time.sleep(1.1)  # the archive check waits out the (shortened) retention
    run(gas, "archive")
    # Then mail went to the table's addresses, only the free user's result was archived, and the
    # unknown user is treated as premium (kept hot) with a clear notify failure
    sent = gas.resources.mailer.sent()
    assert len(sent) == 2
    assert "results_file_archive_id" in item("f1") and "results_file_archive_id" not in item("p1")
    assert "results_file_archive_id" not in item("x1")
    x1 = gas.backend.store.get("x1")
    assert x1 is not None and "no email address for user 'xena'" in str(x1.steps["notify"].reason)


def test_accounts_from_an_sql_users_database(tmp_path: Path, open_gas: Open) -> None:
    db = tmp_path / "webapp.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE accounts (username TEXT PRIMARY KEY, role TEXT, email TEXT)")
        c.execute("INSERT INTO accounts VALUES ('fay', 'free_user', 'fay@example.org')")
    gas = open_gas(accounts=f"sql:sqlite:///{db}#SELECT role, email FROM accounts WHERE username = %s")
    web_app_submit(gas, "f1", "fay")
    run(gas, "annotate", "notify")
    time.sleep(1.1)
    run(gas, "archive")
    assert len(gas.resources.mailer.sent()) == 1 and "results_file_archive_id" in item("f1")


@pytest.mark.parametrize("shape", ["per_job", "archives_data"])
def test_the_web_apps_thaw_request_on_upgrade_restores(open_gas: Open, shape: str) -> None:
    # Given a free user's archived result
    gas = open_gas(accounts="dynamodb:gas-users?tier=role")
    users_table([{"user_id": "fay", "role": "free_user", "email": "fay@example.org"}])
    web_app_submit(gas, "f1", "fay")
    run(gas, "annotate", "notify")
    time.sleep(1.1)
    run(gas, "archive")
    archive_id = str(item("f1")["results_file_archive_id"])
    # When the web app upgrades her (its users table) and publishes its thaw request
    boto3.resource("dynamodb").Table("gas-users").update_item(
        Key={"user_id": "fay"}, UpdateExpression="SET #r = :p", ExpressionAttributeNames={"#r": "role"},
        ExpressionAttributeValues={":p": "premium_user"})
    entry = {"job_id": "f1", "results_file_archive_id": archive_id, "user_id": "fay"}
    message = entry if shape == "per_job" else {"archives_data": [entry], "user_id": "fay"}
    arn = boto3.client("sns").create_topic(Name="gas-job_thaws")["TopicArn"]
    boto3.client("sns").publish(TopicArn=arn, Message=json.dumps(message))
    run(gas, "thaw", "restore")
    # Then the result is hot again where the web app looks for it
    it = item("f1")
    assert "results_file_archive_id" not in it
    assert boto3.client("s3").get_object(Bucket=gas.config.results_bucket, Key=str(it["s3_key_result_file"]))


def test_job_results_are_published_in_the_deployments_shape(open_gas: Open) -> None:
    gas = open_gas(results_template={"userId": "{user_id}", "subject": "Job {job_id} is done",
                                     "body": "Download: {link}", "result_file": "{s3_key_result_file}"})
    sqs, theirs = boto3.client("sqs"), their_results_queue()
    web_app_submit(gas, "w1", "u1")
    run(gas, "annotate")
    [m] = sqs.receive_message(QueueUrl=theirs, MaxNumberOfMessages=10)["Messages"]
    doc = json.loads(m["Body"])
    assert doc["userId"] == "u1" and doc["subject"] == "Job w1 is done"
    assert doc["body"] == "Download: https://gas.example.org/annotations/w1"
    assert doc["result_file"].endswith("w1~test.annot.vcf") and doc["job_id"] == "w1"


def test_our_failure_is_written_as_the_status_the_web_app_knows(open_gas: Open) -> None:
    gas = open_gas(failed_status="ERROR")
    request = {"job_id": "w9", "user_id": "u1", "input_file_name": "gone.vcf",
               "s3_inputs_bucket": gas.config.inputs_bucket, "s3_key_input_file": "gas/u1/w9~gone.vcf",
               "submit_time": 1700000000, "job_status": "PENDING"}
    boto3.resource("dynamodb").Table("gas-annotations").put_item(Item=request)
    arn = boto3.client("sns").create_topic(Name="gas-job_requests")["TopicArn"]
    boto3.client("sns").publish(TopicArn=arn, Message=json.dumps(request))
    run(gas, "annotate")
    assert item("w9")["job_status"] == "ERROR"
    rec = gas.backend.store.get("w9")
    assert rec is not None and rec.status == JobStatus.FAILED
    assert [r.job_id for r in gas.backend.store.query(status=JobStatus.FAILED)] == ["w9"]


def test_worker_all_until_idle_waits_for_the_whole_chain(tmp_path: Path) -> None:
    # Given jobs submitted on the embedded default
    url = f"sqlite:///{tmp_path}/gas.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT), GAS_RETENTION_S="1")

    def gas_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "examples.gas", *args], env=env, capture_output=True,
                              text=True, timeout=180, cwd=tmp_path)

    for i, tier in enumerate(["free", "premium", "free"]):
        assert gas_cli("submit", str(SAMPLES / "test.vcf"), "--user", f"u{i}", "--tier", tier,
                       "--backend", url).returncode == 0
    # When every stage runs as a process until idle, logging at info
    out = gas_cli("--log-level", "info", "worker", "--stage", "all", "--until-idle", "--backend", url)
    # Then nothing is left in any queue, every job was notified, the free ones archived, and the
    # children's log lines (info) reached our stderr
    assert out.returncode == 0, out.stderr[-2000:]
    gas = app.open_gas(url)
    for q in gas.backend.transport.queues():
        assert gas.backend.transport.depth(q).total == 0, q
    jobs = gas.backend.store.query()
    assert all("notified_time" in j.fields for j in jobs)
    assert sum("results_file_archive_id" in j.fields for j in jobs) == 2
    assert out.stderr.count("worker started") == len(gas.pipeline.stages)
    gas.close()


def test_every_gas_setting_is_listed_in_help_and_the_readme_and_none_is_read_unlisted() -> None:
    import re
    import subprocess
    import sys

    from examples.gas.config import ROOT, SETTINGS

    listed = {name for name, _, _ in SETTINGS}
    code = "\n".join(p.read_text() for p in (ROOT / "examples" / "gas").glob("*.py"))
    read = set(re.findall(r"""(?:environ(?:\.get)?\(|_env_\w+\(|environ\[)\s*["'](GAS_[A-Z_]+)["']""", code))
    assert read and read <= listed, f"read but not listed: {sorted(read - listed)}"
    readme = (ROOT / "docs" / "gas.md").read_text()
    assert not [n for n in listed if f"`{n}`" not in readme], "settings missing from the GAS page's table"
    helped = subprocess.run([sys.executable, "-m", "examples.gas", "--help"], capture_output=True, text=True,
                            cwd=ROOT, check=True).stdout
    assert all(n in helped for n in listed)


def test_the_state_bucket_takes_its_name_from_gas_state_bucket_and_is_checked(open_gas: Open,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.errors import ConfigError

    monkeypatch.setenv("GAS_STATE_BUCKET", "acme-gas-state")
    open_gas()
    assert "acme-gas-state" in [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
    monkeypatch.setenv("GAS_STATE_BUCKET", "acme_gas_state")
    with pytest.raises(ConfigError, match="'acme_gas_state' has '_'"):
        open_gas()


def test_the_settings_catalogue_states_the_defaults_gas_really_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    import json as _json

    from examples.gas.config import SETTINGS, GasConfig
    from orchestrator.durations import parse_duration

    for name, _, _ in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    cfg, stated = GasConfig(), {name: default for name, default, _ in SETTINGS}
    assert float(stated["GAS_RETENTION_S"]) == cfg.retention_s
    assert int(stated["GAS_MAX_RECEIVES"]) == cfg.max_receives
    assert float(stated["GAS_RETRY_BASE_S"]) == cfg.retry_base_s
    assert float(stated["GAS_VISIBILITY_TIMEOUT_S"]) == cfg.visibility_timeout_s
    assert float(stated["GAS_ANNOTATOR_TIMEOUT_S"]) == cfg.annotator_timeout_s
    assert stated["GAS_FAILED_STATUS"] == cfg.failed_status and stated["GAS_ACCOUNTS"] == cfg.accounts
    assert stated["GAS_THAW_TOPIC"] == cfg.thaw_topic and stated["GAS_RESTORE_TIER"] == cfg.restore_tier
    assert parse_duration(stated["GAS_RESTORE_POLL"]) == cfg.restore_poll_s
    assert parse_duration(stated["GAS_RESTORE_MAX_WAIT"]) == cfg.restore_max_wait_s
    assert _json.loads(stated["GAS_RESTORE_STATES"]) == cfg.restore_states
    assert stated["GAS_LINK_BASE"] == cfg.web_url and stated["GAS_MAIL_SUBJECT"] == cfg.mail_subject


def test_an_upgrade_with_nothing_archived_is_a_no_op_not_a_dead_letter(open_gas: Open) -> None:
    # Given a deployment whose web app publishes a thaw request per user on upgrade
    gas = open_gas(accounts="dynamodb:gas-users?tier=role")
    users_table([{"user_id": "gil", "role": "premium_user", "email": "gil@example.org"}])
    arn = boto3.client("sns").create_topic(Name="gas-job_thaws")["TopicArn"]
    # When a user who had nothing archived upgrades (and, beside it, a request that is garbage)
    boto3.client("sns").publish(TopicArn=arn, Message=json.dumps({"archives_data": [], "user_id": "gil"}))
    boto3.client("sns").publish(TopicArn=arn, Message=json.dumps({"archives_data": "nonsense", "user_id": "gil"}))
    run(gas, "thaw")
    # Then the empty request is acked and forgotten; only the garbage is dead-lettered
    dead = gas.backend.transport.peek("gas_thaw-dlq", 10)
    assert len(dead) == 1 and "nonsense" in dead[0].body
    assert gas.backend.transport.depth("gas_thaw").total == 0 and gas.backend.store.query() == []


@pytest.mark.parametrize(("time_format", "pattern"), [
    ("epoch", r"done at \d{10}$"),
    ("iso", r"done at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"),
    ("%d %b %Y", r"done at \d\d [A-Z][a-z]{2} \d{4}$"),
])
def test_times_in_messages_and_emails_read_as_gas_time_format_says(open_gas: Open, time_format: str,
                                                                    pattern: str) -> None:
    import re

    gas = open_gas(results_template={"body": "done at {complete_time}"}, time_format=time_format)
    sqs, theirs = boto3.client("sqs"), their_results_queue()
    web_app_submit(gas, "t1", "u1")
    run(gas, "annotate")
    [m] = sqs.receive_message(QueueUrl=theirs, MaxNumberOfMessages=10)["Messages"]
    assert re.search(pattern, json.loads(m["Body"])["body"]), m["Body"]
    assert isinstance(item("t1")["complete_time"], Decimal)  # the item keeps epoch seconds


def test_a_time_format_that_is_none_of_the_three_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from examples.gas.config import GasConfig
    from orchestrator.errors import ConfigError

    monkeypatch.setenv("GAS_TIME_FORMAT", "human")
    with pytest.raises(ConfigError, match="GAS_TIME_FORMAT 'human'"):
        GasConfig()


def test_the_generic_cli_reads_the_gas_table_by_the_same_url_and_creates_nothing(
        open_gas: Open, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli import main

    gas = open_gas()
    web_app_submit(gas, "g1", "u1")
    tables = set(boto3.client("dynamodb").list_tables()["TableNames"])
    buckets = {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}
    url = "aws://?region=us-east-1&prefix=gas-&table=gas-annotations"
    # table= is the table's full name: the generic CLI reads GAS's jobs with the URL GAS uses
    assert main(["status", "--backend", url, "--json"]) == 0
    assert [j["job_id"] for j in json.loads(capsys.readouterr().out)] == ["g1"]
    assert main(["dlq", "list", "--backend", url]) == 0
    assert main(["queues", "--backend", "aws://?region=us-east-1&prefix=gas-"]) in (0, 2)
    capsys.readouterr()
    # and reading made no table and no bucket of its own
    assert set(boto3.client("dynamodb").list_tables()["TableNames"]) == tables
    assert {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]} == buckets


def test_renamed_archive_attributes_are_read_by_upgrade_restore_and_status(open_gas: Open) -> None:
    # Given a deployment whose web app names the archive attributes its own way
    gas = open_gas(accounts="dynamodb:gas-users?tier=role",
                   attribute_names={"results_file_archive_id": "archive_id", "restore_time": "restored_at"})
    users_table([{"user_id": "fay", "role": "free_user", "email": "fay@example.org"}])
    web_app_submit(gas, "r1", "fay")
    run(gas, "annotate", "notify")
    time.sleep(1.1)  # the archive check waits out the (shortened) retention
    run(gas, "archive")
    assert item("r1").get("archive_id") and "results_file_archive_id" not in item("r1")
    rec = gas.backend.store.get("r1")
    assert rec is not None and app.job_row(rec, gas.config)["archived"]
    # When the user upgrades, the archived job is found under its renamed attribute and restored
    assert app.upgrade(gas, "fay") == ["r1"]
    run(gas, "restore")
    it = item("r1")
    assert "archive_id" not in it and int(str(it["restored_at"])) > 0
    rec = gas.backend.store.get("r1")
    assert rec is not None and app.job_row(rec, gas.config)["restored"] and not app.job_row(rec, gas.config)["archived"]
