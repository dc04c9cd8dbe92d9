"""GAS settings and the outside resources its handlers use (buckets, mailbox)."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from examples.gas.accounts import Accounts
from orchestrator.base import ObjectStore
from orchestrator.durations import parse_duration
from orchestrator.errors import ConfigError
from orchestrator.objects.local import LocalObjectStore

ROOT = Path(__file__).resolve().parents[2]  # the project root, so subprocesses can import examples.gas

DEFAULT_SENDER = "gas-notifications@example.org"
FREE_LIMIT_BYTES = 150 * 1024  # GAS's web front end capped free users' uploads at 150 KB
DEFAULT_RETENTION_S = 300.0  # how long a free user's results stay hot before archiving
DEFAULT_ANNOTATOR_TIMEOUT_S = 120.0
REQUEST_KEYS = ("job_id", "user_id", "input_file_name", "s3_inputs_bucket", "s3_key_input_file", "submit_time",
                "job_status")


def _env_json(name: str, default: Any) -> Any:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc}") from exc


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def _env_duration(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return parse_duration(raw) if raw else default
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


@dataclass
class GasConfig:
    prefix: str = "gas"  # key prefix inside the buckets (the original GAS used the CNetID)
    inputs_bucket: str = "gas-inputs"
    results_bucket: str = "gas-results"
    archive_bucket: str = "gas-archive"
    retention_s: float = field(default_factory=lambda: _env_float("GAS_RETENTION_S", DEFAULT_RETENTION_S))
    annotator_timeout_s: float = field(
        default_factory=lambda: _env_float("GAS_ANNOTATOR_TIMEOUT_S", DEFAULT_ANNOTATOR_TIMEOUT_S))
    annotator_cmd: list[str] = field(default_factory=lambda: shlex.split(os.environ["GAS_ANNOTATOR_CMD"])
                                     if os.environ.get("GAS_ANNOTATOR_CMD") else [sys.executable, "-m",
                                                                                  "examples.gas.annotator"])
    visibility_timeout: float = field(default_factory=lambda: _env_float("GAS_VISIBILITY_TIMEOUT_S", 60.0))
    max_receives: int = field(default_factory=lambda: int(_env_float("GAS_MAX_RECEIVES", 3)))
    retry_base_s: float = field(default_factory=lambda: _env_float("GAS_RETRY_BASE_S", 2.0))
    free_limit_bytes: int = FREE_LIMIT_BYTES
    #: the link base in notification emails (``{web_url}/annotations/{job_id}``)
    web_url: str = field(default_factory=lambda: os.environ.get("GAS_LINK_BASE", "https://gas.example.org"))
    mail_sender: str = field(default_factory=lambda: os.environ.get("GAS_MAIL_SENDER", DEFAULT_SENDER))
    mail_subject: str = field(default_factory=lambda: os.environ.get(
        "GAS_MAIL_SUBJECT", "Results available for job {job_id}"))
    #: item attribute names we write, ours -> the deployment's (e.g. complete_time -> completion_time)
    attribute_names: dict[str, str] = field(default_factory=lambda: _env_json("GAS_ATTRIBUTE_NAMES", {}))
    #: the status value written for our terminal failure (some web apps know only their own)
    failed_status: str = field(default_factory=lambda: os.environ.get("GAS_FAILED_STATUS", "FAILED"))
    #: where tier and email come from: "item" (the job's attributes), "dynamodb:TABLE",
    #: "sql:URL#QUERY" (one row: tier, email; the user id is the query's one parameter) or
    #: "python:MODULE:FUNCTION" (user_id, item -> (tier, email))
    accounts: str = field(default_factory=lambda: os.environ.get("GAS_ACCOUNTS", "item"))
    #: the topic web apps publish restore ("thaw") requests to on upgrade; "" for none
    thaw_topic: str = field(default_factory=lambda: os.environ.get("GAS_THAW_TOPIC", "job_thaws"))
    #: the job_results message: None for ours, or a JSON object whose string values are
    #: templates over the result ("{job_id}", "{s3_key_result_file}", "{link}", ...)
    results_template: dict[str, Any] | None = field(
        default_factory=lambda: _env_json("GAS_RESULTS_MESSAGE", None))
    #: the Glacier retrieval tier of a restore: Expedited (minutes), Standard (hours), Bulk
    restore_tier: str = field(default_factory=lambda: os.environ.get("GAS_RESTORE_TIER", "Expedited"))
    #: how long the restore stage waits for Glacier before the restore FAILS (then an upgrade
    #: or a redrive tries again)
    restore_max_wait_s: float = field(default_factory=lambda: _env_duration("GAS_RESTORE_MAX_WAIT", 48 * 3600.0))
    #: the restore stage looks again after this, doubling each time up to 15 minutes
    restore_poll_s: float = field(default_factory=lambda: _env_duration("GAS_RESTORE_POLL", 30.0))
    #: what the item's ``restore_status`` says while the restore waits and once it is done
    restore_states: dict[str, str] = field(default_factory=lambda: _env_json(
        "GAS_RESTORE_STATES", {"restoring": "RESTORING", "restored": "RESTORED"}))

    def attr(self, name: str) -> str:
        """The item attribute the deployment uses for our ``name``."""
        return self.attribute_names.get(name, name)

    def __post_init__(self) -> None:
        if self.restore_tier not in ("Expedited", "Standard", "Bulk"):
            raise ConfigError(f"GAS_RESTORE_TIER {self.restore_tier!r}: one of Expedited, Standard, Bulk")
        if set(self.restore_states) != {"restoring", "restored"}:
            raise ConfigError('GAS_RESTORE_STATES must name "restoring" and "restored", got '
                              f"{sorted(self.restore_states)}")
        self.inputs_bucket = os.environ.get("GAS_INPUTS_BUCKET", self.inputs_bucket)
        self.results_bucket = os.environ.get("GAS_RESULTS_BUCKET", self.results_bucket)
        self.archive_bucket = os.environ.get("GAS_ARCHIVE_BUCKET", self.archive_bucket)


class Mailer(Protocol):
    def send(self, key: str, *, to: str, subject: str, body: str) -> bool:
        """Send once per ``key``: a second call with the same key sends nothing, returns False."""
        ...

    def sent(self) -> list[str]: ...


@dataclass
class GasResources:
    inputs: ObjectStore
    results: ObjectStore
    archive: ObjectStore
    profiles: ObjectStore
    mailer: Mailer
    #: opens a bucket the request names that is none of ours (on AWS: any S3 bucket)
    other_bucket: Callable[[str], ObjectStore] | None = None
    #: where tiers and emails come from; None: ``GasConfig.accounts``
    accounts: Accounts | None = None

    def bucket(self, name: str, cfg: GasConfig) -> ObjectStore:
        known = {cfg.inputs_bucket: self.inputs, cfg.results_bucket: self.results, cfg.archive_bucket: self.archive}
        if name in known:
            return known[name]
        if self.other_bucket is not None:
            return self.other_bucket(name)
        return self.inputs


def check_bucket_names(cfg: GasConfig) -> None:
    for name in (cfg.inputs_bucket, cfg.results_bucket, cfg.archive_bucket):
        if "_" in name:
            # moto accepts it; AWS refuses (bucket names: lower-case letters, digits, '.' and '-')
            raise ConfigError(f"bucket name {name!r} has '_', which S3 refuses: use '-' instead")


def shared_resources(objects: ObjectStore, *, sender: str = DEFAULT_SENDER) -> GasResources:
    """GAS files in the backend's own object store, a prefix per bucket (PostgreSQL)."""
    from examples.gas.mailer import ObjectMailbox
    from orchestrator.objects.prefixed import PrefixedObjectStore

    def bucket(name: str) -> ObjectStore:
        return PrefixedObjectStore(objects, f"gas/{name}")

    return GasResources(inputs=bucket("inputs"), results=bucket("results"), archive=bucket("archive"),
                        profiles=bucket("profiles"), mailer=ObjectMailbox(bucket("mailbox"), sender=sender))


def local_resources(root: Path, *, sender: str = DEFAULT_SENDER) -> GasResources:
    from examples.gas.mailer import LocalMailbox

    return GasResources(
        inputs=LocalObjectStore(root / "inputs"),
        results=LocalObjectStore(root / "results"),
        archive=LocalObjectStore(root / "archive"),
        profiles=LocalObjectStore(root / "profiles"),
        mailer=LocalMailbox(root / "mailbox", sender=sender),
    )
