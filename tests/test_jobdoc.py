"""The stores keep a job as a plain document and the rules work on that (``orchestrator.jobdoc``).

Two promises make that safe, checked here on random sequences of rule applications:
- a rule never changes the document it is given (the memory store keeps and hands out the
  very documents it was given, and the controller judges a batch against documents it read);
- the document and the typed record agree: the document's JSON reads back as the record, and
  so does the record's own JSON (rows written before documents read alike); history entries
  leave out what is None;
  and what a store keeps (``lean``: without defaults) reads back (``full``) as the same document;
- a commit shows its message arrived: no other step's outbox holds it any longer (a finished
  job does not carry what it sent).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from orchestrator import jobdoc
from orchestrator.errors import StoreError
from orchestrator.jobdoc import Doc
from orchestrator.status import JobRecord, JobStatus, OutMessage

STAGES = ("a", "b")
STATUSES = (None, *JobStatus)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("begin"), st.sampled_from(STAGES), st.sampled_from(("m1", "m2")),
                  st.sampled_from(("c1", "c2")), st.integers(1, 3)),
        st.tuples(st.just("commit"), st.sampled_from(STAGES), st.sampled_from(("m1", "m2")),
                  st.sampled_from((None, "c1", "c2")), st.sampled_from(STATUSES),
                  st.dictionaries(st.sampled_from(("x", "y")), st.integers() | st.text(max_size=3), max_size=2),
                  st.integers(0, 2)),
        st.tuples(st.just("fail"), st.sampled_from(STAGES), st.sampled_from((None, "c1", "c2")), st.booleans()),
        st.tuples(st.just("reset"), st.sampled_from(STAGES)),
        st.tuples(st.just("snooze"), st.sampled_from(STAGES), st.sampled_from((None, "c1", "c2"))),
        st.tuples(st.just("cancel")),
        st.tuples(st.just("retry"), st.sampled_from(STAGES)),
        st.tuples(st.just("fields"), st.dictionaries(st.sampled_from(("x", "z")), st.floats(allow_nan=False),
                                                     max_size=2)),
    ),
    max_size=12,
)


def apply(doc: Doc, op: tuple[Any, ...], now: float) -> Doc:
    match op:
        case ("begin", stage, mid, claim, attempt):
            return jobdoc.begin(doc, stage=stage, message_id=mid, claim=claim, attempt=attempt, now=now,
                                input_body='{"in": 1}', source="q")
        case ("commit", stage, mid, claim, status, fields, n):
            # the first message is the other one, so a later commit of it is its delivery
            outbox = [OutMessage(kind="queue", target="next", id=f"{mid}-{i}" if i else ("m2" if mid == "m1" else "m1"),
                                 body="{}") for i in range(n)]
            return jobdoc.commit(doc, stage=stage, message_id=mid, claim=claim, status=status, fields=fields,
                                 outbox=outbox, now=now)
        case ("fail", stage, claim, dead):
            return jobdoc.fail(doc, stage=stage, message_id="m1", claim=claim, reason="boom", dead_letter=dead,
                               now=now)
        case ("reset", stage):
            return jobdoc.reset(doc, stage=stage, reason="redrive", now=now)
        case ("cancel",):
            return jobdoc.cancel(doc, reason="stop", now=now)
        case ("retry", stage):
            return jobdoc.retry(doc, stage=stage, message_id="m3", input_body="{}", source="q", reason="again",
                                now=now)
        case ("snooze", stage, claim):
            return jobdoc.snooze(doc, stage=stage, message_id="m1", claim=claim, reason="later", until=now + 60,
                                 now=now)
        case ("fields", fields):
            return jobdoc.set_fields(doc, fields=fields, now=now)
    raise AssertionError(op)


@given(ops, st.booleans())
def test_rules_never_change_their_input_and_documents_match_their_records(sequence: list[Any], origin: bool) -> None:
    first = OutMessage(kind="topic", target="requests", id="o1", body='{"job_id": "j"}', due_at=9.5,
                       priority=3) if origin else None
    doc = jobdoc.new_doc("j", user_id="u", fields={"input": "f.vcf"}, now=1.0, origin=first)
    for n, op in enumerate(sequence):
        before = copy.deepcopy(doc)
        try:
            new = apply(doc, op, now=2.0 + n)
        except StoreError as exc:
            assert exc.current_doc is doc  # refused against the document it was given
            new = doc
        assert doc == before, f"{op[0]} changed the document it was given"
        written, doc = new is not doc, new
        record = jobdoc.to_record(doc)
        # the stored JSON reads back as the same record, and as a record's own JSON would
        stored = jobdoc.to_record(jobdoc.decode(jobdoc.encode(doc)))
        assert stored == jobdoc.to_record(jobdoc.decode(record.model_dump_json()))
        assert stored.history == record.history and stored.steps == record.steps
        assert all(v is not None for h in doc["history"] for k, v in h.items() if k not in ("to_status",))
        snapshot = copy.deepcopy(doc)
        kept = jobdoc.lean(doc)
        assert jobdoc.full(jobdoc.decode(jobdoc.encode(kept))) == jobdoc.decode(jobdoc.encode(doc))
        assert doc == snapshot
        if op[0] == "commit" and written:
            assert not [k for k, s in doc["steps"].items() if k != op[1] and any(m["id"] == op[2] for m in s["outbox"])]


def test_a_document_written_as_a_record_decodes_to_the_same_record() -> None:
    # a row an earlier version wrote (the typed record's JSON) is read as it was
    rec = JobRecord(job_id="j", status=JobStatus.RUNNING, fields={"n": 1}, created_at=1.5, version=3)
    doc = jobdoc.decode(rec.model_dump_json())
    assert jobdoc.to_record(doc) == rec
    assert jobdoc.commit(doc, stage="s", message_id="m", claim=None, status=JobStatus.COMPLETED, fields={},
                         outbox=[], now=2.0)["status"] == "COMPLETED"


def test_fields_of_any_type_pydantic_writes_are_written_as_the_record_writes_them() -> None:
    import datetime
    import decimal
    import uuid

    fields = {"when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC), "cost": decimal.Decimal("1.50"),
              "id": uuid.UUID(int=7), "status": JobStatus.FAILED, "huge": 2**70, "inf": float("inf"), "tags": ("a",)}
    doc = jobdoc.set_fields(jobdoc.new_doc("j", user_id=None, fields={}, now=1.0), fields=fields, now=2.0)
    assert jobdoc.decode(jobdoc.encode(doc))["fields"] == jobdoc.decode(jobdoc.to_record(doc).model_dump_json())["fields"]
    assert jobdoc.decode(jobdoc.encode(doc))["fields"]["huge"] == 2**70  # not rounded to a float


def test_a_consumers_commit_takes_its_message_out_of_the_senders_outbox() -> None:
    doc = jobdoc.new_doc("j", user_id=None, fields={}, now=1.0)
    sent = [OutMessage(kind="queue", target="b", id="m2", body="{}"),
            OutMessage(kind="topic", target="t", id="m3", body="{}")]
    doc = jobdoc.commit(doc, stage="a", message_id="m1", claim=None, status=None, fields={}, outbox=sent, now=2.0)
    doc = jobdoc.commit(doc, stage="b", message_id="m2", claim=None, status=None, fields={}, outbox=[], now=3.0)
    assert [m["id"] for m in doc["steps"]["a"]["outbox"]] == ["m3"]  # m3's consumer has not committed
    doc = jobdoc.commit(doc, stage="c", message_id="m3", claim=None, status=JobStatus.COMPLETED, fields={},
                        outbox=[], now=4.0)
    assert doc["steps"]["a"]["outbox"] == []
    kept = jobdoc.lean(doc)
    assert set(kept["steps"]["a"]) == {"message_id", "state", "started_at", "finished_at"}
    assert jobdoc.full(jobdoc.decode(jobdoc.encode(kept))) == doc


# JSON values of every kind a row may hold: integers past 64 bits, floats past a double's
# range (written as 1e400) and NaN, escapes, lone surrogates, text outside the BMP
_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**62, max_value=2**80)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text())
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=12)


def _texts() -> st.SearchStrategy[str]:
    written = st.builds(lambda v, ascii_only: json.dumps(v, ensure_ascii=ascii_only), _values,
                        st.booleans())
    odd = st.sampled_from(['{"a":1e400}', '{"a":-1e400}', '{"a":"\\ud800"}', '{"a":1,"a":2}', '{"a":1} x',
                           '{"a":Infinity}', ' [1 , 2 ] ', '{"a":"\\u00e9"}', '', '{', '"\ud800"',
                           '{"a":"x\udfff"}'])
    deep = st.builds(lambda n: "[" * n + "]" * n, st.integers(150, 20_000))
    return written | odd | deep | st.text(max_size=20)


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN, and a float never equal to an integer."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@given(_texts(), st.booleans())
def test_a_row_reads_back_exactly_as_pydantic_reads_it_or_fails_as_pydantic_fails(text: str, as_bytes: bool) -> None:
    import pydantic_core

    raw: str | bytes = text.encode("utf-8", "surrogatepass") if as_bytes else text
    try:
        expected = pydantic_core.from_json(raw)
    except (ValueError, TypeError) as exc:
        try:
            got = jobdoc.decode(raw)
        except (ValueError, TypeError) as refused:
            assert (type(refused), str(refused)) == (type(exc), str(exc))
        else:  # only what is nested past pydantic's depth limit is read where pydantic refuses
            assert "recursion limit" in str(exc), f"{raw!r} was read, where pydantic refuses it ({exc})"
            depth = len(raw) // 2
            assert raw == ("[" * depth + "]" * depth if isinstance(raw, str) else b"[" * depth + b"]" * depth)
            for _ in range(depth - 1):  # (a loop: comparing recursively would pass Python's own limit)
                assert isinstance(got, list) and len(got) == 1
                got = got[0]
            assert got == []
        return
    assert _same(jobdoc.decode(raw), expected)
