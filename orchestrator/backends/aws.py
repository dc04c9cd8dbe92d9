"""The ``aws://`` backend: SQS + SNS + DynamoDB + S3.

    aws://?region=us-east-1&prefix=NAME-[&table=TABLE][&key=job_id][&status=job_status][&bucket=BUCKET]

Queue and topic names get ``prefix``. ``table`` and ``bucket`` name the job table and the
object bucket in full, as they are in the account (the same URL means the same table to every
command and to GAS); without them they are ``<prefix>jobs`` and ``<prefix>objects``. Commands
that only read (``status``, ``queues``, ``dlq list``...) create nothing: a table or bucket that is
not there is an error, not made. boto3's own configuration is honoured (profile, environment
credentials, ``AWS_ENDPOINT_URL``), so the same URL runs against a moto server on 127.0.0.1 or
against AWS.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

from orchestrator.aws_common import DEFAULT_REGION
from orchestrator.base import Backend
from orchestrator.clock import Clock, SystemClock
from orchestrator.errors import ConfigError


def parse_aws_url(url: str) -> dict[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "aws":
        raise ConfigError(f"not an aws:// URL: {url!r}")
    q = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    unknown = set(q) - {"region", "prefix", "table", "key", "status", "bucket"}
    if unknown:
        raise ConfigError(f"aws:// URL has unknown options: {', '.join(sorted(unknown))}")
    q.setdefault("region", DEFAULT_REGION)
    q.setdefault("prefix", "")
    return q


def aws_backend(url: str, *, clock: Clock | None = None, create: bool = True, **_: Any) -> Backend:
    from orchestrator.objects.s3 import S3ObjectStore
    from orchestrator.stores.dynamodb import DynamoDBStatusStore
    from orchestrator.transports.sns import SnsTopic
    from orchestrator.transports.sqs import SqsTransport

    q = parse_aws_url(url)
    region, prefix = q["region"], q["prefix"]
    clock = clock or SystemClock()
    transport = SqsTransport(prefix=prefix, region=region, clock=clock)
    store = DynamoDBStatusStore(q.get("table") or f"{prefix}jobs", key_attr=q.get("key", "job_id"),
                                status_attr=q.get("status", "job_status"), region=region, clock=clock, create=create)
    objects = S3ObjectStore(q.get("bucket") or f"{prefix}objects".lower(), region=region, create=create)
    return Backend(transport=transport, topic=SnsTopic(transport, prefix=prefix, region=region), store=store,
                   clock=clock, objects=objects, url=url)
