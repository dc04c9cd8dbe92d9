"""GAS end to end on the embedded default: samples, archive/restore, and every failure mode."""

from __future__ import annotations

import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.gas import app
from examples.gas.config import GasConfig
from examples.gas.samples import samples_dir
from orchestrator import JobStatus, Worker

SAMPLES = samples_dir()
EXPECTED = {"test.vcf": 350, "free_1.vcf": 1141, "free_2.vcf": 2788, "premium_1.vcf": 3000, "premium_3.vcf": 3431}
SLOW_ANNOTATOR = (f"{sys.executable} -c \"import runpy, sys, time; time.sleep(0.4); sys.argv = ['annotator'] + "
                  "sys.argv[1:]; runpy.run_module('examples.gas.annotator', run_name='__main__')\"")


def config(**kw: object) -> GasConfig:
    base: dict[str, object] = {"retention_s": 1.0, "visibility_timeout_s": 3.0, "retry_base_s": 0.1,
                               "annotator_timeout_s": 30.0, "max_receives": 3}
    base.update(kw)
    return GasConfig(**base)  # type: ignore[arg-type]


def open_at(tmp_path: Path, cfg: GasConfig) -> app.Gas:
    gas = app.open_gas(f"sqlite:///{tmp_path}/gas.db", config=cfg)
    app.setup(gas)
    return gas


@pytest.fixture(params=["sqlite", "postgres"])
def gas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[app.Gas]:
    """GAS on the embedded default, and on PostgreSQL (files in its objects table)."""
    if request.param == "postgres":
        g = app.open_gas(request.getfixturevalue("pg_url"), config=config())
        app.setup(g)
    else:
        g = open_at(tmp_path, config())
    yield g
    g.close()


def run(gas: app.Gas, *stages: str) -> None:
    for stage in stages:
        Worker(gas.pipeline, stage, gas.backend, wait_s=0.05).run(until_idle=True)


def test_every_sample_is_annotated_notified_and_archived_by_tier(gas: app.Gas) -> None:
    # Given every sample for a premium user and the small ones for a free user
    jobs = {}
    for name in EXPECTED:
        jobs[app.submit(gas, SAMPLES / name, user_id="pat", tier="premium", email="pat@x.org")] = name
    free = {app.submit(gas, SAMPLES / n, user_id="fay", tier="free"): n for n in ("test.vcf", "free_1.vcf", "free_2.vcf")}
    jobs.update(free)
    # When annotate, notify and archive run (archive after the shortened retention)
    run(gas, "annotate", "notify", "archive")
    # Then every job is COMPLETED with the right counts, one email each, free results archived
    for job_id, name in jobs.items():
        rec = gas.backend.store.get(job_id)
        assert rec is not None and rec.status == JobStatus.COMPLETED, rec
        f = rec.fields
        assert f["variants"] == EXPECTED[name]
        assert f["s3_key_result_file"] == f"gas/{rec.user_id}/{job_id}~{name.removesuffix('.vcf')}.annot.vcf"
        assert f["s3_key_log_file"] == f"gas/{rec.user_id}/{job_id}~{name}.count.log"
        assert f["s3_results_bucket"] == "gas-results" and isinstance(f["complete_time"], int)
        assert gas.resources.results.exists(f["s3_key_log_file"])
        if job_id in free:
            assert f["results_file_archive_id"] and not gas.resources.results.exists(f["s3_key_result_file"])
            assert gas.resources.archive.exists(f["results_file_archive_id"])
        else:
            assert "results_file_archive_id" not in f and gas.resources.results.exists(f["s3_key_result_file"])
    assert len(gas.resources.mailer.sent()) == len(jobs)
    # When the free user upgrades, the restore stage brings the results back
    assert sorted(app.upgrade(gas, "fay")) == sorted(free)
    run(gas, "restore")
    for job_id in free:
        rec = gas.backend.store.get(job_id)
        assert rec is not None and rec.fields["results_file_archive_id"] is None
        assert gas.resources.results.exists(rec.fields["s3_key_result_file"])
        assert rec.status == JobStatus.COMPLETED


def test_premium_users_jobs_are_annotated_before_a_free_backlog(gas: app.Gas) -> None:
    # Given a backlog of free users' requests, then one premium user's
    free = [app.submit(gas, SAMPLES / "test.vcf", user_id=f"free{i}", tier="free") for i in range(5)]
    premium = app.submit(gas, SAMPLES / "test.vcf", user_id="pat", tier="premium")
    # When the annotate stage takes its next message
    st = gas.pipeline.get("annotate")
    got = gas.backend.transport.receive(st.source, max_messages=1, wait_s=0, visibility_s=30)
    # Then it is the premium user's
    assert [st.codec.decode(d.body).job_id for d in got] == [premium]
    gas.backend.transport.release(got[0], 0)
    run(gas, "annotate")
    assert all(gas.backend.store.get(j).status == JobStatus.COMPLETED for j in [*free, premium])  # type: ignore[union-attr]


def test_a_free_user_cannot_submit_over_150_kb(gas: app.Gas) -> None:
    with pytest.raises(app.GasError, match="free users may upload up to 153,600 bytes"):
        app.submit(gas, SAMPLES / "premium_1.vcf", user_id="fay", tier="free")
    assert gas.backend.store.query() == []


def failed_reason(gas: app.Gas, job_id: str) -> str:
    rec = gas.backend.store.get(job_id)
    assert rec is not None and rec.status == JobStatus.FAILED, rec
    return next(h.reason for h in reversed(rec.history) if h.reason)  # type: ignore[return-value]


def test_a_missing_input_fails_the_job_and_removes_the_message(gas: app.Gas) -> None:
    job = app.submit(gas, SAMPLES / "test.vcf", user_id="u")
    rec = gas.backend.store.get(job)
    assert rec is not None
    gas.resources.inputs.delete(rec.fields["s3_key_input_file"])
    run(gas, "annotate", "notify")
    assert "not found" in failed_reason(gas, job)
    assert gas.backend.transport.depth("gas_annotate").total == 0
    assert gas.resources.mailer.sent() == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"##fileformat=VCFv4.0\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n1\t10\t.\tA\tG\t.\t.\t.\n1\tten\t.\tA\tG\t.\t.\t.\n",
         "malformed VCF at line 4: POS 'ten'"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "not a VCF file"),
    ],
)
def test_a_bad_upload_fails_permanently_with_the_reason(gas: app.Gas, tmp_path: Path, content: bytes, reason: str) -> None:
    bad = tmp_path / "upload.vcf"
    bad.write_bytes(content)
    good = app.submit(gas, SAMPLES / "test.vcf", user_id="u")
    job = app.submit(gas, bad, user_id="u")
    run(gas, "annotate", "notify")
    assert reason in failed_reason(gas, job)
    good_rec = gas.backend.store.get(good)
    assert good_rec is not None and good_rec.status == JobStatus.COMPLETED
    assert len(gas.resources.mailer.sent()) == 1


def test_a_hanging_annotator_is_retried_then_failed(tmp_path: Path) -> None:
    cfg = config(annotator_cmd=[sys.executable, "-c", "import time; time.sleep(60)"], annotator_timeout_s=0.5,
                 max_receives=2)
    gas = open_at(tmp_path, cfg)
    job = app.submit(gas, SAMPLES / "test.vcf", user_id="u")
    started = time.time()
    run(gas, "annotate")
    assert time.time() - started < 20
    assert "exceeded its 0.5s time limit (attempt 2 of 2)" in failed_reason(gas, job)
    [dead] = gas.backend.transport.peek("gas_annotate-dlq", 10)
    assert job in dead.body and "time limit" in dead.attributes["dead_letter_reason"]
    gas.close()


@pytest.mark.slow
def test_annotate_workers_killed_mid_annotation_lose_nothing(tmp_path: Path) -> None:
    # Given six jobs and two annotate worker processes whose annotator takes a while
    gas = open_at(tmp_path, config())
    url = f"sqlite:///{tmp_path}/gas.db"
    jobs = [app.submit(gas, SAMPLES / n, user_id=f"u{i}", tier="premium")
            for i, n in enumerate(["test.vcf", "free_1.vcf", "free_2.vcf", "premium_1.vcf", "test.vcf", "free_1.vcf"])]
    env = {"GAS_ANNOTATOR_CMD": SLOW_ANNOTATOR, "GAS_VISIBILITY_TIMEOUT_S": "2", "GAS_RETRY_BASE_S": "0.1",
           "GAS_MAX_RECEIVES": "10"}
    procs = [app.spawn_worker(url, "annotate", env=env) for _ in range(2)]
    rng = random.Random(3)
    # When workers are SIGKILLed while annotators run, and restarted
    for _ in range(4):
        time.sleep(rng.uniform(0.3, 0.8))
        i = rng.randrange(2)
        procs[i].send_signal(signal.SIGKILL)
        procs[i].wait()
        procs[i] = app.spawn_worker(url, "annotate", env=env)
    for p in procs:
        p.send_signal(signal.SIGTERM)
        p.wait()
    finisher = app.spawn_worker(url, "annotate", env=env, until_idle=True)
    assert finisher.wait(timeout=120) == 0
    run(gas, "notify")
    # Then every job completed once, with one email each
    for job in jobs:
        rec = gas.backend.store.get(job)
        assert rec is not None and rec.status == JobStatus.COMPLETED and rec.commits("annotate") == 1
    assert len(gas.resources.mailer.sent()) == len(jobs)
    gas.close()


def test_duplicate_results_messages_send_one_email(gas: app.Gas) -> None:
    job = app.submit(gas, SAMPLES / "test.vcf", user_id="u")
    run(gas, "annotate")
    [copy] = gas.backend.transport.peek("gas_notify", 10)
    from orchestrator.base import Outgoing

    gas.backend.transport.send("gas_notify", Outgoing(body=copy.body, message_id="redelivered-copy"))
    run(gas, "notify")
    assert len(gas.resources.mailer.sent()) == 1
    rec = gas.backend.store.get(job)
    assert rec is not None and rec.commits("notify") == 1
