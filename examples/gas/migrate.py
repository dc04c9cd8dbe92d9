"""Switching a GAS deployment over to our workers: who else consumes the GAS topics, and
taking them off (and putting them back).

    python -m examples.gas migrate --backend aws://... [--apply | --undo] [--json]

A deployment's own scripts (annotator, notify, thaw) subscribed their queues (or Lambdas) to
the same topics our stages subscribe to. Left there, every message is handled twice: two
annotations, two emails, two restores. ``inspect`` lists each such consumer with its backlog
and what it would duplicate; ``apply`` unsubscribes them, after recording each subscription
(protocol, endpoint, delivery attributes) in the state bucket, so ``undo`` can subscribe them
again as they were. The record is written before any unsubscription and removed only after
every re-subscription, so a crash in either leaves a state the same command finishes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from examples.gas.app import Gas, GasError
from orchestrator.errors import ObjectNotFound

RECORD = "migration/unsubscribed.json"
#: subscription attributes ``subscribe`` accepts back, so a re-subscription delivers as before
KEPT_ATTRIBUTES = ("RawMessageDelivery", "FilterPolicy", "FilterPolicyScope", "RedrivePolicy", "DeliveryPolicy",
                   "SubscriptionRoleArn")
DUPLICATES = {"annotate": "each request annotated twice", "notify": "each user emailed twice",
              "archive": "each free result archived twice", "thaw": "each upgrade's restores started twice"}


@dataclass
class Consumer:
    """A subscription to a GAS topic that is not one of our stages' queues."""

    topic: str
    topic_arn: str
    subscription_arn: str
    protocol: str
    endpoint: str
    attributes: dict[str, str]
    #: messages waiting in it (an SQS queue we may read), else None
    backlog: int | None
    #: what runs twice while it stays subscribed
    duplicates: str


def _aws(gas: Gas) -> Any:
    topic = gas.backend.topic
    if not hasattr(topic, "sns"):
        raise GasError(f"migrate works on an aws:// deployment; {gas.backend.url} has no SNS topics")
    return topic


def _consumed(gas: Gas) -> dict[str, list[str]]:
    """Topic -> the stages that subscribe to it."""
    out: dict[str, list[str]] = {}
    for st in gas.pipeline.stages.values():
        for t in st.subscribe:
            out.setdefault(t, []).append(st.name)
    return out


def inspect(gas: Gas) -> list[Consumer]:
    topic = _aws(gas)
    prefix = topic.transport.prefix
    out = []
    for name, stages in sorted(_consumed(gas).items()):
        ours = {gas.pipeline.get(s).source for s in stages}
        arn = topic.arn(name)
        for sub in topic._subs(arn):
            endpoint, protocol = str(sub.get("Endpoint", "")), str(sub.get("Protocol", ""))
            queue = endpoint.rsplit(":", 1)[-1].removeprefix(prefix) if protocol == "sqs" else None
            if queue is not None and endpoint.rsplit(":", 1)[-1].startswith(prefix) and any(
                    queue == q or queue.startswith(f"{q}-p") for q in ours):
                continue  # one of our stages' queues (or its priority bands)
            sub_arn = str(sub["SubscriptionArn"])
            attrs = {} if sub_arn == "PendingConfirmation" else topic.sns.get_subscription_attributes(
                SubscriptionArn=sub_arn)["Attributes"]
            twice = "; ".join(DUPLICATES.get(s, f"{s} runs twice") for s in stages)
            out.append(Consumer(name, arn, sub_arn, protocol, endpoint,
                                {k: str(v) for k, v in attrs.items() if k in KEPT_ATTRIBUTES},
                                _backlog(topic, endpoint) if protocol == "sqs" else None, twice))
    return out


def _backlog(topic: Any, queue_arn: str) -> int | None:
    *_, account, name = queue_arn.split(":", 5)
    try:
        url = topic.transport.sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
        attrs = topic.transport.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    except Exception:  # another account's queue, or no permission to look: unknown
        return None
    a = attrs.get("Attributes", {})
    return int(a.get("ApproximateNumberOfMessages", 0)) + int(a.get("ApproximateNumberOfMessagesNotVisible", 0))


def _state(gas: Gas) -> Any:
    state = gas.resources.state
    if state is None:
        raise GasError("this deployment has no state bucket to keep the migration's record in")
    return state


def recorded(gas: Gas) -> list[Consumer]:
    try:
        return [Consumer(**c) for c in json.loads(_state(gas).get(RECORD))]
    except ObjectNotFound:
        return []


def _record(gas: Gas, consumers: list[Consumer]) -> None:
    if consumers:
        _state(gas).put(RECORD, json.dumps([asdict(c) for c in consumers], indent=1).encode())
    else:
        _state(gas).delete(RECORD)


def apply(gas: Gas) -> list[Consumer]:
    """Unsubscribe every other consumer of a topic our stages consume; what was unsubscribed."""
    topic = _aws(gas)
    found = [c for c in inspect(gas) if c.subscription_arn != "PendingConfirmation"]
    if not found:
        return []
    earlier = recorded(gas)
    seen = {(c.topic_arn, c.protocol, c.endpoint) for c in earlier}
    _record(gas, earlier + [c for c in found if (c.topic_arn, c.protocol, c.endpoint) not in seen])  # first
    for c in found:
        topic.sns.unsubscribe(SubscriptionArn=c.subscription_arn)
    return found


def undo(gas: Gas) -> list[Consumer]:
    """Subscribe again, as they were, the consumers ``apply`` took off; those subscribed."""
    topic = _aws(gas)
    back = recorded(gas)
    for c in back:
        # idempotent: SNS answers an existing subscription's ARN for the same endpoint
        topic.sns.subscribe(TopicArn=c.topic_arn, Protocol=c.protocol, Endpoint=c.endpoint,
                            Attributes=c.attributes, ReturnSubscriptionArn=True)
    _record(gas, [])  # last
    return back


def report(consumers: list[Consumer], *, done: str | None = None) -> str:
    if not consumers:
        return f"nothing to {done}" if done else "no other consumers: only our stages read the GAS topics"
    lines = []
    for c in consumers:
        backlog = "" if c.backlog is None else f", {c.backlog} message(s) waiting"
        lines.append(f"{c.topic}: {c.protocol} {c.endpoint}{backlog}")
        lines.append(f"    {'was: ' if done else 'while subscribed: '}{c.duplicates}")
    if done is None:
        lines.append("unsubscribe them with --apply (recorded: --undo subscribes them again as they were)")
    return "\n".join(lines)
