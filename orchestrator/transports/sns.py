"""``Topic`` on Amazon SNS fanning out to SQS queues."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from orchestrator.aws_common import DEFAULT_REGION, client
from orchestrator.base import Outgoing, Topic
from orchestrator.envelope import MESSAGE_ID_ATTR
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.transports.sqs import SqsTransport, attribute_bytes, band_queue, size_chunks

PUBLISH_RETRIES = 5
PRIORITY_ATTR = "orch_priority"


class SnsTopic:
    delays = False  # SNS delivers at once: a delayed emit must go to a queue
    def __init__(self, transport: SqsTransport, *, prefix: str = "", region: str = DEFAULT_REGION,
                 sns_client: Any = None) -> None:
        self.transport = transport
        self.prefix = prefix
        self.sns = sns_client or client("sns", region=region)
        self._arns: dict[str, str] = {}

    def arn(self, topic: str) -> str:
        if topic not in self._arns:
            # create_topic is idempotent and returns the existing topic's ARN; a name ending in
            # .fifo is a FIFO topic, which SNS only creates when told so
            attrs = {"FifoTopic": "true"} if topic.endswith(".fifo") else {}
            self._arns[topic] = self.sns.create_topic(Name=f"{self.prefix}{topic}", Attributes=attrs)["TopicArn"]
        return self._arns[topic]

    def ensure_topic(self, topic: str) -> None:
        self.arn(topic)

    def subscribe(self, topic: str, queue: str, *, raw: bool = True, filter_policy: dict[str, Any] | None = None) -> None:
        """Subscribe ``queue``; a queue with priority bands (``SqsTransport.bands``) has each
        band subscribed too, with a filter policy on the message's ``orch_priority`` so that a
        message lands in the band of its priority (one without it in the queue itself)."""
        bands = sorted(self.transport.bands(queue)) if not queue.endswith(".fifo") else []
        if not bands:
            self._subscribe(topic, queue, raw, filter_policy)
            return
        self._subscribe(topic, queue, raw, {**(filter_policy or {}), PRIORITY_ATTR: [
            {"exists": False}, {"numeric": ["<", bands[0]]}]})
        for low, high in zip(bands, [*bands[1:], None], strict=True):
            rule = [">=", low] if high is None else [">=", low, "<", high]
            self._subscribe(topic, band_queue(queue, low), raw,
                            {**(filter_policy or {}), PRIORITY_ATTR: [{"numeric": rule}]})

    def _subscribe(self, topic: str, queue: str, raw: bool, filter_policy: dict[str, Any] | None) -> None:
        topic_arn, queue_arn = self.arn(topic), self.transport.arn(queue)
        self._allow(queue, queue_arn, topic_arn)
        existing = [s for s in self._subs(topic_arn) if s["Endpoint"] == queue_arn]
        sub_arn = existing[0]["SubscriptionArn"] if existing else self.sns.subscribe(
            TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, ReturnSubscriptionArn=True)["SubscriptionArn"]
        self.sns.set_subscription_attributes(SubscriptionArn=sub_arn, AttributeName="RawMessageDelivery",
                                             AttributeValue="true" if raw else "false")
        if filter_policy is not None:
            self.sns.set_subscription_attributes(SubscriptionArn=sub_arn, AttributeName="FilterPolicy",
                                                 AttributeValue=json.dumps(filter_policy))

    def _allow(self, queue: str, queue_arn: str, topic_arn: str) -> None:
        """Add the queue-policy statement that lets this topic send to the queue (AWS needs it;
        moto does not check it)."""
        url = self.transport.url(queue)
        attrs = self.transport.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"]).get("Attributes", {})
        policy = json.loads(attrs.get("Policy") or '{"Version": "2012-10-17", "Statement": []}')
        sid = f"orchestrator-{topic_arn.rsplit(':', 1)[-1]}"
        if any(s.get("Sid") == sid for s in policy["Statement"]):
            return
        policy["Statement"].append({
            "Sid": sid, "Effect": "Allow", "Principal": {"Service": "sns.amazonaws.com"},
            "Action": "sqs:SendMessage", "Resource": queue_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
        })
        self.transport.sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})

    def _subs(self, topic_arn: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TopicArn": topic_arn}
        while True:
            resp = self.sns.list_subscriptions_by_topic(**kwargs)
            out += resp.get("Subscriptions", [])
            if not resp.get("NextToken"):
                return out
            kwargs["NextToken"] = resp["NextToken"]

    def topics(self) -> list[str]:
        names: list[str] = []
        kwargs: dict[str, Any] = {}
        while True:
            resp = self.sns.list_topics(**kwargs)
            names += [t["TopicArn"].rsplit(":", 1)[-1] for t in resp.get("Topics", [])]
            if not resp.get("NextToken"):
                break
            kwargs["NextToken"] = resp["NextToken"]
        return sorted(n.removeprefix(self.prefix) for n in names if n.startswith(self.prefix))

    def subscriptions(self, topic: str) -> list[tuple[str, bool]]:
        out = []
        for s in self._subs(self.arn(topic)):
            if s.get("Protocol") != "sqs":
                continue
            attrs = self.sns.get_subscription_attributes(SubscriptionArn=s["SubscriptionArn"])["Attributes"]
            name = s["Endpoint"].rsplit(":", 1)[-1].removeprefix(self.transport.prefix)
            out.append((name, attrs.get("RawMessageDelivery") == "true"))
        return sorted(out)

    def publish(self, topic: str, body: str, *, message_id: str, group_id: str | None = None) -> None:
        self.publish_batch(topic, [Outgoing(body=body, message_id=message_id, group_id=group_id)])

    def publish_batch(self, topic: str, messages: Sequence[Outgoing]) -> None:
        """PublishBatch: up to ten messages and 256 KiB per call; entries that fail on SNS's
        side are sent again, a refused one (sender fault) raises. SNS delivers at once: a
        delayed message is refused (``delays`` is False)."""
        if any(m.delay_s for m in messages):
            raise ConfigError(f"topic {topic!r}: SNS cannot delay a message; send a delayed one to a queue")
        arn, entries = self.arn(topic), []
        for i, m in enumerate(messages):
            mid = m.message_id or uuid.uuid4().hex
            entry: dict[str, Any] = {"Id": str(i), "Message": m.body, "MessageAttributes": {
                MESSAGE_ID_ATTR: {"DataType": "String", "StringValue": mid}}}
            if m.priority > 0:  # routes it to a subscribed queue's priority band (see ``subscribe``)
                entry["MessageAttributes"][PRIORITY_ATTR] = {"DataType": "Number", "StringValue": str(m.priority)}
            if topic.endswith(".fifo"):
                # as for FIFO queues: one group per job, the message id dedups a replayed outbox
                entry.update(MessageGroupId=m.group_id or mid, MessageDeduplicationId=mid)
            entries.append(entry)
        for chunk in size_chunks(entries, _entry_bytes):
            self._publish_chunk(arn, chunk)

    def _publish_chunk(self, arn: str, entries: list[dict[str, Any]]) -> None:
        pending = entries
        for attempt in range(PUBLISH_RETRIES):
            failed = self.sns.publish_batch(TopicArn=arn, PublishBatchRequestEntries=pending).get("Failed", [])
            if not failed:
                return
            refused = [f for f in failed if f.get("SenderFault")]
            if refused:
                raise OrchestratorError(f"SNS refused {len(refused)} message(s): {refused[0].get('Message', '')}")
            ids = {f["Id"] for f in failed}
            pending = [e for e in pending if e["Id"] in ids]
            time.sleep(min(1.0, 0.05 * 2 ** attempt))
        raise OrchestratorError(f"{len(pending)} SNS batch entries still failing after {PUBLISH_RETRIES} tries")


def _entry_bytes(entry: dict[str, Any]) -> int:
    return len(entry["Message"].encode()) + sum(attribute_bytes(k, v["StringValue"])
                                                for k, v in entry["MessageAttributes"].items())


_: type[Topic] = SnsTopic
