"""Turn queue bodies into envelopes, accepting the foreign formats GAS deployments send.

Accepted, in order:

1. an SNS notification wrapper (``{"Type": "Notification", "Message": "..."}``) is unwrapped,
   also when published with ``MessageStructure="json"`` (a ``{"default": "..."}`` document);
2. an orchestrator envelope (has ``"v"``);
3. for a queue bound to one stage with ``plain_task`` set: any JSON object, with the job id
   read from ``job_id_field`` and the whole object as the payload. ``job_id_field`` may be a
   dotted path into nested objects and lists (``archives_data.0.job_id``) and may list
   alternatives tried in order, separated by ``|`` (``job_id|archives_data.0.job_id``).

Anything else raises ``MalformedMessage`` with the reason; the controller dead-letters it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from orchestrator.envelope import MAX_BODY_BYTES, MESSAGE_ID_ATTR, Envelope, canonical_json, derive_id
from orchestrator.errors import MalformedMessage, NothingToDo
from orchestrator.storable import id_problem, value_problem

# pydantic's validator itself: ``model_validate_json``'s wrapper is a Python call a message
_ENVELOPE_JSON = Envelope.__pydantic_validator__.validate_json


@dataclass(frozen=True)
class Codec:
    plain_task: str | None = None
    job_id_field: str = "job_id"
    required_fields: Sequence[str] = field(default_factory=tuple)
    max_body_bytes: int = MAX_BODY_BYTES
    #: for plain JSON that names no job: whether it is a request for nothing (acked, no job
    #: touched) rather than malformed (dead-lettered)
    nothing_to_do: Callable[[dict[str, Any]], bool] | None = None

    def decode(self, body: str) -> Envelope:
        try:
            size = len(body) if body.isascii() else len(body.encode())
        except UnicodeEncodeError as exc:  # bytes another program wrote, read with surrogateescape
            raise MalformedMessage(f"body is not valid UTF-8 (at character {exc.start})") from None
        if size > self.max_body_bytes:
            raise MalformedMessage(f"body is {size} bytes, over the {self.max_body_bytes}-byte limit",
                                   job_id=self._job_of(body))
        env = self._envelope(body)
        # Ids become keys in every store, and the payload travels on to stores and queues:
        # what some backend cannot store (see ``orchestrator.storable``) would fail the write
        # of the whole batch the message came in, so it is refused here, message by message.
        problem = id_problem(env.job_id)
        if problem is not None:
            raise MalformedMessage(problem)
        for name, value in (("id", env.id), ("task", env.task)):  # text, as the envelope's fields are
            if not value.isascii() and _text_or_none(value) is None:
                raise MalformedMessage(f"{name} {value!r} is not valid Unicode text")
        problem = value_problem(env.payload, "payload") or id_problem(user_of(env), "payload.user_id", optional=True)
        if problem is not None:
            raise MalformedMessage(problem, job_id=env.job_id)
        return env

    def _job_of(self, body: str) -> str | None:
        """The job a body refused for its size names, if it names one: that job is FAILED with
        the reason, not left waiting for a message that was dead-lettered."""
        try:
            job_id = self._envelope(body).job_id
        except (MalformedMessage, NothingToDo):
            return None
        return job_id if id_problem(job_id) is None else None

    def _envelope(self, body: str) -> Envelope:
        if body.startswith('{"v":'):
            # Our own envelope, as we write it: parsed and validated in one pass (a third of
            # a decode). Anything it refuses is judged again below, for the full reason.
            try:
                return _ENVELOPE_JSON(body)  # type: ignore[no-any-return]
            except ValidationError:
                pass
        doc = _parse(body, "body")
        sns_id: str | None = None
        sent_as: str | None = None
        if isinstance(doc, dict) and doc.get("Type") == "Notification" and "Message" in doc:
            sns_id = str(doc.get("MessageId") or "") or None
            sent_as = _sent_as(doc)
            doc = _parse(doc["Message"], "SNS Message")
            if isinstance(doc, dict) and isinstance(doc.get("default"), str) and _only_protocol_keys(doc):
                doc = _parse(doc["default"], "SNS default message")
        if not isinstance(doc, dict):
            raise MalformedMessage(f"expected a JSON object, got {type(doc).__name__}")
        if "v" in doc:
            try:
                env = Envelope.model_validate(doc)
            except ValidationError as exc:
                raise MalformedMessage(
                    f"invalid envelope: {_summarise(exc)}", job_id=_text_or_none(doc.get("job_id"))
                ) from exc
        elif self.plain_task is None:
            raise MalformedMessage("not an orchestrator envelope (no 'v' field) and this queue takes no plain JSON")
        else:
            env = self._plain(doc, sns_id, sent_as)
        return env

    def _plain(self, doc: dict[str, Any], sns_id: str | None, sent_as: str | None = None) -> Envelope:
        assert self.plain_task is not None
        job_id = next((j for path in self.job_id_field.split("|") if (j := _text_or_none(_at(doc, path)))), None)
        if not job_id:
            if self.nothing_to_do is not None and self.nothing_to_do(doc):
                raise NothingToDo(f"a message naming no job ('{self.job_id_field}'), which asks for nothing")
            raise MalformedMessage(f"plain JSON message has no '{self.job_id_field}'")
        missing = [k for k in self.required_fields if k not in doc]
        if missing:
            raise MalformedMessage(f"plain JSON message lacks required keys: {', '.join(missing)}", job_id=job_id)
        # A message we published keeps the id its sender's outbox gave it (a replayed publish
        # is the same message, and this step's commit tells that outbox it arrived); another
        # publisher's is named by SNS's MessageId, or by its body: the same body redelivered
        # gets the same id, so the step record spots duplicates.
        msg_id = sent_as or derive_id("plain", sns_id or canonical_json(doc))
        return Envelope(id=msg_id, task=self.plain_task, job_id=job_id, payload=doc)


def user_of(env: Envelope) -> str | None:
    """Who owns a job created from this message: its payload's ``user_id``, if any."""
    user = env.payload.get("user_id")
    return str(user) if user is not None else None


def _at(doc: Any, path: str) -> Any:
    """``doc`` at a dotted path (``a.0.b``: key a, list index 0, key b); None where absent."""
    for part in path.split("."):
        if isinstance(doc, dict):
            doc = doc.get(part)
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return None
    return doc


def _parse(text: Any, what: str) -> Any:
    if not isinstance(text, str):
        raise MalformedMessage(f"{what} is not a string")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also an integer of over 4,300 digits
        raise MalformedMessage(f"{what} is not valid JSON: {exc}") from exc


def _sent_as(notification: dict[str, Any]) -> str | None:
    """The id our SNS publisher gave the message (its ``message_id`` attribute), or None."""
    attrs = notification.get("MessageAttributes")
    attr = attrs.get(MESSAGE_ID_ATTR) if isinstance(attrs, dict) else None
    value = attr.get("Value") if isinstance(attr, dict) else None
    if isinstance(value, str) and id_problem(value) is None and len(value) <= 128:
        return value
    return None


def _only_protocol_keys(doc: dict[str, Any]) -> bool:
    protocols = {"default", "sqs", "email", "email-json", "http", "https", "sms", "lambda", "application", "firehose"}
    return set(doc) <= protocols


def _str_or_none(value: Any) -> str | None:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    return None


def _text_or_none(value: Any) -> str | None:
    """``value`` as a string that encodes as UTF-8, else None."""
    text = _str_or_none(value)
    if text is None or text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return None
    return text


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
