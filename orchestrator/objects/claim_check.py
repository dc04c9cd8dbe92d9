"""Claim check: a body too large for the queue is stored as an object; the queue carries a
small pointer document, resolved back into the body on receive.

Objects are not deleted on ack (a dead-lettered copy may still point at them): give the
``claim-check/`` prefix a lifecycle rule that expires it after the queues' retention.
"""

from __future__ import annotations

import json

from orchestrator.base import ObjectStore
from orchestrator.errors import ObjectNotFound

POINTER_KEY = "orchestrator_claim_check"
PREFIX = "claim-check/"


def offload_body(store: ObjectStore, message_id: str, body: str) -> str:
    key = f"{PREFIX}{message_id}"
    store.put(key, body.encode())
    return json.dumps({POINTER_KEY: {"key": key, "bytes": len(body.encode())}})


def resolve_body(store: ObjectStore | None, body: str) -> str:
    if store is None or not body.startswith('{"' + POINTER_KEY):
        return body
    try:
        key = json.loads(body)[POINTER_KEY]["key"]
        return store.get(key).decode()
    except (ValueError, KeyError, TypeError, ObjectNotFound):
        return body  # a bad or dangling pointer: the codec dead-letters it as malformed
