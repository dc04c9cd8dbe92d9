"""boto3 plumbing shared by the AWS adapters: clients with retry config, error codes."""

from __future__ import annotations

from typing import Any, cast

DEFAULT_REGION = "us-east-1"
# botocore retries throttling and 5xx with backoff (adaptive mode also rate-limits the
# client); past that the call raises and the controller leaves the message for redelivery.
RETRY_CONFIG: Any = {"max_attempts": 8, "mode": "adaptive"}


def client(service: str, *, region: str = DEFAULT_REGION, session: Any = None) -> Any:
    import boto3
    from botocore.config import Config

    sess = cast(Any, session or boto3.session.Session())
    # AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_<SERVICE>) are honoured by boto3 itself.
    # S3 presigned URLs: SigV4 (botocore may still default to the retired SigV2 for them).
    signature = "s3v4" if service == "s3" else None
    return sess.client(service, region_name=region, config=Config(retries=RETRY_CONFIG, signature_version=signature))


def resource(service: str, *, region: str = DEFAULT_REGION, session: Any = None) -> Any:
    import boto3
    from botocore.config import Config

    sess = cast(Any, session or boto3.session.Session())
    return sess.resource(service, region_name=region, config=Config(retries=RETRY_CONFIG))


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
