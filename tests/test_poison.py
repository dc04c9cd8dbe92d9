"""One bad message never holds up its batch-mates, whatever its shape: a property.

Hypothesis puts poison from a catalogue (bodies no codec takes, ids and payloads some store
refuses, handler results no store can write, a store refusing one job's read or writes) at
random positions of random batches, on SQLite and PostgreSQL. Whatever it draws:

- every batch is processed: the controller never raises (a worker would log "batch not
  processed" and get the same batch again, forever);
- the good messages of the first batch commit in that very round, and every good job ends
  COMPLETED, each stage committed once;
- every poison message is dead-lettered with a reason, or its job FAILED with one, within
  the stage's max receives;
- nothing is left in the queues, and ``orchestrator status`` reads every job.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pg import drop_schema, new_schema, server_url, with_schema

from orchestrator import JobStatus, Pipeline, Result, Snooze
from orchestrator.backends import Backend, open_backend
from orchestrator.base import Outgoing
from orchestrator.cli import main
from orchestrator.clock import SimClock
from orchestrator.controllers.controller import Controller, Outcome
from orchestrator.envelope import Envelope

MAX_RECEIVES = 3


def _nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


def _env(**over: Any) -> str:
    doc = {"v": 1, "task": "first", "job_id": "raw", "payload": {"n": 0}, **over}
    return json.dumps(doc)


#: bodies sent as they are to the first stage's queue: (name, body). ``{id}`` is replaced by
#: a unique job id, so no two examples share a job.
RAW: dict[str, str] = {
    "not_json": "this is not JSON",
    "empty_body": "",
    "json_array": "[1, 2, 3]",
    "json_string": '"just text"',
    "no_version": '{"task": "first", "job_id": "{id}", "payload": {}}',
    "wrong_version": _env(v=2, job_id="{id}"),
    "extra_field": _env(job_id="{id}", evil=True),
    "no_job_id": '{"v": 1, "task": "first", "payload": {}}',
    "blank_job_id": _env(job_id="   "),
    "job_id_not_text": '{"v": 1, "task": "first", "job_id": 42, "payload": {}}',
    "job_id_surrogate": '{"v": 1, "task": "first", "job_id": "{id}\\udfff", "payload": {}}',
    "job_id_nul": '{"v": 1, "task": "first", "job_id": "{id}\\u0000", "payload": {}}',
    "job_id_5000_chars": _env(job_id="{id}" + "".join(random.Random(5).choices("abcdefghijklmnopqrstuvwxyz0123456789",
                                                                               k=5000))),
    "payload_not_object": _env(job_id="{id}", payload=[1, 2]),
    "user_surrogate": '{"v": 1, "task": "first", "job_id": "{id}", "payload": {"user_id": "\\udfff"}}',
    "user_nul": '{"v": 1, "task": "first", "job_id": "{id}", "payload": {"user_id": "a\\u0000b"}}',
    "user_blank": _env(job_id="{id}", payload={"user_id": ""}),
    "payload_10e5000": '{"v": 1, "task": "first", "job_id": "{id}", "payload": {"n": 1' + "0" * 5000 + "}}",
    "payload_int_65_bits": _env(job_id="{id}", payload={"n": 2**64 + 1}),
    "payload_nan": '{"v": 1, "task": "first", "job_id": "{id}", "payload": {"n": NaN}}',
    "payload_infinity": '{"v": 1, "task": "first", "job_id": "{id}", "payload": {"n": -Infinity}}',
    "payload_300_deep": _env(job_id="{id}", payload={"n": _nested(300)}),
    "payload_100k_deep": '{"v": 1, "task": "first", "job_id": "{id}", "payload": {"n": ' + "[" * 100_000
                         + "]" * 100_000 + "}}",
    "unknown_task": _env(job_id="{id}", task="nobody-takes-this"),
    "negative_part": _env(job_id="{id}", part=-1, parts=2),
    "oversize_body": _env(job_id="{id}", payload={"blob": "x" * 300_000}),
    "sns_wrapping_garbage": json.dumps({"Type": "Notification", "MessageId": "m", "Message": "{not json"}),
}

#: what the first stage's handler returns (or raises) for a job submitted with ``{"poison": name}``
HANDLER: dict[str, Callable[[], Any]] = {
    "fields_surrogate": lambda: Result(status=JobStatus.RUNNING, fields={"v": "\udfff"}),
    "fields_10e5000": lambda: Result(status=JobStatus.RUNNING, fields={"v": 10**5000}),
    "fields_int_65_bits": lambda: Result(status=JobStatus.RUNNING, fields={"v": -(2**64)}),
    "fields_300_deep": lambda: Result(status=JobStatus.RUNNING, fields={"v": _nested(300)}),
    "fields_nan": lambda: Result(status=JobStatus.RUNNING, fields={"v": float("nan")}),
    "fields_key_not_text": lambda: Result(status=JobStatus.RUNNING, fields={"v": {1: "one"}}),
    "fields_empty_name": lambda: Result(status=JobStatus.RUNNING, fields={"": 1}),
    "emit_surrogate": lambda: Result(status=JobStatus.RUNNING, emit=[{"n": "\udfff"}]),
    "emit_10e5000": lambda: Result(status=JobStatus.RUNNING, emit=[{"n": 10**5000}]),
    "parts_300_deep": lambda: Result(status=JobStatus.RUNNING, parts=[{"n": _nested(300)}]),
    "snooze_fields_surrogate": lambda: Snooze(5, reason="later", fields={"v": "\udfff"}),
    "not_a_result": lambda: "done",
    "always_raises": lambda: (_ for _ in ()).throw(RuntimeError("handler exploded")),
}

#: the store refuses this job's read, begin or commit with an error that is not an outage
#: (as a database refuses a value it cannot hold)
FAULTS = ("store_refuses_read", "store_refuses_begin", "store_refuses_commit")

#: a message for a job nobody created, sent to the second stage (which only continues jobs)
UNKNOWN_JOB = "unknown_job_on_a_later_stage"
#: a row another program wrote into the SQLite queue that is not UTF-8 (PostgreSQL's text
#: cannot hold one: there it is a body of replacement characters)
INVALID_UTF8 = "invalid_utf8_row"

KINDS = sorted([*RAW, *HANDLER, *FAULTS, UNKNOWN_JOB, INVALID_UTF8])
assert len(KINDS) >= 25


class RefusingStore:
    """The backend's store, refusing the reads or writes of jobs whose id says so."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @staticmethod
    def _refuse(what: str, ids: Sequence[str]) -> None:
        if any(i.startswith(f"store_refuses_{what}") for i in ids):
            raise ValueError(f"value refused by the database ({what})")

    def get_docs(self, job_ids: Sequence[str]) -> Any:
        self._refuse("read", job_ids)
        return self._inner.get_docs(job_ids)

    def begin_docs(self, items: Sequence[Any], **kw: Any) -> Any:
        self._refuse("begin", [i.job_id for i in items])
        return self._inner.begin_docs(items, **kw)

    def commit_docs(self, items: Sequence[Any], **kw: Any) -> Any:
        self._refuse("commit", [i.job_id for i in items])
        return self._inner.commit_docs(items, **kw)

    def apply(self, writes: Any) -> Any:  # the write half of a commit (prepare_commits is pure)
        self._refuse("commit", [job_id for job_id, _ in writes.rules])
        return self._inner.apply(writes)


def pipeline(begin: str = "deferred") -> Pipeline:
    p = Pipeline("poison")

    @p.stage("first", source="a", emit_to="b", max_receives=MAX_RECEIVES, visibility_timeout_s=30,
             retry_base_s=1, retry_max_s=4, begin=begin)  # type: ignore[arg-type]
    def first(ctx, msg):  # type: ignore[no-untyped-def]
        if msg.job_id.startswith("store_refuses_begin"):
            # slow enough that a deferred stage writes its round's begin while it runs
            ctx.clock.sleep(ctx.stage.begin_after_s + 0.5)
        kind = msg.payload.get("poison")
        if kind is not None:
            return HANDLER[kind]()
        return Result(status=JobStatus.RUNNING, fields={"n": msg.payload["n"]}, emit=[{"n": msg.payload["n"] + 1}])

    @p.stage("second", source="b", max_receives=MAX_RECEIVES, visibility_timeout_s=30, retry_base_s=1, retry_max_s=4)
    def second(ctx, msg):  # type: ignore[no-untyped-def]
        return Result(status=JobStatus.COMPLETED, fields={"m": msg.payload["n"]})

    return p


@contextmanager
def _backend(kind: str, tmp: Path, n: int) -> Iterator[tuple[Backend, str]]:
    if kind == "sqlite":
        url = f"sqlite:///{tmp / f'poison-{n}.db'}"
        b = open_backend(url, clock=SimClock())
        try:
            yield b, url
        finally:
            b.close()
        return
    server = server_url()
    schema = new_schema()
    url = with_schema(server, schema)
    b = open_backend(url, clock=SimClock())
    try:
        yield b, url
    finally:
        b.close()
        drop_schema(server, schema)


def _send(backend: Backend, p: Pipeline, kind: str, n: int) -> tuple[str, str | None]:
    """Put poison ``kind`` in the first queue; returns its message id and job id (if any)."""
    job = f"{kind}-{n}"
    if kind in RAW:
        body = RAW[kind].replace("{id}", job)
        mid = f"poison-{kind}-{n}"
        if kind == "oversize_body":  # already queued when the stage's limit went down
            backend.transport.max_body_bytes = 10**6  # type: ignore[misc]
        backend.transport.send("a", Outgoing(body=body, message_id=mid))
        return mid, None
    if kind == INVALID_UTF8:
        mid = f"poison-{kind}-{n}"
        db = getattr(backend.transport, "db", None)
        if db is not None and db.dialect == "sqlite":
            db.run(lambda c: c.execute(
                "INSERT INTO messages(queue, message_id, body, attrs, visible_at, enqueued_at) "
                "VALUES ('a', ?, CAST(x'7b2276223a20312c20ff7d' AS TEXT), '{}', 0, 0)", (mid,)))
        else:
            backend.transport.send("a", Outgoing(body="\ufffd\ufffd", message_id=mid))
        return mid, None
    if kind == UNKNOWN_JOB:
        env = Envelope(task="second", job_id=job, payload={"n": 1})
        backend.transport.send("b", Outgoing(body=env.to_json(), message_id=env.id))
        return env.id, job
    payload = {"poison": kind} if kind in HANDLER else {"n": n}
    rec, _ = p.submit(backend, job_id=job, payload=payload, queue="a")
    assert rec.origin is not None
    return rec.origin.id, job


def _run(backend: Backend, p: Pipeline, stage: str) -> list[Outcome]:
    """Drain ``stage`` batch by batch, advancing the clock over retries; every batch must be
    processed (the controller raising is the "batch not processed" loop)."""
    clock = backend.clock
    assert isinstance(clock, SimClock)
    st_ = p.get(stage)
    ctrl = Controller(p, st_, backend, seed=7)
    outcomes: list[Outcome] = []
    for _ in range(200):
        got = backend.transport.receive(st_.source, max_messages=10, wait_s=0, visibility_s=st_.visibility_timeout_s)
        if not got:
            if backend.transport.depth(st_.source).total == 0:
                return outcomes
            clock.advance(st_.visibility_timeout_s + st_.retry_max_s + 1)
            continue
        for d in got:
            assert d.receive_count <= MAX_RECEIVES + 1, f"{d.message_id} received {d.receive_count} times"
        outcomes += ctrl.handle_batch(got)
    raise AssertionError(f"stage {stage} never drained")


def check_poison_never_holds_a_batch(kind: str, tmp: Path, n: int, layout: list[str | None],
                                     begin: str = "deferred") -> None:
    p = pipeline(begin)
    with _backend(kind, tmp, n) as (backend, url):
        p.setup(backend)
        store = backend.store
        backend = dataclasses.replace(backend, store=RefusingStore(store))  # type: ignore[arg-type]
        good: list[str] = []
        poison: list[tuple[str, str, str | None]] = []  # (kind, message id, job id)
        for i, slot in enumerate(layout):
            if slot is None:
                job = f"good-{n}-{i}"
                p.submit(backend, job_id=job, payload={"n": i}, queue="a")
                good.append(job)
            else:
                poison.append((slot, *_send(backend, p, slot, i)))
        # the first batch: its good messages commit in this very round
        first = backend.transport.receive("a", max_messages=10, wait_s=0, visibility_s=30)
        outcomes = Controller(p, "first", backend, seed=3).handle_batch(first)
        firsts = {json.loads(d.body)["job_id"]: o for d, o in zip(first, outcomes, strict=True)
                  if d.body.startswith('{"v":') and "good-" in d.body}
        assert all(o == Outcome.COMMITTED for o in firsts.values()), firsts
        _run(backend, p, "first")
        _run(backend, p, "second")
        # every good job completed, each stage once
        for job in good:
            rec = store.get(job)
            assert rec is not None and rec.status == JobStatus.COMPLETED, (job, rec and rec.status)
            assert rec.commits("first") == 1 and rec.commits("second") == 1
        # every poison dead-lettered with a reason, or its job FAILED with one
        dead = {d.message_id: d.attributes.get("dead_letter_reason", "")
                for q in ("a-dlq", "b-dlq") for d in backend.transport.peek(q, 100)}
        for kind_, mid, job in poison:
            rec = store.get(job) if job is not None and "\x00" not in job else None
            failed = rec is not None and rec.status == JobStatus.FAILED and any(h.reason for h in rec.history)
            assert dead.get(mid) or failed, f"poison {kind_} neither dead-lettered with a reason nor FAILED"
        assert all(dead.values()), dead
        for q in ("a", "b"):
            assert backend.transport.depth(q).total == 0, q
        # and the operator can read every job
        assert main(["status", "--backend", url, "--json"]) == 0


layouts = st.lists(st.one_of(st.none(), st.sampled_from(KINDS)), min_size=2, max_size=10).filter(
    lambda xs: any(x is None for x in xs) and any(x is not None for x in xs))

_counter = iter(range(10**9))


begins = st.sampled_from(["deferred", "eager"])


@settings(max_examples=60)
@given(layout=layouts, begin=begins)
def test_poison_never_holds_a_batch_on_sqlite(tmp_path_factory: pytest.TempPathFactory,
                                                layout: list[str | None], begin: str) -> None:
    check_poison_never_holds_a_batch("sqlite", tmp_path_factory.mktemp("poison"), next(_counter), layout, begin)


@settings(max_examples=25)
@given(layout=layouts, begin=begins)
def test_poison_never_holds_a_batch_on_postgres(pg_server: str, tmp_path_factory: pytest.TempPathFactory,
                                                  layout: list[str | None], begin: str) -> None:
    check_poison_never_holds_a_batch("postgres", tmp_path_factory.mktemp("poison"), next(_counter), layout, begin)


@pytest.mark.parametrize("begin", ["deferred", "eager"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_poison_kind_is_settled_beside_a_good_message(tmp_path: Path, kind: str, begin: str) -> None:
    # every entry of the catalogue, at least once, whatever hypothesis draws
    check_poison_never_holds_a_batch("sqlite", tmp_path, next(_counter), [None, kind, None], begin)
