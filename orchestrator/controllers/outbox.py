"""A step's outbox: the messages its result emits, encoded once, sized before the commit,
and sent one batch per target queue and one per topic."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from orchestrator.backends import Backend
from orchestrator.base import Outgoing
from orchestrator.envelope import Envelope
from orchestrator.errors import PermanentError
from orchestrator.objects.claim_check import offload_body
from orchestrator.pipeline import Emit, Result, Stage
from orchestrator.status import OutMessage
from orchestrator.storable import check_value, id_problem
from orchestrator.transports.common import sns_wrapped_bytes

# Outbox bodies above this go by claim check when the stage allows it, keeping job records
# small.
INLINE_OUTBOX_BYTES = 64 * 1024
_DEFAULTS = Emit(payload={})
# An OutMessage validated from a dict by pydantic's own validator: the model's keyword
# __init__ cost 60% more, once for every message a step emits
_OUT = OutMessage.__pydantic_validator__.validate_python


def build_outbox(stage: Stage, backend: Backend, env: Envelope, result: Result) -> list[OutMessage]:
    """Encode what ``result`` emits. Ids derive from the input message id and the stage, so
    a re-run after a crash emits the same ids. Raises ``PermanentError`` for a message with
    nowhere to go or too large for its queue."""
    now, out = backend.clock.now(), []
    parts, emits = _listed(result.parts, "parts"), _listed(result.emit, "emit")
    if parts:
        target_topic, target_queue = stage.publish_to, stage.emit_to
        target = target_topic or target_queue
        if target is None:
            raise PermanentError(f"stage {stage.name} returned parts but has no emit_to/publish_to")
        n = len(parts)
        for i, payload in enumerate(parts):
            _check_payload(payload, f"parts[{i}]")
            part = env.child(stage=stage.name, index=i, task=target, payload=dict(payload), now=now, part=i, parts=n)
            body = _fit(stage, backend, part.to_json(), part.id, via_topic=target_topic is not None)
            out.append(OutMessage(kind="topic" if target_topic else "queue", target=target, id=part.id, body=body,
                                  priority=stage.priority))
    for i, item in enumerate(emits):
        # a plain dict is an Emit of that payload with every default (read from one made
        # once: a frozen Emit per message cost a microsecond on the commonest path)
        if isinstance(item, Emit):
            em, payload = item, item.payload
        else:
            em, payload = _DEFAULTS, dict(item) if isinstance(item, Mapping) else item
        _check_payload(payload, f"emit[{i}]")
        topic = em.topic if em.topic is not None else (None if em.to else stage.publish_to)
        queue = em.to if em.to is not None else (None if em.topic else stage.emit_to)
        target = topic or queue
        if target is None:
            raise PermanentError(f"stage {stage.name} emitted a message but has no emit_to/publish_to")
        task = em.task or target
        if em is item:  # an Emit names its own target or task (a plain dict goes where the stage's settings say)
            problem = id_problem(target, f"emit[{i}] target") or id_problem(task, f"emit[{i}].task")
            if problem is not None:
                raise PermanentError(problem)
        if em.plain if em.plain is not None else stage.emit_format == "plain":
            child = env.child(stage=stage.name, index=i, task=task, payload=payload, now=now)
            child_id, text = child.id, _plain_body(child)
        else:
            child_id, text = env.child_json(stage=stage.name, index=i, task=task, payload=payload, now=now)
        body = _fit(stage, backend, text, child_id, via_topic=topic is not None)
        if em.delay_s and topic and not getattr(backend.topic, "delays", True):
            raise PermanentError(f"stage {stage.name} emitted a delayed message to topic {topic!r}, and this "
                                 "backend's topics cannot delay (emit it to a queue instead)")
        priority = em.priority if em.priority is not None else stage.priority
        out.append(_OUT({"kind": "topic" if topic else "queue", "target": target, "id": child_id, "body": body,
                         "due_at": now + em.delay_s if em.delay_s else None, "priority": priority}))
    return out


def _listed(items: object, name: str) -> Sequence[Any]:
    """``Result.emit`` or ``Result.parts`` as a sequence (None: nothing); a single payload, a
    string or a number there is a mistake no retry mends, named as such."""
    if items is None:
        return ()
    if isinstance(items, (list, tuple)):
        return items
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise PermanentError(f"Result.{name} must be a list of payloads (dicts) or Emit, got {type(items).__name__}")
    return list(items)


def _check_payload(payload: object, where: str) -> None:
    # what no envelope can carry fails the job at once, with the reason (not a retry that
    # would fail the same way)
    if not isinstance(payload, dict):
        raise PermanentError(f"{where}: a payload must be a JSON object (a dict), got {type(payload).__name__}")
    check_value(payload, where)


def _fit(stage: Stage, backend: Backend, body: str, message_id: str, *, via_topic: bool) -> str:
    """Check an emitted body's size before it is committed (after the commit it could only
    fail forever). A topic's wrapped subscribers receive the body escaped inside an SNS
    notification, so a published body is measured as that. With ``offload_large_bodies`` a
    large body goes to the object store and the outbox keeps a claim-check pointer."""
    objects = backend.objects
    size = len(body.encode())
    wire = sns_wrapped_bytes(body) if via_topic else size
    limit = backend.transport.max_body_bytes
    if stage.offload_large_bodies and objects is not None and (size > INLINE_OUTBOX_BYTES or wire > limit):
        return offload_body(objects, message_id, body)
    if wire > limit:
        as_sent = f" ({wire} bytes as an SNS notification)" if via_topic else ""
        raise PermanentError(f"stage {stage.name} emitted a {size}-byte message{as_sent}, over the queue's "
                             f"{limit}-byte limit (enable offload_large_bodies to send it by claim check)")
    return body


def _plain_body(env: Envelope) -> str:
    doc: dict[str, Any] = {"job_id": env.job_id}
    doc.update(env.payload)
    return json.dumps(doc, default=str)


def emit(backend: Backend, outboxes: Sequence[tuple[Sequence[OutMessage], str]],
         on_emit: Callable[[OutMessage], None] | None = None) -> None:
    """Send every (outbox, job id) message: one batch per target queue and one per topic.
    The job id is the FIFO group."""
    by_queue: dict[str, list[Outgoing]] = defaultdict(list)
    by_topic: dict[str, list[Outgoing]] = defaultdict(list)
    for outbox, job_id in outboxes:
        for m in outbox:
            if on_emit is not None:
                on_emit(m)
            (by_topic if m.kind == "topic" else by_queue)[m.target].append(
                # (positional: a dataclass built with keywords costs twice as much, per message)
                Outgoing(m.body, m.id, max(0.0, m.due_at - backend.clock.now()) if m.due_at is not None else 0.0,
                         {}, job_id, m.priority))
    for topic, items in by_topic.items():
        backend.topic.publish_batch(topic, items)
    for queue, items in by_queue.items():
        backend.transport.send_batch(queue, items)
