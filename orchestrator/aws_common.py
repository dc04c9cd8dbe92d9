"""boto3 plumbing shared by the AWS adapters: clients with retry config, error codes."""

from __future__ import annotations

from typing import Any, cast

DEFAULT_REGION = "us-east-1"
# botocore retries throttling and 5xx with backoff (adaptive mode also rate-limits the
# client); past that the call raises and the controller leaves the message for redelivery.
RETRY_CONFIG: Any = {"max_attempts": 8, "mode": "adaptive"}


_LOADER: Any = None


def _session() -> Any:
    """A new boto3 session (the environment read afresh: credentials, endpoints, a moto mock
    started since) sharing one loader of botocore's service descriptions: each session
    otherwise parses the same JSON again, about 0.2 s a client, most of a worker's start-up."""
    global _LOADER
    import boto3
    import botocore.session

    core = botocore.session.get_session()
    if _LOADER is None:
        _LOADER = core.get_component("data_loader")
    else:
        core.register_component("data_loader", _LOADER)
    session = boto3.session.Session(botocore_session=core)
    # boto3 appends its data folder to the loader's search paths for every session: on the
    # shared loader the list grew by one a session, and every file lookup scanned it all (a
    # process opening thousands of sessions slowed tenfold)
    paths = _LOADER.search_paths
    if len(paths) != len(set(paths)):
        paths[:] = list(dict.fromkeys(paths))
    return session


def client(service: str, *, region: str = DEFAULT_REGION, session: Any = None) -> Any:
    from botocore.config import Config

    sess = cast(Any, session or _session())
    # AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_<SERVICE>) are honoured by boto3 itself.
    # S3 presigned URLs: SigV4 (botocore may still default to the retired SigV2 for them).
    signature = "s3v4" if service == "s3" else None
    return sess.client(service, region_name=region, config=Config(retries=RETRY_CONFIG, signature_version=signature))


def resource(service: str, *, region: str = DEFAULT_REGION, session: Any = None) -> Any:
    from botocore.config import Config

    sess = cast(Any, session or _session())
    return sess.resource(service, region_name=region, config=Config(retries=RETRY_CONFIG))


# The AWS error codes the adapters act on, named once. Each adapter catches botocore's
# ``ClientError`` (an answer from AWS) and asks ``error_code`` which of these it is; anything
# else (no answer, a bad parameter) goes on up as it is, and ``outage.is_outage`` tells a
# busy or unreachable service from a refused request.
QUEUE_MISSING = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
QUEUE_EXISTS = frozenset({"QueueAlreadyExists", "QueueNameExists"})
#: a receipt handle that no longer holds the message (redelivered to someone else, or gone)
STALE_RECEIPT = frozenset({"ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight",
                           "AWS.SimpleQueueService.MessageNotInflight"})
OBJECT_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
BUCKET_MISSING = frozenset({"NoSuchBucket", "404", "NotFound"})
BUCKET_EXISTS = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
FORBIDDEN = frozenset({"403", "AccessDenied", "Forbidden", "AccessDeniedException", "UnauthorizedOperation"})
RESOURCE_MISSING = frozenset({"ResourceNotFoundException"})
RESOURCE_EXISTS = frozenset({"ResourceInUseException"})
CONDITION_FAILED = frozenset({"ConditionalCheckFailedException"})


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
