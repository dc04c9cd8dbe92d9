"""The codec's one-pass path for our own envelopes decides exactly as the general path.

A body that starts ``{"v":`` is validated straight from its JSON; any other body (here: the
same body after a leading space) is parsed first and then validated. Both must accept the
same envelopes and refuse the same bodies with the same reason."""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.codec import Codec
from orchestrator.envelope import Envelope
from orchestrator.errors import MalformedMessage

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
