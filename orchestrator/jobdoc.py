"""The job record as the stores keep it, a plain JSON document, and the rules every store
applies to it.

A document is what ``JobRecord.model_dump(mode="json")`` gives: every field of the record, its
steps and its history entries, as dicts, lists and JSON scalars (``fields`` hold what handlers
put there), except that a history entry leaves out what is None (read entries with
``.get``). ``JobRecord`` is the typed view users get (``to_record``); the protocol's hot path
reads, judges and writes documents, because building and copying pydantic models cost more
per message than the rest of a store write together (measured: a begin and a commit rule
14 µs on models, 2.3 µs on documents; the memory backend's collector walks ~7 containers per
job instead of ~40). Stores keep a document ``lean`` (without what holds its defaults) and
read it back ``full``.

Documents are never changed in place: a rule returns a new document holding new containers
where it changed something and sharing the rest, so a document a caller holds stays valid.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pydantic_core

from orchestrator.errors import ConflictError, InvalidTransition, JobCancelled
from orchestrator.jsontext import dumps
from orchestrator.status import ALLOWED, JobRecord, JobStatus, JoinTrigger, OutMessage, StepRecord
from orchestrator.storable import storable_text

Doc = dict[str, Any]

PENDING, RUNNING = JobStatus.PENDING.value, JobStatus.RUNNING.value
COMPLETED, FAILED = JobStatus.COMPLETED.value, JobStatus.FAILED.value
CANCELLED = JobStatus.CANCELLED.value
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})
_ALLOWED = frozenset((a.value, b.value) for a, b in ALLOWED)


def _defaults(model: type[StepRecord]) -> Doc:
    return {name: None if f.is_required() else f.get_default(call_default_factory=True)
            for name, f in model.model_fields.items()}


#: a step's fields with their defaults (None where required), in the model's order
STEP_DEFAULTS: Doc = {k: v for k, v in _defaults(StepRecord).items() if k not in ("result", "error")}  # see StepRecord
#: the part of a failed attempt's traceback its history entry keeps (the step keeps the last in full)
HISTORY_TRACEBACK_CHARS = 2048


def lean(doc: Doc) -> Doc:
    """The document as a store keeps it: each step and history entry without what holds its
    default (a step's stage is its key), so a finished job takes a third fewer bytes. ``full``
    puts them back."""
    out = dict(doc)
    steps = {}
    for k, s in doc["steps"].items():  # every write of every message
        # a copy with deletions: a comprehension asking each of a dozen keys for its default
        # cost half as much again
        t = dict(s)
        for n in _NONE_BY_DEFAULT:
            if t.get(n, _PRESENT) is None:
                del t[n]
        for n, default in _OTHER_DEFAULTS:
            if n in t and t[n] == default:
                del t[n]
        if t.get("stage") == k:
            del t["stage"]
        steps[k] = t
    out["steps"] = steps
    # history entries are made lean (``_history``); one an earlier version wrote whole stays so
    return out


_PRESENT = object()
_NONE_BY_DEFAULT = tuple(n for n, v in STEP_DEFAULTS.items() if v is None)
_OTHER_DEFAULTS = tuple((n, v) for n, v in STEP_DEFAULTS.items() if v is not None)


def full(doc: Doc) -> Doc:
    """A document ``lean`` made, whole again (a whole one is returned unchanged in content)."""
    doc["steps"] = {k: {**STEP_DEFAULTS, "stage": k, "outbox": [], **s} for k, s in doc["steps"].items()}
    return doc  # history entries stay lean: read them with ``.get`` (the typed record fills them)


def to_record(doc: Doc) -> JobRecord:
    """The typed record of a document (a copy: changing it leaves the document alone)."""
    return JobRecord.model_validate(doc)


def to_doc(rec: JobRecord) -> Doc:
    return rec.model_dump(mode="json")


def encode(doc: Doc) -> str:
    """The document's JSON, as ``JobRecord.model_dump_json`` writes it (any value pydantic can
    serialise is accepted in ``fields``)."""
    return dumps(doc)


def decode(text: str | bytes) -> Doc:
    """The document of a row's JSON, as ``pydantic_core.from_json`` reads it.

    msgspec reads it first (a fifth fewer instructions for a one-step job's document, read
    on every step; orjson would be faster still, but it reads an integer beyond 64 bits as a
    float). What msgspec refuses but pydantic reads (``NaN``, ``Infinity``, a number beyond a
    double's range, an escaped lone surrogate) is read by pydantic, as is what neither reads,
    so an error is pydantic's as before. One difference, in the reader's favour: msgspec
    reads arrays and objects nested deeper than pydantic's limit of about 200 levels (a
    record pydantic could write, through ``fields``, and then not read back)."""
    try:
        doc: Doc = _msgspec_decode(text)
    except (msgspec.DecodeError, RecursionError, UnicodeError):  # (a str holding a raw surrogate)
        doc = pydantic_core.from_json(text)
    return doc


_msgspec_decode = msgspec.json.decode


def out_doc(m: OutMessage) -> Doc:
    d: Doc = {"kind": m.kind, "target": m.target, "id": m.id, "body": m.body}
    if m.due_at is not None:  # defaults left out, as ``OutMessage`` serialises itself
        d["due_at"] = m.due_at
    if m.priority:
        d["priority"] = m.priority
    return d


def out_message(d: Doc) -> OutMessage:
    return OutMessage.model_construct(**d)


def _history(now: float, event: str, stage: str | None, from_status: str | None, to_status: str,
             message_id: str | None = None, reason: str | None = None, error: Doc | None = None) -> Doc:
    # What is None is left out (as a stored entry would be): a job keeps every entry it was
    # ever given, and rewriting them lean on every write cost more than the rest of a lean.
    entry: Doc = {"at": now, "event": event, "to_status": to_status}
    if stage is not None:
        entry["stage"] = stage
    if from_status is not None:
        entry["from_status"] = from_status
    if reason is not None:
        entry["reason"] = storable_text(reason)
    if message_id is not None:
        entry["message_id"] = message_id
    if error is not None and error.get("traceback"):
        tb = error["traceback"]
        entry["traceback"] = tb if len(tb) <= HISTORY_TRACEBACK_CHARS else "...\n" + tb[-HISTORY_TRACEBACK_CHARS:]
    return entry


def _copy(doc: Doc) -> Doc:
    """A copy a rule may change: the document and its containers are new, the steps and
    history entries inside are shared (rules replace them, never change them)."""
    out = dict(doc)
    out["fields"], out["steps"], out["history"] = dict(doc["fields"]), dict(doc["steps"]), list(doc["history"])
    return out


def new_doc(job_id: str, *, user_id: str | None, fields: dict[str, Any], now: float,
            origin: OutMessage | None = None) -> Doc:
    """A PENDING job; a delayed or scheduled job's due time is its ``origin``'s ``due_at``."""
    return {
        "job_id": job_id, "user_id": user_id, "status": PENDING, "fields": dict(fields), "steps": {},
        "history": [_history(now, "created", None, None, PENDING)],
        "created_at": now, "updated_at": now, "origin": out_doc(origin) if origin is not None else None,
        "version": 0,
    }


def check_transition(current: str, requested: str, doc: Doc) -> None:
    if requested != current and (current, requested) not in _ALLOWED:
        raise InvalidTransition(f"job {doc['job_id']}: {current} -> {requested} is not allowed", current=doc)


def begin(doc: Doc, *, stage: str, message_id: str, claim: str, attempt: int, now: float,
          input_body: str | None = None, source: str | None = None, started_at: float | None = None) -> Doc:
    """Claim ``stage`` for this delivery; PENDING becomes RUNNING. ``started_at``: when the
    step started, if before ``now`` (a deferred begin).

    Raises ``ConflictError`` when the step is already finished (committed or failed) or the
    job is FAILED: the caller replays the recorded outcome instead of running the handler.
    """
    step = doc["steps"].get(stage)
    _not_cancelled(doc)
    if step is not None and step["state"] != "running":
        raise ConflictError(f"step {stage} of job {doc['job_id']} is already {step['state']}", current=doc)
    if doc["status"] == FAILED:
        raise ConflictError(f"job {doc['job_id']} is FAILED", current=doc)
    # newer_claim_wins: receive counts only grow, so a holder of an older copy of the same
    # message (a stalled process waking up) must not take the step from the current holder.
    if step is not None and step["message_id"] == message_id and step["attempt"] > attempt:
        raise ConflictError(f"step {stage} of job {doc['job_id']} is held by attempt {step['attempt']}, "
                            f"not {attempt}", current=doc)
    out = _copy(doc)
    # A newer claim replaces an older one: the older holder's lease has lapsed (the queue
    # redelivered the message), so from here on its commit must lose (lease fencing).
    out["steps"][stage] = {
        "stage": stage, "message_id": message_id, "state": "running", "claim": claim, "attempt": attempt,
        "started_at": now if started_at is None else started_at, "finished_at": None, "outbox": [], "reason": None,
        "dead_letter": False,
        "input": input_body, "source": source,
    }
    if step is not None and step.get("error") is not None:
        out["steps"][stage]["error"] = step["error"]  # the last failure stays in view until a commit
    if out["status"] == PENDING:
        out["status"] = RUNNING
        out["history"].append(_history(now, "begin", stage, PENDING, RUNNING, message_id))
    elif attempt > 1:  # a retry, a redelivery after a crash: every attempt shows in the history
        out["history"].append(_history(now, "claimed", stage, out["status"], out["status"], message_id,
                                       f"attempt {attempt}"))
    out["updated_at"] = now
    return out


def _not_cancelled(doc: Doc) -> None:
    # job_not_cancelled: after a cancel nothing is begun, committed, failed or snoozed
    if doc["status"] == CANCELLED:
        raise JobCancelled(f"job {doc['job_id']} is CANCELLED", current=doc)


def _own_running_step(doc: Doc, stage: str, claim: str | None) -> Doc | None:
    _not_cancelled(doc)
    step: Doc | None = doc["steps"].get(stage)
    # step_not_finished: the first committer wins; anyone later gets a conflict.
    if step is not None and step["state"] != "running":
        raise ConflictError(f"step {stage} of job {doc['job_id']} is already {step['state']}", current=doc)
    # lease_still_ours: a holder whose claim was replaced lost its lease and must not write.
    if claim is not None and (step is None or step["claim"] != claim):
        raise ConflictError(f"lease on step {stage} of job {doc['job_id']} is no longer ours", current=doc)
    return step


def part_key(stage: str, part: int) -> str:
    """The step of part ``part`` of ``stage``: each part is committed once, on its own."""
    return f"{stage}#{part}"


def _join_due(out: Doc, join: JoinTrigger | None) -> bool:
    """Whether every part of ``join`` is now finished (committed; or failed, where allowed)."""
    if join is None:
        return False
    done = ("committed", "failed") if join.allow_failed else ("committed",)
    steps = out["steps"]
    return all((s := steps.get(part_key(join.stage, i))) is not None and s["state"] in done for i in range(join.parts))


def _delivered(steps: Doc, stage: str, message_id: str) -> None:
    """Drop ``message_id`` from the outbox of the step that sent it: this commit shows it
    arrived (for a topic, that it was published), so no replay of that step needs to send it
    again, and a finished job does not carry every message it ever sent."""
    for k, s in list(steps.items()):
        outbox = s["outbox"]
        if not outbox or k == stage:
            continue
        for m in outbox:  # a loop, not any(): it runs for every step of every commit
            if m["id"] == message_id:
                steps[k] = {**s, "outbox": [m for m in outbox if m["id"] != message_id]}
                break


def commit(doc: Doc, *, stage: str, message_id: str, claim: str | None, status: str | None,
           fields: dict[str, Any], outbox: list[OutMessage], now: float, result: dict[str, Any] | None = None,
           join: JoinTrigger | None = None, attempt: int = 0, started_at: float | None = None) -> Doc:
    """Record the step's result, its fields and its outbox; optionally move the status.

    ``claim=None``: no begin claimed the step (``begin="lazy"``, or a deferred begin not
    written). The step is created here if need be, with ``attempt`` (the delivery's receive
    count) and ``started_at`` (when its handler started; else now); a PENDING job passes through
    RUNNING in the same write; the only condition is that nobody committed the step first.
    """
    prev = _own_running_step(doc, stage, claim)
    out = _copy(doc)
    if claim is None and out["status"] == PENDING:
        out["status"] = RUNNING
        out["history"].append(_history(now, "begin", stage, PENDING, RUNNING, message_id))
    if status is not None:
        status = str(status)
        check_transition(out["status"], status, doc)
    step = dict(prev) if prev is not None else {**STEP_DEFAULTS, "stage": stage, "message_id": message_id,
                                                 "started_at": now if started_at is None else started_at,
                                                 "attempt": attempt}
    step["state"], step["finished_at"], step["outbox"] = "committed", now, [out_doc(m) for m in outbox]
    # the input was kept to re-send a step whose message was lost, or retry a failed one: a
    # committed step needs neither (its outbox carries what comes next)
    step["input"] = None
    # nor its claim: a finished step refuses every later write by its state (a claim on SQS
    # is a receipt handle, hundreds of bytes)
    step["claim"] = None
    step.pop("error", None)  # the last attempt succeeded: the history keeps what failed before
    if result is not None:
        step["result"] = result
    out["steps"][stage] = step
    _delivered(out["steps"], stage, message_id)
    if _join_due(out, join):  # the last part: the join's message goes out with this commit
        assert join is not None
        step["outbox"] = [*step["outbox"], out_doc(join.message)]
    out["fields"].update(fields)
    before = out["status"]
    if status is not None:
        out["status"] = status
    out["history"].append(_history(now, "commit", stage, before, out["status"], message_id))
    out["updated_at"] = now
    return out


def fail(doc: Doc, *, stage: str, message_id: str, claim: str | None, reason: str, dead_letter: bool,
         now: float, join: JoinTrigger | None = None, error: Doc | None = None) -> Doc:
    """Mark the step failed; the job becomes FAILED unless it is already terminal.

    A post-completion stage (notify, archive) that fails leaves a COMPLETED job COMPLETED:
    status never goes backwards, and the failure is kept in the step and the history.
    """
    prev = _own_running_step(doc, stage, claim)
    out = _copy(doc)
    out["steps"][stage] = {
        **STEP_DEFAULTS, "stage": stage, "message_id": message_id, "state": "failed", "claim": claim,
        "attempt": prev["attempt"] if prev else 0, "started_at": prev["started_at"] if prev else now,
        "finished_at": now, "outbox": [], "reason": storable_text(reason), "dead_letter": dead_letter,
        # kept for a retry: the input the step was begun with, and its queue
        "input": prev["input"] if prev else None, "source": prev["source"] if prev else None,
    }
    last_error = error or (prev.get("error") if prev else None)
    if last_error is not None:
        out["steps"][stage]["error"] = last_error
    before = out["status"]
    if join is not None and join.allow_failed:
        # a part that may fail: the join gets the failure; the job goes on (and if this was
        # the last part to finish, the join's message goes out with this write)
        out["history"].append(_history(now, "step_failed", stage, before, before, message_id, reason))
        if _join_due(out, join):
            out["steps"][stage]["outbox"] = [out_doc(join.message)]
    elif before not in TERMINAL:
        out["status"] = FAILED
        out["history"].append(_history(now, "fail", stage, before, FAILED, message_id, reason, error))
    else:
        out["history"].append(_history(now, "step_failed", stage, before, before, message_id, reason, error))
    out["updated_at"] = now
    return out


def retried(doc: Doc, *, stage: str, message_id: str, claim: str | None, error: Doc, delay_s: float,
            now: float) -> Doc:
    """Record a failed attempt that will be retried: the step keeps the exception (type,
    message, traceback), the history says what failed and when it runs again. Status and the
    step's state are unchanged. Conditioned like a commit (a fenced-off holder records nothing)."""
    step = _own_running_step(doc, stage, claim)
    out = dict(doc)
    out["steps"] = dict(doc["steps"])
    if step is not None:
        out["steps"][stage] = {**step, "error": error}
    out["history"] = [*doc["history"], _history(
        now, "retried", stage, doc["status"], doc["status"], message_id,
        f"{error['type']}: {error['message']} (attempt {error['attempt']}); again in {delay_s:.3g}s", error)]
    out["updated_at"] = now
    return out


def note(doc: Doc, *, event: str, stage: str | None, message_id: str | None, reason: str, now: float) -> Doc:
    """A history entry and nothing else (a message released at shutdown, a lease lost): it
    changes no state, so it needs no claim."""
    out = dict(doc)
    out["history"] = [*doc["history"], _history(now, event, stage, doc["status"], doc["status"], message_id, reason)]
    out["updated_at"] = now
    return out


def snooze(doc: Doc, *, stage: str, message_id: str, claim: str | None, reason: str, until: float,
           now: float, fields: dict[str, Any] | None = None) -> Doc:
    """Record that ``stage`` snoozed this message until ``until``: status and steps stay as
    they are, ``fields`` are merged; the history says why and until when. Conditioned like a
    commit (the step not finished, the lease still ours), so a holder fenced off records nothing."""
    _own_running_step(doc, stage, claim)
    out = dict(doc)
    if fields:
        out["fields"] = {**doc["fields"], **fields}
    out["history"] = [*doc["history"], _history(now, "snoozed", stage, doc["status"], doc["status"], message_id,
                                                f"{reason} (until {until:.3f})")]
    out["updated_at"] = now
    return out


def reset(doc: Doc, *, stage: str, reason: str, now: float) -> Doc:
    """Operator redrive: a FAILED job goes back to PENDING and the failed step is forgotten.

    A COMPLETED job keeps its status: only a post-completion stage's failed step (notify,
    archive, restore failed after the job completed) is forgotten, so its message can run
    again; anything else of a COMPLETED job is refused."""
    step = doc["steps"].get(stage)
    if doc["status"] == COMPLETED and (step is None or step["state"] != "failed"):
        raise InvalidTransition(f"job {doc['job_id']} is COMPLETED and its step {stage} did not fail; "
                                "refusing to reset it", current=doc)
    out = _copy(doc)
    out["steps"].pop(stage, None)
    before = out["status"]
    if before == COMPLETED:
        out["history"].append(_history(now, "reset", stage, before, before, reason=reason))
        out["updated_at"] = now
        return out
    out["status"] = PENDING
    out["history"].append(_history(now, "reset", stage, before, PENDING, reason=reason))
    out["updated_at"] = now
    return out


def cancel(doc: Doc, *, reason: str, now: float) -> Doc:
    """PENDING or RUNNING -> CANCELLED. A CANCELLED job is returned as it is (the very same
    document: nothing to write); a COMPLETED or FAILED one is refused."""
    if doc["status"] == CANCELLED:
        return doc
    if doc["status"] in TERMINAL:
        raise InvalidTransition(f"job {doc['job_id']} is {doc['status']}; only a PENDING or RUNNING job can be "
                                "cancelled", current=doc)
    out = _copy(doc)
    out["history"].append(_history(now, "cancelled", None, doc["status"], CANCELLED, reason=reason))
    out["status"] = CANCELLED
    out["updated_at"] = now
    return out


def failed_stage(doc: Doc) -> str | None:
    """The stage whose failure made the job FAILED (its last ``fail`` history entry)."""
    return next((h.get("stage") for h in reversed(doc["history"]) if h["event"] == "fail"), None)


def retry(doc: Doc, *, stage: str, message_id: str, input_body: str, source: str, reason: str, now: float) -> Doc:
    """FAILED -> PENDING: the failed ``stage`` becomes a step waiting for its input again
    (``message_id`` on ``source``; the sweeper re-sends it should the send be lost), with a
    history entry. Refused for a job that is not FAILED."""
    if doc["status"] != FAILED:
        raise InvalidTransition(f"job {doc['job_id']} is {doc['status']}; only a FAILED job can be retried",
                                current=doc)
    out = _copy(doc)
    out["steps"][stage] = {**STEP_DEFAULTS, "stage": stage, "message_id": message_id, "state": "running",
                           "started_at": now, "input": input_body, "source": source}
    for key in [k for k in out["steps"] if k.startswith(f"{stage}!")]:  # its rejected copies too
        del out["steps"][key]
    out["history"].append(_history(now, "retry", stage, FAILED, PENDING, message_id, reason))
    out["status"] = PENDING
    out["updated_at"] = now
    return out


def set_fields(doc: Doc, *, fields: dict[str, Any], now: float) -> Doc:
    out = _copy(doc)
    out["fields"].update(fields)
    out["updated_at"] = now
    return out
