"""``Transport`` on Amazon SQS through boto3.

Receipt handles change on every receive; ``ApproximateReceiveCount`` is the receive count.
Batch calls (send, delete) retry the entries that failed and never drop one. SQS may accept a
stale receipt handle (moto always does), so lease fencing does not rely on the queue: the
status store's claim is what keeps a stale holder from committing.

SQS caps a message's delay at 15 minutes. A longer delay (a delayed submit, a long snooze)
is chained: the message is sent with the longest delay SQS takes and an ``orch_due_at``
attribute; a receive that finds it not yet due sends it on again with what is left and deletes
the copy it got, never handing it to the controller. A snooze is a copy sent with the delay and
the receives it had used so far (``orch_receives``), then the original deleted: SQS cannot
take back a receive count, so the copy carries it. On a FIFO queue (no per-message delays) a
snooze and a not-yet-due message are held by their visibility timeout instead (at most 12 h a
receive), and such a receive counts towards the queue's redrive policy.

Priorities: a queue with priority bands has a queue per band, ``<queue>-p<band>`` (made by
``ensure_queue`` from ``QueueSpec.priority_bands``); a message of priority p goes to the
highest band at most p (else the queue itself), and a receive polls the bands high to low.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import ClientError

from orchestrator.aws_common import DEFAULT_REGION, QUEUE_EXISTS, QUEUE_MISSING, STALE_RECEIPT, client, error_code
from orchestrator.base import Delivery, Outgoing, QueueDepth, QueueSpec, Transport, default_dead_letter
from orchestrator.clock import Clock, SystemClock
from orchestrator.envelope import MAX_BODY_BYTES, MESSAGE_ID_ATTR
from orchestrator.errors import BodyTooLarge, LeaseLostError, OrchestratorError
from orchestrator.transports.common import DEAD_LETTER_REASON

# SQS measures a message as its body plus each attribute's name, type and value, and a batch
# request as the sum of its messages. AWS raised both limits to 1 MiB in 2025; 256 KiB is what
# every SQS endpoint (and SNS, which feeds it) accepts, so that is the limit we keep.
SQS_MAX_MESSAGE_BYTES = MAX_BODY_BYTES
ATTRIBUTES_RESERVE = 2048  # room left for our attributes (message id; in a DLQ, the reason)
SQS_MAX_BODY_BYTES = SQS_MAX_MESSAGE_BYTES - ATTRIBUTES_RESERVE
SQS_MAX_BATCH = 10  # SQS's limit for every batch call (moto does not enforce it; we do)
SQS_MAX_WAIT_S = 20
SQS_MAX_DELAY_S = 900.0
SQS_MAX_VISIBILITY_S = 43200.0
BATCH_RETRIES = 5
DUE_AT_ATTR = "orch_due_at"  # when a chained delay ends (epoch seconds on the transport's clock)
PRIOR_RECEIVES_ATTR = "orch_receives"  # receives the message had used before this copy was sent
FIRST_RECEIVED_ATTR = "orch_first_received"  # the first receive of the message this copy continues
INTERNAL_ATTRS = frozenset({DUE_AT_ATTR, PRIOR_RECEIVES_ATTR, FIRST_RECEIVED_ATTR})
#: a message due within this many seconds is handed out (SQS's delays are whole seconds)
DUE_SLACK_S = 1.0
# SQS moves a message to the DLQ by itself after this many receives beyond the stage's own
# limit: the controller dead-letters first (and marks the job FAILED); this is the backstop.
REDRIVE_SLACK = 2
LEASE_LOST_CODES = STALE_RECEIPT


class BatchError(OrchestratorError):
    """Some entries of a batch call still failed after retries."""


def _chunks(items: Sequence[Any], n: int = SQS_MAX_BATCH) -> list[Sequence[Any]]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def attribute_bytes(name: str, value: str) -> int:
    return len(name.encode()) + len(b"String") + len(value.encode())


def message_bytes(entry: dict[str, Any]) -> int:
    """A send entry's size as SQS counts it."""
    return len(entry["MessageBody"].encode()) + sum(
        attribute_bytes(k, v["StringValue"]) for k, v in entry.get("MessageAttributes", {}).items())


def size_chunks(entries: list[dict[str, Any]], size_of: Callable[[dict[str, Any]], int] = message_bytes
                ) -> list[list[dict[str, Any]]]:
    """Consecutive groups of at most ten entries and at most one message's size in total (the
    limits of SQS's SendMessageBatch and SNS's PublishBatch)."""
    chunks: list[list[dict[str, Any]]] = []
    size = 0
    for e in entries:
        n = size_of(e)
        if not chunks or len(chunks[-1]) == SQS_MAX_BATCH or size + n > SQS_MAX_MESSAGE_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(e)
        size += n
    return chunks


class SqsTransport:
    max_delay_s = SQS_MAX_DELAY_S
    max_visibility_s = SQS_MAX_VISIBILITY_S
    max_batch = SQS_MAX_BATCH
    max_body_bytes = SQS_MAX_BODY_BYTES

    def __init__(self, *, prefix: str = "", region: str = DEFAULT_REGION, sqs_client: Any = None,
                 clock: Clock | None = None, max_delay_s: float = SQS_MAX_DELAY_S) -> None:
        self.prefix = prefix
        self.sqs = sqs_client or client("sqs", region=region)
        self.clock: Clock = clock or SystemClock()
        #: the longest delay one SQS hop carries (SQS's cap; tests on moto set it lower)
        self.hop_delay_s = max_delay_s
        self._urls: dict[str, str] = {}
        self._dlq: dict[str, str] = {}
        self._bands: dict[str, list[int]] = {}  # queue -> its priority bands, highest first

    # -- names ------------------------------------------------------------------------------
    def _name(self, queue: str) -> str:
        return f"{self.prefix}{queue}"

    def url(self, queue: str) -> str:
        url = self._urls.get(queue)
        if url is None:
            try:
                url = self.sqs.get_queue_url(QueueName=self._name(queue))["QueueUrl"]
            except ClientError as exc:
                if error_code(exc) in QUEUE_MISSING:
                    self.ensure_queue(QueueSpec(queue, dead_letter=default_dead_letter(queue), fifo=queue.endswith(".fifo")))
                    return self._urls[queue]
                raise
            self._urls[queue] = url
        return url

    def arn(self, queue: str) -> str:
        attrs = self.sqs.get_queue_attributes(QueueUrl=self.url(queue), AttributeNames=["QueueArn"])
        return str(attrs["Attributes"]["QueueArn"])

    # -- queues -----------------------------------------------------------------------------
    def ensure_queue(self, spec: QueueSpec) -> None:
        fifo = spec.fifo or spec.name.endswith(".fifo")
        attrs: dict[str, str] = {"VisibilityTimeout": str(math.ceil(spec.visibility_timeout_s)),
                                 "DelaySeconds": str(int(spec.delay_s))}
        if fifo:
            attrs["FifoQueue"] = "true"
        if spec.dead_letter:
            dlq_attrs = {"FifoQueue": "true"} if fifo else {}
            self._create(spec.dead_letter, dlq_attrs)
            attrs["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": self.arn(spec.dead_letter),
                                                 "maxReceiveCount": spec.max_receives + REDRIVE_SLACK})
            self._dlq[spec.name] = spec.dead_letter
        self._create(spec.name, attrs)
        for band in spec.priority_bands:
            if band > 0:
                self._create(band_queue(spec.name, band), attrs)
                if spec.dead_letter:
                    self._dlq[band_queue(spec.name, band)] = spec.dead_letter
        self._bands.pop(spec.name, None)

    def bands(self, queue: str) -> list[int]:
        """The priority bands of ``queue`` that exist, highest first (looked up once)."""
        found = self._bands.get(queue)
        if found is None:
            base = self._name(queue)
            urls = self.sqs.list_queues(QueueNamePrefix=f"{base}-p").get("QueueUrls", [])
            names = [u.rsplit("/", 1)[-1].removeprefix(base) for u in urls]
            found = self._bands[queue] = sorted((int(n[2:]) for n in names if n[2:].isdigit() and n[:2] == "-p"),
                                                reverse=True)
        return found

    def _route(self, queue: str, priority: int) -> str:
        """The queue a message of ``priority`` goes to: the highest band at most ``priority``."""
        if priority <= 0 or queue.endswith(".fifo"):
            return queue
        return next((band_queue(queue, b) for b in self.bands(queue) if b <= priority), queue)

    def _create(self, queue: str, attrs: dict[str, str]) -> None:
        name = self._name(queue)
        try:
            url = self.sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
        except ClientError as exc:  # exists with other attributes: adopt it and update them
            if error_code(exc) not in QUEUE_EXISTS:
                raise
            url = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
            settable = {k: v for k, v in attrs.items() if k != "FifoQueue"}
            if settable:
                self.sqs.set_queue_attributes(QueueUrl=url, Attributes=settable)
        self._urls[queue] = url

    def spec(self, queue: str) -> QueueSpec | None:
        if not self.exists(queue):
            return None
        try:
            attrs = self.sqs.get_queue_attributes(QueueUrl=self.url(queue), AttributeNames=["All"])["Attributes"]
        except ClientError as exc:  # deleted since ``exists`` looked; anything else is an error to see
            if error_code(exc) in QUEUE_MISSING:
                return None
            raise
        redrive = json.loads(attrs.get("RedrivePolicy", "{}") or "{}")
        dlq = redrive.get("deadLetterTargetArn", "").rsplit(":", 1)[-1].removeprefix(self.prefix) or None
        redrive_after = int(redrive["maxReceiveCount"]) if "maxReceiveCount" in redrive else None
        return QueueSpec(queue, visibility_timeout_s=float(attrs.get("VisibilityTimeout", 30)),
                         max_receives=(redrive_after or REDRIVE_SLACK + 1) - REDRIVE_SLACK,
                         dead_letter=dlq, fifo=attrs.get("FifoQueue") == "true",
                         delay_s=float(attrs.get("DelaySeconds", 0)), redrive_after=redrive_after)

    def queues(self) -> list[str]:
        urls = self.sqs.list_queues(QueueNamePrefix=self.prefix).get("QueueUrls", []) if self.prefix else \
            self.sqs.list_queues().get("QueueUrls", [])
        return sorted(u.rsplit("/", 1)[-1].removeprefix(self.prefix) for u in urls)

    # -- sending ----------------------------------------------------------------------------
    def _entry(self, queue: str, i: int, m: Outgoing, *, verbatim: bool = False) -> dict[str, Any]:
        """One send entry. ``verbatim``: a body that already travelled through SQS (a dead
        letter) is only held to SQS's own limit, not to the room we keep for attributes."""
        size = len(m.body.encode())
        if size > self.max_body_bytes and not verbatim:
            raise BodyTooLarge(size, self.max_body_bytes)
        mid = m.message_id or uuid.uuid4().hex
        attrs = {MESSAGE_ID_ATTR: mid, **m.attributes}
        if m.delay_s > self.hop_delay_s or (m.delay_s and queue.endswith(".fifo")):
            attrs[DUE_AT_ATTR] = repr(self.clock.now() + m.delay_s)  # chained: see the module's docstring
        entry: dict[str, Any] = {
            "Id": str(i), "MessageBody": m.body,
            "MessageAttributes": {k: {"DataType": "String", "StringValue": str(v)} for k, v in attrs.items()},
        }
        if queue.endswith(".fifo"):
            # One group per job keeps a job's messages in order; the envelope id dedups re-emits.
            entry["MessageGroupId"] = m.group_id or mid
            entry["MessageDeduplicationId"] = mid
        elif m.delay_s:
            entry["DelaySeconds"] = int(min(m.delay_s, self.hop_delay_s))
        if (wire := message_bytes(entry)) > SQS_MAX_MESSAGE_BYTES:
            raise BodyTooLarge(wire, SQS_MAX_MESSAGE_BYTES)
        return entry

    def send(self, queue: str, message: Outgoing) -> str:
        return self.send_batch(queue, [message])[0]

    def send_batch(self, queue: str, messages: Sequence[Outgoing]) -> list[str]:
        if any(m.priority > 0 for m in messages):
            by_route: dict[str, list[Outgoing]] = {}
            for m in messages:
                by_route.setdefault(self._route(queue, m.priority), []).append(m)
            ids: dict[int, str] = {}
            for target, ms in by_route.items():
                ids.update(zip((id(m) for m in ms), self._send_entries(
                    target, [self._entry(target, i, m) for i, m in enumerate(ms)]), strict=True))
            return [ids[id(m)] for m in messages]
        return self._send_entries(queue, [self._entry(queue, i, m) for i, m in enumerate(messages)])

    def _send_entries(self, queue: str, entries: list[dict[str, Any]]) -> list[str]:
        url = self.url(queue)
        for chunk in size_chunks(entries):
            refused = self._batch_call(lambda es: self.sqs.send_message_batch(QueueUrl=url, Entries=es), chunk)
            if refused:  # a send has no receipt to be stale: SQS refused the message itself
                raise BatchError(f"SQS refused {len(refused)} message(s) sent to {queue}")
        return [e["MessageAttributes"][MESSAGE_ID_ATTR]["StringValue"] for e in entries]

    def _batch_call(self, call: Any, entries: list[dict[str, Any]]) -> set[str]:
        """Run a batch call, retrying only the entries that failed; raise if some never pass.
        Returns the ids of the entries refused for a stale receipt (nothing to retry there)."""
        pending, stale = entries, set()
        for attempt in range(BATCH_RETRIES):
            resp = call(pending)
            failed = resp.get("Failed", [])
            stale |= {f["Id"] for f in failed if f.get("SenderFault") and f.get("Code") in LEASE_LOST_CODES}
            retry = {f["Id"] for f in failed} - stale
            if not retry:
                return stale
            pending = [e for e in pending if e["Id"] in retry]
            time.sleep(min(1.0, 0.05 * 2 ** attempt))
        raise BatchError(f"{len(pending)} batch entries still failing after {BATCH_RETRIES} tries")

    # -- receiving --------------------------------------------------------------------------
    def receive(self, queue: str, *, max_messages: int, wait_s: float, visibility_s: float) -> list[Delivery]:
        out: list[Delivery] = []
        for band in self.bands(queue) if not queue.endswith(".fifo") else []:  # high to low, without waiting
            out += self._receive(band_queue(queue, band), max_messages - len(out), 0, visibility_s)
            if len(out) >= max_messages:
                return out
        return out + self._receive(queue, max_messages - len(out), 0 if out else wait_s, visibility_s)

    def _receive(self, queue: str, max_messages: int, wait_s: float, visibility_s: float) -> list[Delivery]:
        resp = self.sqs.receive_message(
            QueueUrl=self.url(queue), MaxNumberOfMessages=max(1, min(SQS_MAX_BATCH, max_messages)),
            WaitTimeSeconds=int(max(0, min(SQS_MAX_WAIT_S, wait_s))),
            VisibilityTimeout=math.ceil(visibility_s),
            AttributeNames=["ApproximateReceiveCount", "ApproximateFirstReceiveTimestamp"],
            MessageAttributeNames=["All"],  # our message id and, in a DLQ, the reason
        )
        due: list[Delivery] = []
        now = self.clock.now()
        for m in resp.get("Messages", []):
            d, due_at = self._delivery(queue, m)
            if due_at is not None and due_at > now + DUE_SLACK_S:
                self._hold(d, due_at - now)
            else:
                due.append(d)
        return due

    def _hold(self, d: Delivery, left_s: float) -> None:
        """A chained delay is not over: pass the message on for what is left, unseen."""
        if d.queue.endswith(".fifo"):  # no per-message delay: hold it by its visibility timeout
            self.release(d, min(left_s, self.max_visibility_s - 60))
        else:
            self._resend(d, left_s, receives=d.receive_count - 1)

    def _resend(self, d: Delivery, delay_s: float, *, receives: int) -> None:
        """Send a copy of ``d`` delayed by ``delay_s`` (chained past SQS's cap) that counts
        ``receives`` as already used, then delete ``d``: a crash between leaves a duplicate
        (the status store recognises it), never a loss."""
        attrs = {k: v for k, v in d.attributes.items() if k != MESSAGE_ID_ATTR}
        attrs[PRIOR_RECEIVES_ATTR] = str(receives)
        attrs[FIRST_RECEIVED_ATTR] = repr(d.first_received_at)
        self._send_entries(d.queue, [self._entry(d.queue, 0, Outgoing(
            body=d.body, message_id=d.message_id, delay_s=delay_s, attributes=attrs), verbatim=True)])
        self.ack(d)

    @staticmethod
    def _delivery(queue: str, m: dict[str, Any]) -> tuple[Delivery, float | None]:
        """The delivery (our attributes taken out of its ``attributes``) and when a chained
        delay ends (None: not chained)."""
        attrs = {k: v.get("StringValue", "") for k, v in m.get("MessageAttributes", {}).items()}
        sys_attrs = m.get("Attributes", {})
        due_at, prior, first = attrs.pop(DUE_AT_ATTR, None), attrs.pop(PRIOR_RECEIVES_ATTR, None), \
            attrs.pop(FIRST_RECEIVED_ATTR, None)
        delivery = Delivery(
            queue=queue, body=m["Body"], receipt=m["ReceiptHandle"],
            receive_count=int(sys_attrs.get("ApproximateReceiveCount", 1)) + int(prior or 0),
            first_received_at=float(first) if first else
            int(sys_attrs.get("ApproximateFirstReceiveTimestamp", 0)) / 1000.0,
            message_id=attrs.get(MESSAGE_ID_ATTR) or m["MessageId"], attributes=attrs,
        )
        return delivery, float(due_at) if due_at else None

    def ack(self, delivery: Delivery) -> bool:
        try:
            self.sqs.delete_message(QueueUrl=self.url(delivery.queue), ReceiptHandle=delivery.receipt)
            return True
        except ClientError as exc:
            if error_code(exc) in LEASE_LOST_CODES:
                return False
            raise

    def ack_batch(self, deliveries: Sequence[Delivery]) -> list[bool]:
        by_queue: dict[str, list[Delivery]] = {}
        for d in deliveries:
            by_queue.setdefault(d.queue, []).append(d)
        stale: set[int] = set()  # ids of the deliveries whose receipt was stale
        for queue, ds in by_queue.items():
            url = self.url(queue)
            for chunk in _chunks(ds):
                entries = [{"Id": str(i), "ReceiptHandle": d.receipt} for i, d in enumerate(chunk)]
                refused = self._batch_call(lambda es, url=url: self.sqs.delete_message_batch(QueueUrl=url, Entries=es),
                                           entries)
                stale |= {id(chunk[int(i)]) for i in refused}
        # as ``ack``: False where the receipt was stale (the message redelivered to someone else)
        return [id(d) not in stale for d in deliveries]

    def extend(self, delivery: Delivery, seconds: float) -> None:
        try:
            self.sqs.change_message_visibility(QueueUrl=self.url(delivery.queue), ReceiptHandle=delivery.receipt,
                                               VisibilityTimeout=math.ceil(seconds))
        except ClientError as exc:
            if error_code(exc) in LEASE_LOST_CODES:
                raise LeaseLostError(f"lease on {delivery.message_id} in {delivery.queue} lost: {exc}") from exc
            raise

    def release(self, delivery: Delivery, delay_s: float) -> bool:
        try:
            self.sqs.change_message_visibility(QueueUrl=self.url(delivery.queue), ReceiptHandle=delivery.receipt,
                                               VisibilityTimeout=int(min(delay_s, self.max_visibility_s)))
            return True
        except ClientError as exc:
            if error_code(exc) in LEASE_LOST_CODES:
                return False
            raise

    def snooze(self, delivery: Delivery, delay_s: float) -> bool:
        if delivery.queue.endswith(".fifo"):  # see the module's docstring
            return self.release(delivery, min(delay_s, self.max_visibility_s - 60))
        try:  # still ours? A stale holder must not make a second copy
            self.extend(delivery, 30)
        except LeaseLostError:
            return False
        self._resend(delivery, delay_s, receives=delivery.receive_count - 1)
        return True

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        dlq = self._dlq.get(delivery.queue) or (self.spec(delivery.queue) or QueueSpec(delivery.queue)).dead_letter \
            or default_dead_letter(delivery.queue)
        try:  # is it still ours? A message already moved (or acked) is not copied again
            self.extend(delivery, 30)
        except LeaseLostError:
            return
        # Copy first, then delete: a crash in between leaves a duplicate in the DLQ, never a loss.
        # The body goes verbatim; the attributes get what room is left (the reason is also in the
        # job's history), so even a message that filled SQS's limit can be dead-lettered.
        out = Outgoing(body=delivery.body, message_id=delivery.message_id, group_id=delivery.message_id)
        room = SQS_MAX_MESSAGE_BYTES - message_bytes(self._entry(dlq, 0, out, verbatim=True))
        wanted = {DEAD_LETTER_REASON: reason[:1000], "source_queue": delivery.queue}  # these first, and fresh
        wanted.update((k, v) for k, v in delivery.attributes.items() if k not in wanted and k != MESSAGE_ID_ATTR)
        for name, value in wanted.items():
            if name == DEAD_LETTER_REASON:
                value = value.encode()[:max(0, room - attribute_bytes(name, ""))].decode(errors="ignore")
            if (n := attribute_bytes(name, value)) <= room and value:
                out.attributes[name] = value
                room -= n
        self._send_entries(dlq, [self._entry(dlq, 0, out, verbatim=True)])
        self.ack(delivery)

    def depth(self, queue: str) -> QueueDepth:
        a = self.sqs.get_queue_attributes(
            QueueUrl=self.url(queue),
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                            "ApproximateNumberOfMessagesDelayed"])["Attributes"]
        return QueueDepth(visible=int(a.get("ApproximateNumberOfMessages", 0)),
                          in_flight=int(a.get("ApproximateNumberOfMessagesNotVisible", 0)),
                          delayed=int(a.get("ApproximateNumberOfMessagesDelayed", 0)))

    def purge(self, queue: str) -> None:
        self.sqs.purge_queue(QueueUrl=self.url(queue))

    def exists(self, queue: str) -> bool:
        """Whether the queue exists (creates nothing, unlike ``url``)."""
        try:
            self._urls[queue] = self.sqs.get_queue_url(QueueName=self._name(queue))["QueueUrl"]
            return True
        except ClientError as exc:
            if error_code(exc) in QUEUE_MISSING:
                return False
            raise

    def peek(self, queue: str, limit: int) -> list[Delivery]:
        """Receive with a zero visibility timeout: nothing stays leased, but each peek counts as
        a receive (SQS has no read-only look)."""
        out: dict[str, Delivery] = {}
        for _ in range(max(1, math.ceil(limit / SQS_MAX_BATCH)) + 1):
            resp = self.sqs.receive_message(QueueUrl=self.url(queue), MaxNumberOfMessages=SQS_MAX_BATCH,
                                            VisibilityTimeout=0, WaitTimeSeconds=0, MessageAttributeNames=["All"],
                                            AttributeNames=["ApproximateReceiveCount"])
            got = resp.get("Messages", [])
            new = [m for m in got if m["MessageId"] not in out]
            if not new:
                break
            for m in new:
                out[m["MessageId"]] = self._delivery(queue, m)[0]
            if len(out) >= limit:
                break
        return list(out.values())[:limit]


def band_queue(queue: str, band: int) -> str:
    """The queue of ``queue``'s priority band ``band``."""
    return f"{queue}-p{band}"


_: type[Transport] = SqsTransport
