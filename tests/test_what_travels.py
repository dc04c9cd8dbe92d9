"""What goes onto a queue, a consumer can read.

- What ``submit`` is handed (a payload, a task, fields) either travels (the stage's codec
  decodes the body it sent back to the same payload; the job keeps the fields) or is refused
  with a typed error and its reason before anything is written.
- What a handler emits either travels the same way, or its job FAILs at the first attempt with
  the reason (not after every retry, which would fail the same way).

Never a job waiting on a message no consumer can decode."""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from typing import Any

from helpers import drain
from hypothesis import example, given
from hypothesis import strategies as st

from orchestrator import Emit, JobStatus, PermanentError, Pipeline, Result, Snooze
from orchestrator.backends import memory_backend
from orchestrator.base import QueueSpec
from orchestrator.clock import SimClock
from orchestrator.codec import Codec
from orchestrator.controllers.controller import Outcome
from orchestrator.controllers.submit import submit
from orchestrator.envelope import canonical_json
from orchestrator.errors import InvalidPayload, InvalidSubmission
from orchestrator.storable import MAX_DEPTH

# JSON-like values as a caller might hand them over, with what no backend or consumer could
# take among them: integers of any size (beyond 64 bits, beyond 4,300 digits), NaN and the
# infinities, text with lone surrogates, deep nesting
text = st.text(st.characters(exclude_categories=()), max_size=8)
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | text
           | st.sampled_from([-(2**64), 2**64 - 1, "\ud800", float("nan")])
           | st.builds(pow, st.just(10), st.integers(4300, 4400)))  # (built, not listed: no repr of 4,300 digits)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                      max_leaves=12)
payloads = st.dictionaries(text, values, max_size=4)
fieldses = st.none() | payloads | values  # (not a dict, among them)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


tasks = st.none() | text | st.sampled_from(["", " ", "t\ud800", "a\x00", "x" * 600])


@given(payload=payloads | values, task=tasks, fields=fieldses)
@example(payload={"n": 10**5000}, task=None, fields=None)  # decodes to a ValueError in Python
@example(payload={"n": 2**64}, task=None, fields=None)  # beyond what DynamoDB and PostgreSQL keep as a number
@example(payload={"s": "\ud800"}, task=None, fields=None)  # no UTF-8 encoding
@example(payload={"deep": _nested(MAX_DEPTH + 1)}, task=None, fields=None)  # deeper than every store keeps
@example(payload={}, task="t\ud800", fields=None)  # a task no consumer could read: a pydantic error, untyped, before
@example(payload=[1], task=None, fields=None)  # not an object: a pydantic error, untyped, before
@example(payload={}, task=None, fields=[1])  # a TypeError, before
@example(payload={}, task=None, fields={"": 1})  # a field with no name
def test_a_submitted_payload_travels_or_is_refused_before_anything_is_written(
        payload: Any, task: str | None, fields: Any) -> None:
    backend = memory_backend()
    backend.transport.ensure_queue(QueueSpec("in"))
    try:
        job, _ = submit(backend, job_id="j", payload=payload, queue="in", task=task, fields=fields)
    except (InvalidPayload, InvalidSubmission) as exc:
        assert any(what in str(exc) for what in ("payload", "task", "fields")), exc
        assert backend.store.get("j") is None
        assert backend.transport.depth("in").total == 0
        return
    [d] = backend.transport.receive("in", max_messages=10, wait_s=0, visibility_s=30)
    env = Codec().decode(d.body)
    assert env.job_id == "j" and _same(env.payload, payload) and env.task == (task or "in")
    assert _same(job.fields, fields or {}) and _same(backend.store.get("j").fields, fields or {})  # type: ignore[union-attr]


# -- what a handler emits: each item travels, or the job FAILs at once with the reason --------
clean_text = st.text(max_size=8)  # (no lone surrogates)
clean = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | clean_text, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(clean_text, inner, max_size=3),
    max_leaves=8)
clean_payloads = st.dictionaries(clean_text, clean, max_size=3)
task_names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8).filter(str.strip)  # (a NUL is bad)
good_items = clean_payloads | st.builds(Emit, clean_payloads, task=st.none() | task_names)


class _Unwritable:
    """An object no JSON writer takes (pydantic raises for it)."""


class _NoRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


bad_items = st.sampled_from([
    [1, 2], "text", Emit([1]),  # type: ignore[arg-type]
    Emit({}, task="t\ud800"), Emit({}, task=" "), Emit({}, task="a\x00"), Emit({}, to="q\ud800"),
    {"x": float("nan")}, {"x": 2**70}, {"x": "\udcff"},
    {"x": _Unwritable()}, {"x": [b"\xff"]}, {"x": {"when": datetime.date(2026, 1, 1), "what": _Unwritable()}},
    {"x": {_NoRepr(): 1}}, {"x": {("k" * 10**6,): 1}},  # keys that are not text: no repr, a megabyte of one
])


def _travelled(item: Any) -> tuple[str, str]:
    """(task, payload as canonical JSON) of an emitted item, as its message should carry them."""
    payload, task = (item.payload, item.task) if isinstance(item, Emit) else (item, None)
    return task or "out", canonical_json(payload)


@given(items=st.lists(st.tuples(st.booleans(), good_items, bad_items).map(lambda t: (t[1] if t[0] else t[2], t[0])),
                      min_size=1, max_size=4))
@example(items=[(Emit({}, task="\x00"), False)])  # a NUL task: refused, the job FAILED
def test_what_a_handler_emits_travels_or_fails_its_job_at_once_with_the_reason(items: list[tuple[Any, bool]]) -> None:
    backend = memory_backend(clock=SimClock())
    p = Pipeline("emits")
    p.stage("s", source="in", emit_to="out", max_receives=5)(lambda ctx, msg: Result(emit=[i for i, _ in items]))
    p.setup(backend)
    backend.transport.ensure_queue(QueueSpec("out"))
    p.submit(backend, job_id="j", payload={}, queue="in")
    outcomes = drain(backend, p, "s")
    job = backend.store.get("j")
    assert job is not None
    if not all(good for _, good in items):
        # at the first attempt, not after max_receives of them: the same result fails the same way
        assert outcomes == [Outcome.FAILED] and job.status == JobStatus.FAILED, outcomes
        assert "emit[" in (job.steps["s"].reason or "")
        assert backend.transport.depth("out").total == 0
        return
    assert outcomes == [Outcome.COMMITTED]
    got = backend.transport.receive("out", max_messages=10, wait_s=0, visibility_s=30)
    sent = sorted((env.task, canonical_json(env.payload)) for env in map(Codec().decode, (d.body for d in got)))
    assert sent == sorted(_travelled(i) for i, _ in items)


# -- what a handler returns or raises: a job ends as it should, and its record stays small ---
HUGE = 1_000_000


def _raise(exc: BaseException) -> Any:
    raise exc


#: (what the handler does, whether that is good); each built inside the handler, since
#: building a bad Emit or Snooze raises there
RETURNS: list[tuple[Callable[[int], Any], bool]] = [
    (lambda n: None, True),
    (lambda n: Result(), True),
    (lambda n: Result(emit=None), True),  # nothing emitted, as emit=()
    (lambda n: Result(emit=({"x": "y" * min(n, 1000)},)), True),
    (lambda n: Result(emit=iter([{}])), True),  # any iterable of payloads
    (lambda n: Snooze(1.0, reason="r" * n), True),
    (lambda n: Result(emit="abc"), False),  # a string is no list of payloads
    (lambda n: Result(emit={"a": 1}), False),  # nor is one payload
    (lambda n: Result(emit=5), False),  # type: ignore[arg-type]
    (lambda n: Result(parts="ab"), False),  # type: ignore[arg-type]
    (lambda n: Result(parts=7), False),  # type: ignore[arg-type]
    (lambda n: Result(emit=[Emit({}, to="out", topic="t")]), False),  # both a queue and a topic
    (lambda n: Result(emit=[Emit({}, priority=True)]), False),
    (lambda n: Result(emit=[Emit({}, delay_s=math.nan)]), False),
    (lambda n: Snooze(1.0, reason=5), False),  # type: ignore[arg-type]
    (lambda n: Snooze(math.nan), False),
    (lambda n: Result(fields=[1]), False),  # type: ignore[arg-type]
    (lambda n: Result(fields={"when": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC), "ids": {1, 2}}), True),
    # no store could write these: memory kept the object, and every other backend failed its write
    (lambda n: Result(fields={"x": _Unwritable()}), False),
    (lambda n: Result(fields={_NoRepr(): 1}), False),
    (lambda n: Result(parts=[{"x": _Unwritable()}]), False),
    (lambda n: Result(emit=[{"x": _Unwritable()}]), False),
    (lambda n: 5, False),
    (lambda n: _raise(PermanentError("p" * n + "\ud800\x00")), False),
]


@given(case=st.sampled_from(RETURNS), n=st.sampled_from([0, 10, 5000, HUGE]))
@example(case=RETURNS[14], n=0)  # a Snooze whose reason was a number crashed the worker's batch
@example(case=RETURNS[-1], n=HUGE)  # a megabyte of reason was written into the job twice
def test_what_a_handler_returns_ends_its_job_as_it_should_and_keeps_its_record_small(
        case: tuple[Callable[[int], Any], bool], n: int) -> None:
    does, good = case
    calls: list[int] = []

    def handler(ctx: Any, msg: Any) -> Any:
        calls.append(1)
        return does(n) if len(calls) == 1 else None  # (a snooze comes back to a finished step)

    backend = memory_backend(clock=SimClock())
    p = Pipeline("returns")
    p.stage("s", source="in", emit_to="out", max_receives=5)(handler)
    p.setup(backend)
    backend.transport.ensure_queue(QueueSpec("out"))
    p.submit(backend, job_id="j", payload={}, queue="in")
    outcomes = drain(backend, p, "s")  # (nothing may escape the controller)
    doc = backend.store.get_docs(["j"])["j"]
    assert len(canonical_json(doc)) < 32 * 1024, "a handler's text made the job's record grow without bound"
    if good:
        assert outcomes[-1] == Outcome.COMMITTED and doc["status"] != "FAILED", outcomes
        return
    # the first attempt decides: a retry would get the same answer
    assert outcomes in ([Outcome.FAILED], [Outcome.DEAD_LETTERED]) and doc["status"] == "FAILED", outcomes
    assert len(calls) == 1 and doc["history"][-1].get("reason"), doc["history"]
    assert backend.transport.depth("out").total == 0
