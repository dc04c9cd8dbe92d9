"""GAS on AWS: the existing deployment's table, topics and buckets, SES for email.

The status store adopts ``<prefix>annotations`` as the web app created it: partition key
``job_id``, GSI ``user_id_index``, status in ``job_status``. Buckets: ``<prefix>gas-inputs``,
``<prefix>gas-results``, ``<prefix>gas-archive`` (objects written with the GLACIER storage
class) and ``<prefix>gas-state`` (user profiles, email markers).
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO

from examples.gas.config import GasConfig, GasResources, check_bucket_names
from examples.gas.mailer import SENDER
from examples.gas.vault import LegacyVault
from orchestrator.aws_common import client
from orchestrator.backends import Backend
from orchestrator.backends.aws import parse_aws_url
from orchestrator.clock import Clock, SystemClock
from orchestrator.objects.s3 import S3ObjectStore
from orchestrator.stores.dynamodb import DynamoDBStatusStore
from orchestrator.transports.sns import SnsTopic
from orchestrator.transports.sqs import SqsTransport


class SesMailer:
    """Email through SES, once per key: a marker object records each sent key.

    The marker is written after SES accepted the email, so a crash between the two sends the
    email again on redelivery (at least once); the step record makes that window the only one.
    """

    def __init__(self, state: S3ObjectStore, *, region: str, ses_client: Any = None, sender: str = SENDER) -> None:
        self.state = state
        self.sender = sender
        self.ses = ses_client or client("ses", region=region)

    def ensure_sender(self) -> None:
        self.ses.verify_email_identity(EmailAddress=self.sender)

    def send(self, key: str, *, to: str, subject: str, body: str) -> bool:
        marker = f"sent-mail/{key}"
        if self.state.exists(marker):
            return False
        self.ses.send_email(Source=self.sender, Destination={"ToAddresses": [to]},
                            Message={"Subject": {"Data": subject}, "Body": {"Text": {"Data": body}}})
        self.state.put(marker, to.encode())
        return True

    def sent(self) -> list[str]:
        keys = self.state.s3.list_objects_v2(Bucket=self.state.bucket, Prefix="sent-mail/").get("Contents", [])
        return sorted(k["Key"].removeprefix("sent-mail/") for k in keys)


def aws_gas(url: str, cfg: GasConfig, *, clock: Clock | None = None, create: bool = True
            ) -> tuple[Backend, GasResources]:
    q = parse_aws_url(url)
    region, prefix = q["region"], q["prefix"]
    # fixed names from GAS_*_BUCKET where the deployment set them, else <prefix>gas-*
    cfg.inputs_bucket = os.environ.get("GAS_INPUTS_BUCKET") or f"{prefix}gas-inputs".lower()
    cfg.results_bucket = os.environ.get("GAS_RESULTS_BUCKET") or f"{prefix}gas-results".lower()
    cfg.archive_bucket = os.environ.get("GAS_ARCHIVE_BUCKET") or f"{prefix}gas-archive".lower()
    cfg.state_bucket = os.environ.get("GAS_STATE_BUCKET") or f"{prefix}gas-state".lower()
    check_bucket_names(cfg)  # before anything is created
    clock = clock or SystemClock()
    transport = SqsTransport(prefix=prefix, region=region, clock=clock)
    store = DynamoDBStatusStore(q.get("table", f"{prefix}annotations"), key_attr="job_id", status_attr="job_status",
                                region=region, status_names={"FAILED": cfg.failed_status}, clock=clock,
                                create=create)
    backend = Backend(transport=transport, topic=SnsTopic(transport, prefix=prefix, region=region), store=store,
                      clock=clock, url=url)
    state = S3ObjectStore(cfg.state_bucket, region=region, create=create)
    mailer = SesMailer(state, region=region, sender=cfg.mail_sender)
    if create:
        mailer.ensure_sender()
    res = GasResources(
        inputs=S3ObjectStore(cfg.inputs_bucket, region=region, create=create),
        results=S3ObjectStore(cfg.results_bucket, region=region, create=create),
        archive=S3ObjectStore(cfg.archive_bucket, region=region, storage_class="GLACIER",
                              restore_tier=cfg.restore_tier, create=create),
        profiles=ProfilesStore(state),
        mailer=mailer,
        other_bucket=lambda name: S3ObjectStore(name, region=region, create=False),
        state=state,
        vault=LegacyVault(cfg.legacy_vault, region=region, tier=cfg.restore_tier) if cfg.legacy_vault else None,
    )
    return backend, res


class ProfilesStore:
    """User profiles under ``profiles/`` in the state bucket."""

    presigns = True

    def __init__(self, state: S3ObjectStore) -> None:
        self.state = state

    def put(self, key: str, data: bytes) -> None:
        self.state.put(f"profiles/{key}", data)

    def put_file(self, key: str, source: BinaryIO) -> None:
        self.state.put_file(f"profiles/{key}", source)

    def get(self, key: str) -> bytes:
        return self.state.get(f"profiles/{key}")

    def exists(self, key: str) -> bool:
        return self.state.exists(f"profiles/{key}")

    def delete(self, key: str) -> None:
        self.state.delete(f"profiles/{key}")

    def url(self, key: str, *, expires_s: int = 3600) -> str:
        return self.state.url(f"profiles/{key}", expires_s=expires_s)

