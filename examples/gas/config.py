"""GAS settings and the outside resources its handlers use (buckets, mailbox)."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from examples.gas.accounts import Accounts
from examples.gas.vault import LegacyVault
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


#: every GAS_* environment variable GAS reads: (name, default, what). ``python -m examples.gas
#: --help`` lists them; a test checks that the code reads no other and the GAS page (docs/gas.md) names each.
SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("GAS_BACKEND", "sqlite:///gas.db", "the backend URL (sqlite:///PATH, postgresql://..., aws://?region=R&prefix=P)"),
    ("GAS_LOG_LEVEL", "info", "debug, info, warning or error"),
    ("GAS_INPUTS_BUCKET", "<prefix>gas-inputs", "the inputs bucket (S3 refuses '_': checked at setup)"),
    ("GAS_RESULTS_BUCKET", "<prefix>gas-results", "the results bucket"),
    ("GAS_ARCHIVE_BUCKET", "<prefix>gas-archive", "the Glacier archive bucket"),
    ("GAS_STATE_BUCKET", "<prefix>gas-state", "our own bucket: user profiles, sent-email markers"),
    ("GAS_RETENTION_S", str(DEFAULT_RETENTION_S), "seconds a free user's results stay before they are archived"),
    ("GAS_MAX_RECEIVES", "3", "handler attempts per message before FAILED and a dead letter"),
    ("GAS_RETRY_BASE_S", "2.0", "the first retry's delay, doubled each attempt (at most 60 s)"),
    ("GAS_VISIBILITY_TIMEOUT_S", "60.0", "each stage's lease on a message, seconds"),
    ("GAS_ANNOTATOR_CMD", "python -m examples.gas.annotator", "the annotator command (INPUT.vcf OUT_DIR appended)"),
    ("GAS_ANNOTATOR_TIMEOUT_S", str(DEFAULT_ANNOTATOR_TIMEOUT_S), "seconds an annotation may run"),
    ("GAS_ATTRIBUTE_NAMES", "{}", 'item attributes we write, renamed: {"complete_time": "completion_time"}'),
    ("GAS_FAILED_STATUS", "FAILED", "the status value written for a failed job"),
    ("GAS_ACCOUNTS", "item", "who is premium, and their email: item, dynamodb:TABLE?..., sql:URL#QUERY, "
                             "python:MODULE:FUNCTION"),
    ("GAS_MAIL_SENDER", DEFAULT_SENDER, "the notification email's sender"),
    ("GAS_LINK_BASE", "https://gas.example.org", "the link base in emails ({base}/annotations/{job_id})"),
    ("GAS_MAIL_SUBJECT", "Results available for job {job_id}", "the email's subject"),
    ("GAS_THAW_TOPIC", "job_thaws", "the web app's restore topic on upgrade ('' for none)"),
    ("GAS_RESULTS_MESSAGE", "ours", "the job_results message as a JSON template"),
    ("GAS_WEB_SECURE_COOKIE", "off", "1: the web front end's session cookie only over HTTPS (behind TLS)"),
    ("GAS_UPLOADS_IN_FLIGHT", "1GB", "the bytes of web uploads received at once (spooled to temporary files); "
                                    "past it an upload gets 503, try again"),
    ("GAS_SIGNIN", "password", "how web users sign in: password (accounts), oidc (GAS_OIDC_*) or dev (any name; web --dev)"),
    ("GAS_OIDC_ISSUER", "(none)", "with GAS_SIGNIN=oidc: the OpenID Connect issuer (its discovery document "
                                  "gives the endpoints and keys)"),
    ("GAS_OIDC_CLIENT_ID", "(none)", "with GAS_SIGNIN=oidc: this front end's client id at the issuer"),
    ("GAS_OIDC_CLIENT_SECRET", "(none)", "with GAS_SIGNIN=oidc: its client secret"),
    ("GAS_OIDC_SCOPE", "openid email profile", "with GAS_SIGNIN=oidc: the scopes asked for"),
    ("GAS_USER_PASSWORD", "asked", "the password 'user NAME' sets (read from the terminal when unset)"),
    ("GAS_TIME_FORMAT", "epoch", "times in message templates and emails: epoch, iso, or a strftime pattern (UTC)"),
    ("GAS_RESTORE_TIER", "Expedited", "the Glacier retrieval tier: Expedited, Standard or Bulk"),
    ("GAS_LEGACY_VAULT", "(none)", "the Glacier vault the web app's own archiver used: its archive ids are "
                                   "restored through the Glacier API"),
    ("GAS_RESTORE_POLL", "30s", "how long a restore waits before it looks again (doubling, at most 15 min)"),
    ("GAS_RESTORE_MAX_WAIT", "48h", "how long a restore waits for Glacier before it FAILS"),
    ("GAS_RESTORE_STATES", '{"restoring": "RESTORING", "restored": "RESTORED"}',
     "what the item's restore_status says while a restore waits, and once it is done"),
    ("GAS_OPERATORS", "admin", "who the web front end shows the link to the operators' dashboard (comma-separated user names)"),
    ("GAS_WEB_SECRET", "(random per start)", "the web front end's session signing key"),
    ("GAS_SAMPLES_DIR", "(the bundled samples)", "where the demo finds its VCF samples"),
)


def settings_help() -> str:
    """The ``--help`` text of every GAS_* setting."""
    width = max(len(name) for name, _, _ in SETTINGS)
    return "settings (environment variables):\n" + "\n".join(
        f"  {name:<{width}}  {what} (default: {default})" for name, default, what in SETTINGS)


@dataclass
class GasConfig:
    prefix: str = "gas"  # key prefix inside the buckets (the original GAS used the CNetID)
    inputs_bucket: str = "gas-inputs"
    results_bucket: str = "gas-results"
    archive_bucket: str = "gas-archive"
    state_bucket: str = "gas-state"
    retention_s: float = field(default_factory=lambda: _env_float("GAS_RETENTION_S", DEFAULT_RETENTION_S))
    annotator_timeout_s: float = field(
        default_factory=lambda: _env_float("GAS_ANNOTATOR_TIMEOUT_S", DEFAULT_ANNOTATOR_TIMEOUT_S))
    annotator_cmd: list[str] = field(default_factory=lambda: shlex.split(os.environ["GAS_ANNOTATOR_CMD"])
                                     if os.environ.get("GAS_ANNOTATOR_CMD") else [sys.executable, "-m",
                                                                                  "examples.gas.annotator"])
    visibility_timeout_s: float = field(default_factory=lambda: _env_float("GAS_VISIBILITY_TIMEOUT_S", 60.0))
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
    #: the Glacier vault (Glacier API) the web app's own archiver put results in before the
    #: switch-over: an archive id not in our archive bucket is restored from it
    legacy_vault: str = field(default_factory=lambda: os.environ.get("GAS_LEGACY_VAULT", ""))
    #: how long the restore stage waits for Glacier before the restore FAILS (then an upgrade
    #: or a redrive tries again)
    restore_max_wait_s: float = field(default_factory=lambda: _env_duration("GAS_RESTORE_MAX_WAIT", 48 * 3600.0))
    #: the restore stage looks again after this, doubling each time up to 15 minutes
    restore_poll_s: float = field(default_factory=lambda: _env_duration("GAS_RESTORE_POLL", 30.0))
    #: what the item's ``restore_status`` says while the restore waits and once it is done
    restore_states: dict[str, str] = field(default_factory=lambda: _env_json(
        "GAS_RESTORE_STATES", {"restoring": "RESTORING", "restored": "RESTORED"}))
    #: how times read in messages' templates and in emails: epoch (seconds), iso (UTC), or a
    #: strftime pattern (UTC); the item keeps epoch seconds, as the web apps read them
    time_format: str = field(default_factory=lambda: os.environ.get("GAS_TIME_FORMAT", "epoch"))

    def format_time(self, ts: float | int) -> str:
        """``ts`` (epoch seconds) as ``time_format`` says."""
        if self.time_format == "epoch":
            return str(int(ts))
        at = datetime.fromtimestamp(float(ts), tz=UTC)
        if self.time_format == "iso":
            return at.strftime("%Y-%m-%dT%H:%M:%SZ")
        return at.strftime(self.time_format)

    def attr(self, name: str) -> str:
        """The item attribute the deployment uses for our ``name``."""
        return self.attribute_names.get(name, name)

    def __post_init__(self) -> None:
        if self.restore_tier not in ("Expedited", "Standard", "Bulk"):
            raise ConfigError(f"GAS_RESTORE_TIER {self.restore_tier!r}: one of Expedited, Standard, Bulk")
        if self.time_format not in ("epoch", "iso") and "%" not in self.time_format:
            raise ConfigError(f"GAS_TIME_FORMAT {self.time_format!r}: epoch, iso, or a strftime pattern (%Y-%m-%d %H:%M)")
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
    #: the deployment's own bookkeeping (the migration's record); None where it has none
    state: ObjectStore | None = None
    #: the web app's own Glacier vault (``GAS_LEGACY_VAULT``), or None
    vault: LegacyVault | None = None

    def bucket(self, name: str, cfg: GasConfig) -> ObjectStore:
        known = {cfg.inputs_bucket: self.inputs, cfg.results_bucket: self.results, cfg.archive_bucket: self.archive}
        if name in known:
            return known[name]
        if self.other_bucket is not None:
            return self.other_bucket(name)
        return self.inputs


def check_bucket_names(cfg: GasConfig) -> None:
    for name in (cfg.inputs_bucket, cfg.results_bucket, cfg.archive_bucket, cfg.state_bucket):
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
