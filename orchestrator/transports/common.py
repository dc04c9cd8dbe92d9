"""Helpers shared by the embedded transports."""

from __future__ import annotations

import json
from random import getrandbits as _bits

from orchestrator.errors import BodyTooLarge

DEFAULT_MAX_DELAY_S = 15 * 60.0  # as SQS: DelaySeconds <= 900
DEFAULT_MAX_VISIBILITY_S = 12 * 3600.0  # as SQS: a lease never exceeds 12 h from receipt
# Messages per receive on the embedded and PostgreSQL queues (SQS: 10). Beyond ~100 a batch of
# no-op handlers on SQLite gained nothing more (bench: 10 -> 50 -> 100 -> 200 messages per
# batch: 7,011 -> 9,750 -> 10,329 -> 10,195 msgs/s).
DEFAULT_MAX_BATCH = 100
DEAD_LETTER_REASON = "dead_letter_reason"


def sns_wrap(topic: str, body: str, message_id: str) -> str:
    """The SNS notification document an SQS subscription without raw delivery receives."""
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": message_id,
            "TopicArn": f"arn:orchestrator:topic:{topic}",
            "Message": body,
        }
    )


# What SNS adds around a wrapped body besides escaping it: type, ids, topic ARN, timestamp,
# signature and certificate URLs, message attributes (about 1.2 KB on AWS).
SNS_WRAP_RESERVE = 2048


def sns_wrapped_bytes(body: str) -> int:
    """An upper bound on the size of ``body`` delivered inside an SNS notification."""
    return len(json.dumps(body).encode()) + SNS_WRAP_RESERVE


def check_size(body: str, limit: int) -> None:
    size = len(body.encode())
    if size > limit:
        raise BodyTooLarge(size, limit)


TRUNCATED_FROM = "truncated_from_bytes"
#: set on a dead letter whose body was not UTF-8: its invalid bytes are replaced by U+FFFD
INVALID_UTF8 = "invalid_utf8"


def dead_letter_body(body: str, limit: int) -> tuple[str, dict[str, str]]:
    """The body a dead-letter queue can take, and attributes saying what was cut. A body over
    the limit can already sit in a queue (written before the limit was lowered, or by another
    producer); refusing its dead letter would leave it blocking its batch forever, so it is
    kept truncated, with its original size."""
    try:
        raw = body.encode()
        cut: dict[str, str] = {}
    except UnicodeEncodeError:  # bytes that were not UTF-8 (read with surrogateescape)
        body = body.encode(errors="surrogateescape").decode(errors="replace")
        raw, cut = body.encode(), {INVALID_UTF8: "replaced"}
    if len(raw) <= limit:
        return body, cut
    return raw[:limit].decode(errors="ignore"), {**cut, TRUNCATED_FROM: str(len(raw))}


def new_receipt() -> str:
    """128 random bits in hex: a receipt or message id unique across processes. Drawn from
    ``random``'s generator, seeded from the OS and seeded afresh in a forked child (the
    module does so itself), not from ``os.urandom``: a system call per message cost the
    in-memory pipeline 4%. Receipts fence leases; they are not secrets (the database shows them)."""
    return _bits(128).to_bytes(16).hex()
