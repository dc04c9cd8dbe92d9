"""The codec's one-pass path for our own envelopes decides exactly as the general path.

A body that starts ``{"v":`` is validated straight from its JSON; any other body (here: the
same body after a leading space) is parsed first and then validated. Both must accept the
same envelopes and refuse the same bodies with the same reason."""

from __future__ import annotations

import datetime
import decimal
import json
import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.codec import Codec
from orchestrator.envelope import TIME_DIGITS, Envelope, child_id, timed_id
from orchestrator.errors import MalformedMessage
from orchestrator.status import JobStatus
from orchestrator.storable import id_problem, value_problem

text = st.text(max_size=12)
ids = st.one_of(text, st.sampled_from(["\ud800", "", "j1"]))
values = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), text, st.booleans())


@st.composite
def bodies(draw: st.DrawFn) -> str:
    # an envelope without an id gets a random one: every drawn body has one
    doc: dict[str, object] = {"v": draw(st.sampled_from([1, 1, 1, 2, "1", None])), "id": draw(ids)}
    for key, strategy in (("task", ids), ("job_id", ids), ("payload", st.dictionaries(text, values)),
                          ("parent_id", st.one_of(st.none(), text)), ("created_at", st.floats(allow_nan=False)),
                          ("extra", values)):
        if draw(st.booleans()):
            doc[key] = draw(strategy)
    body = json.dumps(doc)
    return body if draw(st.booleans()) else body[: draw(st.integers(0, len(body)))]  # also broken JSON


def outcome(codec: Codec, body: str) -> object:
    try:
        return codec.decode(body)
    except MalformedMessage as exc:
        # the leading space moves a JSON error's reported position by one
        return ("malformed", re.sub(r"line \d+ column \d+ \(char \d+\)", "(at)", str(exc)), exc.job_id)
    except UnicodeEncodeError:  # a lone surrogate in the body itself (not escaped)
        return "unencodable"


@given(bodies())
def test_one_pass_and_general_decoding_agree(body: str) -> None:
    codec = Codec()
    assert outcome(codec, body) == outcome(codec, " " + body)


def test_a_valid_envelope_takes_the_one_pass_path_and_round_trips() -> None:
    env = Envelope(task="t", job_id="j", payload={"a": [1, 2]}, created_at=1.5)
    assert Codec().decode(env.to_json()) == env


def _notification(message: dict[str, object], attributes: dict[str, object] | None, sns_id: str) -> str:
    note: dict[str, object] = {"Type": "Notification", "MessageId": sns_id, "Message": json.dumps(message)}
    if attributes is not None:
        note["MessageAttributes"] = attributes
    return json.dumps(note)


@given(st.text(max_size=140), st.sampled_from(["a", "b"]))
def test_a_plain_message_we_published_keeps_its_outbox_id_and_others_get_one_from_sns(given_id: str, sns: str
                                                                                       ) -> None:
    codec = Codec(plain_task="annotate")
    request = {"job_id": "j1", "user_id": "u"}
    ours = codec.decode(_notification(request, {"message_id": {"Type": "String", "Value": given_id}}, sns))
    theirs = codec.decode(_notification(request, None, sns))
    # another publisher's message: named by SNS's MessageId, the same for its redeliveries
    assert theirs.id == codec.decode(_notification(request, {}, sns)).id != codec.decode(
        _notification(request, None, sns + "x")).id
    if id_problem(given_id, "message id") is None and len(given_id) <= 128:
        # ours: the id the sender's outbox gave it, whichever copy SNS delivered
        assert ours.id == given_id
        assert codec.decode(_notification(request, {"message_id": {"Value": given_id}}, sns + "x")).id == given_id
    else:  # an attribute that cannot be an id is not taken for one
        assert ours.id == theirs.id


# -- what a step emits: the body written straight from the fields is the model's own JSON ------
_utf8 = st.text(st.characters(codec="utf-8"), max_size=10)
_written_by_pydantic = st.sampled_from([
    datetime.datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=datetime.UTC), datetime.date(2026, 1, 2),
    decimal.Decimal("1.50"), uuid.UUID(int=7), JobStatus.FAILED, ("a", 1), b"raw",
])
_keys = _utf8 | st.just(JobStatus.FAILED)  # (a str subclass: orjson hands such keys back to pydantic)
_storable = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64 - 1), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | _utf8 | _written_by_pydantic,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3), max_leaves=10)


@given(parent=st.builds(Envelope, id=_utf8.filter(bool), task=_utf8.filter(bool), job_id=_utf8.filter(bool),
                        trace_id=st.none() | _utf8),
       stage=_utf8, index=st.integers(0, 1000), task=_utf8.filter(bool),
       payload=st.dictionaries(_keys, _storable, max_size=4),
       now=st.floats(allow_nan=False, allow_infinity=False) | st.integers(0, 2**40))
def test_an_emitted_body_is_the_envelope_models_own_json(parent: Envelope, stage: str, index: int, task: str,
                                                         payload: dict[str, object], now: float) -> None:
    # the outbox writes a child's JSON without building the model: byte for byte what the model
    # would write, for every payload the storable check lets through
    assert value_problem(payload, "payload") is None
    child = parent.child(stage=stage, index=index, task=task, payload=payload, now=now)
    assert parent.child_json(stage=stage, index=index, task=task, payload=payload, now=now) == (child.id, child.to_json())


_HEX32 = re.compile(r"[0-9a-f]{32}")
_sent_at = st.floats(0, 16**TIME_DIGITS / 1000 - 1, allow_nan=False)  # while the time digits last


@given(parent_id=_utf8.filter(bool), other_id=_utf8.filter(bool), a=_sent_at, b=_sent_at, stage=_utf8,
       index=st.integers(0, 1000), part=st.none() | st.integers(0, 1000))
def test_an_emitted_id_is_its_parents_own_and_sorts_by_when_the_parent_was_sent(
        parent_id: str, other_id: str, a: float, b: float, stage: str, index: int, part: int | None) -> None:
    # The same parent, stage and index give the same id (a re-emission is recognised), and
    # messages whose parents were sent in different milliseconds sort in that order whatever
    # their other parts, so a queue's index of ids takes a batch of sends in a few pages.
    first, again = (Envelope(id=parent_id, task="t", job_id="j", created_at=a) for _ in range(2))
    later = Envelope(id=other_id, task="t", job_id="j", created_at=b)
    mine = first.child(stage=stage, index=index, task="next", payload={}, now=0.0, part=part).id
    assert _HEX32.fullmatch(mine)
    assert mine == again.child(stage=stage, index=index, task="next", payload={}, now=5.0, part=part).id
    other = first.child(stage=stage, index=index + 1, task="next", payload={}, now=0.0,
                        part=None if part is None else part + 1)  # (a part's id is its part's, not its index's)
    assert mine != other.id
    theirs = later.child(stage=stage, index=index, task="next", payload={}, now=0.0, part=part).id
    if int(a * 1000) != int(b * 1000):
        assert (mine < theirs) == (a < b)


@given(sent_at=st.floats() | st.integers(-(2**70), 2**70), parent_id=_utf8, stage=_utf8, index=st.integers())
def test_an_emitted_id_is_32_hex_digits_whenever_its_parent_says_it_was_sent(
        sent_at: float, parent_id: str, stage: str, index: int) -> None:
    # (the id every emitted message gets is the general timed id, written out for speed)
    mid = child_id(parent_id, sent_at, stage, index)
    assert _HEX32.fullmatch(mid)
    assert mid == timed_id(sent_at, parent_id, stage, index)


@pytest.mark.parametrize("field", ["id", "task"])
@pytest.mark.parametrize("text,ok", [("\u00e9t\u00e9", True), ("\u6f22\u5b57", True), ("x\ud800", False),
                                     ("\udfff", False)])
def test_an_envelopes_id_and_task_are_taken_as_unicode_text_or_refused(field: str, text: str, ok: bool) -> None:
    fields = {"v": 1, "id": "m", "task": "t", "job_id": "j", field: text}
    body = json.dumps(fields)  # ASCII, with the non-ASCII written as \u escapes
    if ok:
        assert getattr(Codec().decode(body), field) == text
        assert getattr(Codec().decode(json.dumps(fields, ensure_ascii=False)), field) == text
    else:
        with pytest.raises(MalformedMessage):
            Codec().decode(body)
