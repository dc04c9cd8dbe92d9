"""The GAS handlers: annotate, notify, archive, restore. One controller per stage."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from examples.gas.annotator import EXIT_MALFORMED
from examples.gas.config import REQUEST_KEYS, ROOT, GasConfig, GasResources
from orchestrator import Context, Envelope, JobStatus, PermanentError, Pipeline, Result
from orchestrator.envelope import derive_id
from orchestrator.errors import ObjectNotFound

JOB_REQUESTS = "job_requests"
JOB_RESULTS = "job_results"
JOB_RESTORES = "job_restores"
RESULT_KEYS = ("job_id", "user_id", "s3_results_bucket", "s3_key_result_file", "s3_key_log_file", "complete_time")


class AnnotatorFailed(Exception):
    """The annotator crashed or hung: transient, the message is retried."""


def safe_file_name(name: str) -> str:
    """The request's ``input_file_name`` as a plain file name: it is joined onto a temp
    directory, so a path (``/tmp/x.vcf``, ``../../x.vcf``) could write anywhere on disk."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise PermanentError(f"input_file_name {name!r} is not a plain file name")
    return name


def check_owner(key: str, user_id: str) -> None:
    """A request may only name an input under its own user's folder (``<prefix>/<user_id>/<file>``,
    as GAS web apps upload): otherwise one user could have another's file annotated and read
    the result."""
    folders = key.split("/")[:-1]
    if not user_id or user_id not in folders:
        raise PermanentError(f"s3_key_input_file {key!r} is not in user {user_id!r}'s folder")


def build_pipeline(cfg: GasConfig, res: GasResources) -> Pipeline:
    p = Pipeline("gas")
    common: dict[str, Any] = {"visibility_timeout": cfg.visibility_timeout, "max_receives": cfg.max_receives,
                              "retry_base_s": cfg.retry_base_s, "retry_max_s": max(cfg.retry_base_s, 60.0),
                              "plain_json": True, "wait_s": 0.2}

    # batch_size=1 for annotate: each annotation takes seconds, so a prefetched batch would wait
    # behind it while other workers idle.
    @p.stage("annotate", source="gas_annotate", subscribe=(JOB_REQUESTS,), raw_subscription=False,
             publish_to=JOB_RESULTS, emit_format="plain", required_fields=REQUEST_KEYS,
             time_limit_s=cfg.annotator_timeout_s * 2, batch_size=1, **common)
    def annotate(ctx: Context, msg: Envelope) -> Result:
        req = msg.payload
        bucket, key = str(req["s3_inputs_bucket"]), str(req["s3_key_input_file"])
        name = safe_file_name(str(req["input_file_name"]))
        check_owner(key, str(req["user_id"]))
        try:
            data = res.bucket(bucket, cfg).get(key)
        except ObjectNotFound:
            raise PermanentError(f"input file {bucket}/{key} not found") from None
        with tempfile.TemporaryDirectory(prefix="gas-") as tmp:
            src = Path(tmp) / name
            src.write_bytes(data)
            out = Path(tmp) / "out"
            out.mkdir()
            count = _run_annotator(cfg, src, out, ctx)
            stem = name.removesuffix(".vcf")
            base = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
            result_key = f"{base}{msg.job_id}~{stem}.annot.vcf"
            log_key = f"{base}{msg.job_id}~{name}.count.log"
            res.results.put(result_key, (out / f"{stem}.annot.vcf").read_bytes())
            res.results.put(log_key, (out / f"{name}.count.log").read_bytes())
        fields = {"s3_results_bucket": cfg.results_bucket, "s3_key_result_file": result_key,
                  "s3_key_log_file": log_key, "complete_time": int(ctx.clock.now()), "variants": count}
        notice = {"user_id": req["user_id"], "input_file_name": name, **fields}
        return Result(status=JobStatus.COMPLETED, fields=fields, emit=[notice])

    @p.stage("notify", source="gas_notify", subscribe=(JOB_RESULTS,), raw_subscription=False,
             required_fields=("job_id", "user_id", "s3_key_result_file"), **common)
    def notify(ctx: Context, msg: Envelope) -> Result:
        job = ctx.job.fields
        to = str(job.get("user_email") or f"{msg.payload['user_id']}@users.example.org")
        link = f"{cfg.web_url}/annotations/{msg.job_id}"
        # One email per job, whatever the redeliveries: the key names the job, not the message.
        sent = res.mailer.send(derive_id("gas-email", msg.job_id), to=to,
                               subject=f"Results available for job {msg.job_id}",
                               body=f"Your annotation of {job.get('input_file_name', 'your file')} is complete.\n"
                                    f"View and download the results: {link}\n")
        ctx.log.info("notification", sent=sent, to=to)
        return Result(fields={"notified_time": int(ctx.clock.now())})

    @p.stage("archive", source="gas_archive", subscribe=(JOB_RESULTS,), raw_subscription=False,
             delay_s=cfg.retention_s, required_fields=("job_id", "s3_key_result_file"), **common)
    def archive(ctx: Context, msg: Envelope) -> Result:
        job = ctx.job.fields  # read at begin: an upgrade that happened meanwhile is seen
        if job.get("user_tier", "free") != "free":
            return Result(fields={"archive_skipped": "premium user"})
        key = str(job.get("s3_key_result_file") or msg.payload["s3_key_result_file"])
        archive_id = ctx.effect_key("archive")
        if not res.archive.exists(archive_id):
            try:
                res.archive.put(archive_id, res.results.get(key))
            except ObjectNotFound:
                raise PermanentError(f"result file {key} is missing; nothing to archive") from None
        # Remove the hot copy only once the archive write succeeded; a crash before the commit
        # finds the archive present and the hot copy gone, and completes the step.
        res.results.delete(key)
        return Result(fields={"results_file_archive_id": archive_id, "archive_time": int(ctx.clock.now())})

    @p.stage("restore", source=JOB_RESTORES, required_fields=("job_id",), **common)
    def restore(ctx: Context, msg: Envelope) -> Result:
        job = ctx.job.fields
        archive_id = job.get("results_file_archive_id")
        if not archive_id:
            return Result(fields={"restore_skipped": "not archived"})
        key = str(job["s3_key_result_file"])
        if not res.results.exists(key):
            try:
                res.results.put(key, res.archive.get(str(archive_id)))
            except ObjectNotFound:
                raise PermanentError(f"archive {archive_id} of job {msg.job_id} is missing") from None
        return Result(fields={"results_file_archive_id": None, "restore_time": int(ctx.clock.now())})

    return p


def _run_annotator(cfg: GasConfig, src: Path, out: Path, ctx: Context) -> int:
    """Run the annotator in a subprocess: a crash or hang cannot take the controller down."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    started = time.monotonic()
    try:
        proc = subprocess.run([*cfg.annotator_cmd, str(src), str(out)], capture_output=True, text=True,
                              timeout=cfg.annotator_timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise AnnotatorFailed(f"annotator exceeded its {cfg.annotator_timeout_s:g}s time limit") from None
    if proc.returncode == EXIT_MALFORMED:
        raise PermanentError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "malformed VCF")
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        raise AnnotatorFailed(f"annotator exited with {proc.returncode}: {tail[0]}")
    ctx.log.info("annotated", seconds=round(time.monotonic() - started, 3))
    try:
        return int(proc.stdout.split()[-1])
    except (IndexError, ValueError):
        raise AnnotatorFailed(f"annotator printed no variant count: {proc.stdout!r}") from None
