"""GAS commands as functions: setup, submit, upgrade, worker, status."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from examples.gas.config import ROOT, GasConfig, GasResources, check_bucket_names, local_resources, shared_resources
from examples.gas.stages import JOB_REQUESTS, JOB_RESTORES, build_pipeline
from orchestrator import JobRecord, JobStatus, Pipeline, Worker
from orchestrator.backends import Backend, open_backend
from orchestrator.base import Outgoing
from orchestrator.clock import Clock
from orchestrator.envelope import derive_id
from orchestrator.errors import ConfigError, ObjectNotFound, OrchestratorError

#: the priority of a premium user's annotation request (free users': 0)
PREMIUM_PRIORITY = 9

DEFAULT_GAS_BACKEND = "sqlite:///gas.db"
STAGES = ("annotate", "notify", "archive", "thaw", "restore")


class GasError(OrchestratorError):
    """A user mistake (file too large, unknown job): the CLI prints it and exits 2."""


@dataclass
class Gas:
    backend: Backend
    resources: GasResources
    config: GasConfig
    pipeline: Pipeline

    def close(self) -> None:
        self.backend.close()


def open_gas(url: str | None = None, *, config: GasConfig | None = None, clock: Clock | None = None,
             create: bool = True) -> Gas:
    """``create=False``: what exists is used as it is (a supervised worker, whose parent ran
    setup once; a read-only command): no bucket, table or sender is looked at or made."""
    url = url or DEFAULT_GAS_BACKEND
    cfg = config or GasConfig()
    if url.startswith("aws://"):
        from examples.gas.aws import aws_gas

        backend, res = aws_gas(url, cfg, clock=clock, create=create)
    else:
        backend = open_backend(url, clock=clock)
        root = getattr(backend.objects, "root", None)
        if root is not None:
            res = local_resources(Path(root), sender=cfg.mail_sender)
        elif backend.objects is not None:
            res = shared_resources(backend.objects, sender=cfg.mail_sender)
        else:
            raise ConfigError(f"backend {url} has no object store for GAS files")
    return Gas(backend, res, cfg, build_pipeline(cfg, res))


def setup(gas: Gas) -> None:
    check_bucket_names(gas.config)
    gas.pipeline.setup(gas.backend)
    gas.backend.topic.ensure_topic(JOB_REQUESTS)


def profile(gas: Gas, user_id: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(gas.resources.profiles.get(f"{user_id}.json"))
        return doc
    except ObjectNotFound:
        return {"user_id": user_id, "tier": "free"}


def save_profile(gas: Gas, doc: dict[str, Any]) -> None:
    gas.resources.profiles.put(f"{doc['user_id']}.json", json.dumps(doc).encode())


#: a user name: it becomes part of storage keys and the job table's user_id
NAME_RULE = "a name is letters, digits, - and _ (at most 40)"
MIN_PASSWORD = 10


def user_name_problem(name: str) -> str | None:
    if not name or not name.replace("-", "").replace("_", "").isalnum() or not name.isascii() or len(name) > 40:
        return NAME_RULE
    return None


def add_account(gas: Gas, name: str, password: str, *, email: str | None = None, tier: str | None = None,
                new_only: bool = False) -> dict[str, Any]:
    """Give ``name`` a password (only its argon2 hash is kept, with the profile). ``new_only``
    (self sign-up): refused when the name has a profile already, so nobody claims the name of
    a user the deployment knows (their profile has no password until an operator sets one)."""
    from orchestrator.web.auth import hash_password

    problem = user_name_problem(name)
    if problem is not None:
        raise GasError(problem)
    if len(password) < MIN_PASSWORD:
        raise GasError(f"a password has at least {MIN_PASSWORD} characters")
    if new_only and gas.resources.profiles.exists(f"{name}.json"):
        raise GasError(f"the name {name} is taken")
    prof = profile(gas, name)
    prof["password_hash"] = hash_password(password)
    prof["session_epoch"] = int(prof.get("session_epoch", 0)) + 1  # a new password ends old sessions
    if email:
        prof["email"] = email
    if tier:
        prof["tier"] = tier
    save_profile(gas, prof)
    return prof


def check_password(gas: Gas, name: str, password: str) -> dict[str, Any] | None:
    """The profile of ``name`` if ``password`` is theirs, else None (unknown names and
    profiles without a password take as long to refuse as a wrong password)."""
    from orchestrator.web.auth import verify_password

    prof = profile(gas, name) if user_name_problem(name) is None else {}
    return prof if verify_password(prof.get("password_hash"), password) else None


def submit(gas: Gas, path: Path, *, user_id: str, tier: str | None = None, email: str | None = None,
           job_id: str | None = None) -> str:
    """Store the input, create the job PENDING and publish the request as the GAS web app does."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GasError(f"cannot read {path}: {exc.strerror}") from exc
    return submit_bytes(gas, path.name, data, user_id=user_id, tier=tier, email=email, job_id=job_id)


def check_size(gas: Gas, tier: str, size: int, name: str) -> None:
    if tier == "free" and size > gas.config.free_limit_bytes:
        raise GasError(f"{name} is {size:,} bytes; free users may upload up to "
                       f"{gas.config.free_limit_bytes:,} bytes (upgrade to premium for larger files)")


def submit_bytes(gas: Gas, name: str, data: bytes, *, user_id: str, tier: str | None = None,
                 email: str | None = None, job_id: str | None = None) -> str:
    """``submit`` for an upload already in memory."""
    return submit_stream(gas, name, io.BytesIO(data), len(data), user_id=user_id, tier=tier, email=email,
                         job_id=job_id)


def submit_stream(gas: Gas, name: str, source: BinaryIO, size: int, *, user_id: str, tier: str | None = None,
                  email: str | None = None, job_id: str | None = None) -> str:
    """``submit`` for ``size`` bytes read from ``source`` in chunks (the web front end's
    uploads, spooled to a temporary file: never whole in memory)."""
    cfg = gas.config
    prof = profile(gas, user_id)
    if tier:
        prof["tier"] = tier
    if email:
        prof["email"] = email
    save_profile(gas, prof)
    name = Path(name).name or "upload.vcf"
    check_size(gas, prof["tier"], size, name)
    path = Path(name)
    job_id = job_id or str(uuid.uuid4())
    key = f"{cfg.prefix}/{user_id}/{job_id}~{path.name}"
    gas.resources.inputs.put_file(key, source)
    request = {"job_id": job_id, "user_id": user_id, "input_file_name": path.name,
               "s3_inputs_bucket": cfg.inputs_bucket, "s3_key_input_file": key,
               "submit_time": int(time.time()), "job_status": JobStatus.PENDING.value}
    fields = {k: v for k, v in request.items() if k not in ("job_id", "job_status")}
    fields.update(user_tier=prof["tier"], user_email=prof.get("email") or f"{user_id}@users.example.org")

    # premium users' jobs go first (SQLite, PostgreSQL: exact priorities; SNS carries none)
    priority = PREMIUM_PRIORITY if prof["tier"] == "premium" else 0

    with gas.backend.unit():
        gas.backend.store.create(job_id, user_id=user_id, fields=fields)
        gas.backend.topic.publish_batch(JOB_REQUESTS, [Outgoing(body=json.dumps(request), priority=priority,
                                                                message_id=derive_id("gas-request", job_id))])
    return job_id


def upgrade(gas: Gas, user_id: str) -> list[str]:
    """Make a user premium and queue a restore for each of their archived jobs."""
    prof = profile(gas, user_id)
    prof["tier"] = "premium"
    save_profile(gas, prof)
    restored = []
    for job in gas.backend.store.query(user_id=user_id):
        with gas.backend.unit():  # per job: its tier, and its restore asked for, together
            gas.backend.store.update_fields(job.job_id, {"user_tier": "premium"})
            if not job.fields.get(gas.config.attr("results_file_archive_id")):
                continue
            restore = job.steps.get("restore")
            if restore is not None and restore.state == "failed":  # an earlier restore gave up: try again
                gas.backend.store.reset(job.job_id, stage="restore", reason="upgrade: restore again")
            body = json.dumps({"job_id": job.job_id, "user_id": user_id})
            gas.backend.transport.send(JOB_RESTORES, Outgoing(body=body,
                                                              message_id=derive_id("gas-restore", job.job_id)))
        restored.append(job.job_id)
    return restored


def run_worker(gas: Gas, stage: str, *, until_idle: bool = False, concurrency: int = 1,
               chain: bool = False) -> dict[str, int]:
    """``chain``: until idle means every GAS queue is idle (stages run together: notify must not
    leave while annotate still works); otherwise this stage's queue."""
    queues = [st.source for st in gas.pipeline.stages.values()] if chain else None
    worker = Worker(gas.pipeline, stage, gas.backend, concurrency=concurrency, idle_queues=queues)
    worker.stop_on_signals()
    worker.run(until_idle=until_idle)
    return dict(worker.stats)


def spawn_worker(url: str, stage: str, *, until_idle: bool = False, env: dict[str, str] | None = None,
                 log_level: str = "warning", stderr: int | None = subprocess.PIPE,
                 chain: bool = False, setup: bool = True) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "examples.gas", "--log-level", log_level, "worker", "--stage", stage,
           "--backend", url]
    if not setup:  # the parent set the deployment up once: five children need not do it five times
        cmd.append("--no-setup")
    if until_idle:
        cmd.append("--until-idle")
    if chain:
        cmd.append("--chain")
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    return subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL, stderr=stderr)


def run_processes(url: str, stages: list[str], processes: int, *, until_idle: bool, log_level: str = "warning") -> int:
    # the children log at our level, straight to our stderr (a pipe nobody reads would hide
    # their errors, and block them once full)
    procs = [spawn_worker(url, s, until_idle=until_idle, log_level=log_level, stderr=None, chain=len(stages) > 1,
                          setup=False)
             for s in stages for _ in range(processes)]

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [p.wait() for p in procs]
    return max(codes, default=0)


def job_row(job: JobRecord, cfg: GasConfig | None = None) -> dict[str, Any]:
    """A job's row in ``status``, read under the deployment's attribute names (``cfg``)."""
    f, a = job.fields, (cfg or GasConfig()).attr
    return {"job_id": job.job_id, "user_id": job.user_id, "tier": f.get("user_tier"),
            "file": f.get("input_file_name"), "status": job.status.value, "variants": f.get("variants"),
            "result_key": f.get(a("s3_key_result_file")), "emailed": "notified_time" in f,
            "archived": bool(f.get(a("results_file_archive_id"))), "restored": a("restore_time") in f,
            "reason": next((h.reason for h in reversed(job.history) if h.reason), None)}
