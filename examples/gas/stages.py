"""The GAS handlers: annotate, notify, archive, thaw, restore. One controller per stage."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from examples.gas.accounts import open_accounts
from examples.gas.annotator import EXIT_MALFORMED
from examples.gas.config import REQUEST_KEYS, ROOT, GasConfig, GasResources
from orchestrator import Context, Emit, Envelope, JobStatus, PermanentError, Pipeline, Result, Snooze
from orchestrator.envelope import derive_id
from orchestrator.errors import ObjectArchived, ObjectNotFound

JOB_REQUESTS = "job_requests"
JOB_RESULTS = "job_results"
JOB_RESTORES = "job_restores"
#: the longest the restore stage waits between looks at a Glacier restore
RESTORE_POLL_MAX_S = 15 * 60.0
#: the result's times, shown to people as GAS_TIME_FORMAT says
TIME_KEYS = ("complete_time", "submit_time")
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


def results_message(cfg: GasConfig, job_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """The job_results message: ours, or the deployment's template (``GAS_RESULTS_MESSAGE``)
    with ``{name}`` placeholders filled from the result (and ``link``). ``job_id`` is always
    there: our own notify and archive stages find the job by it."""
    if cfg.results_template is None:
        return {"job_id": job_id, **result}
    values = {"job_id": job_id, "link": f"{cfg.web_url}/annotations/{job_id}", **result}
    for name in TIME_KEYS:  # read by people: as GAS_TIME_FORMAT says
        if isinstance(values.get(name), int | float):
            values[name] = cfg.format_time(values[name])

    def fill(v: Any) -> Any:
        if isinstance(v, str):
            try:
                return v.format_map(values)
            except (KeyError, IndexError, ValueError) as exc:
                raise PermanentError(f"GAS_RESULTS_MESSAGE template {v!r}: {exc!r} is not a result field") from None
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        return v

    return {"job_id": job_id, **fill(cfg.results_template)}


def build_pipeline(cfg: GasConfig, res: GasResources) -> Pipeline:
    p = Pipeline("gas")
    common: dict[str, Any] = {"visibility_timeout_s": cfg.visibility_timeout_s, "max_receives": cfg.max_receives,
                              "retry_base_s": cfg.retry_base_s, "retry_max_s": max(cfg.retry_base_s, 60.0),
                              "plain_json": True, "wait_s": 0.2}
    accounts = res.accounts or open_accounts(cfg.accounts)
    _add_annotate(p, cfg, res, common)
    _add_notify(p, cfg, res, accounts, common)
    _add_archive(p, cfg, res, accounts, common)
    if cfg.thaw_topic:
        _add_thaw(p, cfg, common)
    _add_restore(p, cfg, res, common)
    return p


def _add_annotate(p: Pipeline, cfg: GasConfig, res: GasResources, common: dict[str, Any]) -> None:
    # batch_size=1 for annotate: each annotation takes seconds, so a prefetched batch would wait
    # behind it while other workers idle. begin="eager": the web app shows RUNNING as soon as an
    # annotator takes the job, as GAS's own annotator did (an annotation is slow: the write is free).
    @p.stage("annotate", source="gas_annotate", subscribe=(JOB_REQUESTS,), raw_subscription=False,
             publish_to=JOB_RESULTS, emit_format="plain", required_fields=REQUEST_KEYS,
             time_limit_s=cfg.annotator_timeout_s * 2, batch_size=1, begin="eager", **common)
    def annotate(ctx: Context, msg: Envelope) -> Result:
        req = msg.payload
        bucket, key = str(req["s3_inputs_bucket"]), str(req["s3_key_input_file"])
        name = safe_file_name(str(req["input_file_name"]))
        check_owner(key, str(req["user_id"]))
        try:
            data = res.bucket(bucket, cfg).get(key)
        except ObjectNotFound:
            raise PermanentError(f"input file {bucket}/{key} not found") from None
        result_key, log_key, count = _annotate_file(cfg, res, ctx, msg.job_id, key, name, data)
        ours = {"s3_results_bucket": cfg.results_bucket, "s3_key_result_file": result_key,
                "s3_key_log_file": log_key, "complete_time": int(ctx.clock.now()), "variants": count}
        fields = {cfg.attr(k): v for k, v in ours.items()}  # under the deployment's attribute names
        notice = results_message(cfg, msg.job_id, {"user_id": req["user_id"], "input_file_name": name, **ours})
        return Result(status=JobStatus.COMPLETED, fields=fields, emit=[notice])


def _annotate_file(cfg: GasConfig, res: GasResources, ctx: Context, job_id: str, key: str, name: str,
                   data: bytes) -> tuple[str, str, int]:
    """Annotate the input's bytes and store the result and the log beside the input's folder:
    (result key, log key, variants)."""
    with tempfile.TemporaryDirectory(prefix="gas-") as tmp:
        src = Path(tmp) / name
        src.write_bytes(data)
        out = Path(tmp) / "out"
        out.mkdir()
        count = _run_annotator(cfg, src, out, ctx)
        stem = name.removesuffix(".vcf")
        base = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        result_key = f"{base}{job_id}~{stem}.annot.vcf"
        log_key = f"{base}{job_id}~{name}.count.log"
        res.results.put(result_key, (out / f"{stem}.annot.vcf").read_bytes())
        res.results.put(log_key, (out / f"{name}.count.log").read_bytes())
    return result_key, log_key, count


def _add_notify(p: Pipeline, cfg: GasConfig, res: GasResources, accounts: Any, common: dict[str, Any]) -> None:
    # notify and archive read what they need from the job record, so a deployment may publish
    # job_results in its own shape (GAS_RESULTS_MESSAGE) as long as it keeps job_id
    @p.stage("notify", source="gas_notify", subscribe=(JOB_RESULTS,), raw_subscription=False,
             required_fields=("job_id",), **common)
    def notify(ctx: Context, msg: Envelope) -> Result:
        job = ctx.job.fields
        user_id = ctx.job.user_id or str(msg.payload.get("user_id") or "")
        to = accounts.get(user_id, job).email
        if not to or "@" not in to:
            raise PermanentError(f"no email address for user {user_id!r} (accounts source {accounts.spec}): "
                                 "nothing sent")
        link = f"{cfg.web_url}/annotations/{msg.job_id}"
        # One email per job, whatever the redeliveries: the key names the job, not the message.
        sent = res.mailer.send(derive_id("gas-email", msg.job_id), to=to,
                               subject=cfg.mail_subject.format(job_id=msg.job_id, user_id=user_id),
                               body=f"Your annotation of {job.get('input_file_name', 'your file')} is complete"
                                    + (f" ({cfg.format_time(done)})" if isinstance(done := job.get(
                                        cfg.attr("complete_time")), int | float) else "")
                                    + f".\nView and download the results: {link}\n")
        ctx.log.info("notification", sent=sent, to=to)
        return Result(fields={"notified_time": int(ctx.clock.now())})


def _add_archive(p: Pipeline, cfg: GasConfig, res: GasResources, accounts: Any, common: dict[str, Any]) -> None:
    @p.stage("archive", source="gas_archive", subscribe=(JOB_RESULTS,), raw_subscription=False,
             delay_s=cfg.retention_s, required_fields=("job_id",), **common)
    def archive(ctx: Context, msg: Envelope) -> Result:
        job = ctx.job.fields  # read at begin: an upgrade that happened meanwhile is seen
        # unknown tier = premium: never archive what we cannot prove is free
        if accounts.get(ctx.job.user_id or str(msg.payload.get("user_id") or ""), job).tier != "free":
            return Result(fields={"archive_skipped": "premium user"})
        key = job.get(cfg.attr("s3_key_result_file")) or msg.payload.get("s3_key_result_file")
        if not key:
            raise PermanentError(f"job {msg.job_id} has no result file to archive")
        key = str(key)
        archive_id = ctx.effect_key("archive")
        if not res.archive.exists(archive_id):
            try:
                res.archive.put(archive_id, res.results.get(key))
            except ObjectNotFound:
                raise PermanentError(f"result file {key} is missing; nothing to archive") from None
        # Remove the hot copy only once the archive write succeeded; a crash before the commit
        # finds the archive present and the hot copy gone, and completes the step.
        res.results.delete(key)
        return Result(fields={cfg.attr("results_file_archive_id"): archive_id,
                              cfg.attr("archive_time"): int(ctx.clock.now())})


def _add_thaw(p: Pipeline, cfg: GasConfig, common: dict[str, Any]) -> None:
    # Web apps publish a restore request per job ({job_id, results_file_archive_id, ...})
    # or one per user ({"archives_data": [{job_id, ...}, ...]}) on upgrade: one restore
    # message per job named.
    assert cfg.thaw_topic is not None

    @p.stage("thaw", source="gas_thaw", subscribe=(cfg.thaw_topic,), raw_subscription=False,
             nothing_to_do=_no_archives, **{**common, "job_id_field": "job_id|archives_data.0.job_id"})
    def thaw(ctx: Context, msg: Envelope) -> Result:
        entries = msg.payload.get("archives_data")
        named = entries if isinstance(entries, list) else [msg.payload]
        ids = list(dict.fromkeys(str(e["job_id"]) for e in named if isinstance(e, dict) and e.get("job_id")))
        return Result(emit=[Emit({"job_id": j}, to=JOB_RESTORES, plain=True) for j in ids])


def _add_restore(p: Pipeline, cfg: GasConfig, res: GasResources, common: dict[str, Any]) -> None:
    # Glacier takes minutes (Expedited) to hours (Standard, Bulk): the stage snoozes while S3
    # restores, looking again after restore_poll_s, doubling up to 15 minutes, for at most
    # restore_max_wait_s. A snooze uses no attempt, and the item says "restoring" meanwhile.
    @p.stage("restore", source=JOB_RESTORES, required_fields=("job_id",), max_snooze_s=cfg.restore_max_wait_s,
             **common)
    def restore(ctx: Context, msg: Envelope) -> Result | Snooze:
        job = ctx.job.fields
        archive_id = job.get(cfg.attr("results_file_archive_id"))
        if not archive_id:
            return Result(fields={"restore_skipped": "not archived"})
        key = str(job[cfg.attr("s3_key_result_file")])

        def wait(reason: str, **more: str) -> Snooze:
            waits = sum(1 for h in ctx.job.history if h.event == "snoozed" and h.stage == "restore")
            return Snooze(min(RESTORE_POLL_MAX_S, cfg.restore_poll_s * 2 ** min(waits, 20)), reason=reason,
                          fields={cfg.attr("restore_status"): cfg.restore_states["restoring"], **more})

        if not res.results.exists(key):
            try:
                res.results.put(key, res.archive.get(str(archive_id)))
            except ObjectNotFound:
                if res.vault is None:
                    raise PermanentError(f"archive {archive_id} of job {msg.job_id} is missing") from None
                # not ours: an archive the web app's own archiver put in its Glacier vault
                got = res.vault.retrieve(str(archive_id), job.get(cfg.attr("restore_job_id")))
                if got.data is None:
                    return wait(got.waiting, **{cfg.attr("restore_job_id"): got.job_id})
                res.results.put(key, got.data)
            except ObjectArchived as exc:
                return wait(str(exc))
        return Result(fields={cfg.attr("results_file_archive_id"): None, cfg.attr("restore_time"): int(ctx.clock.now()),
                              cfg.attr("restore_status"): cfg.restore_states["restored"],
                              cfg.attr("restore_job_id"): None})


def _no_archives(doc: dict[str, Any]) -> bool:
    """An upgrade's thaw request listing no archives (the user had none): nothing to restore."""
    entries = doc.get("archives_data")
    return isinstance(entries, list) and not entries


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
