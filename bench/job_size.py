"""How many bytes a finished job takes in the job table, and where they go.

    python bench/job_size.py [--out FILE --append]

A two-stage job (a no-op lifecycle: stage one emits one small message, stage two completes it)
on the SQLite default, PostgreSQL's table holds the same document. The table gives the stored
document's size and its parts: steps (with what each keeps: the outbox that sent the next
message, and the failure of a failed attempt), history, origin (the first message, kept for a
resubmission's check and a retry) and fields.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import emit_table  # noqa: E402

from orchestrator import Controller, JobStatus, Pipeline, Result  # noqa: E402
from orchestrator.backends import sqlite_backend  # noqa: E402
from orchestrator.clock import SimClock  # noqa: E402
from orchestrator.logging import configure_logging  # noqa: E402


def finished_job(retries: int) -> dict[str, int]:
    p = Pipeline("size")
    tries = {"n": 0}

    def first(ctx, msg):  # type: ignore[no-untyped-def]
        tries["n"] += 1
        if tries["n"] <= retries:
            raise RuntimeError("a transient failure")
        return Result(status=JobStatus.RUNNING, emit=[{"n": msg.payload["n"]}])

    p.stage("first", source="a", emit_to="b", retry_base_s=0, retry_max_s=0)(first)
    p.stage("second", source="b")(lambda ctx, msg: Result(status=JobStatus.COMPLETED))
    with tempfile.TemporaryDirectory() as tmp:
        backend = sqlite_backend(Path(tmp) / "size.db", clock=SimClock())
        p.setup(backend)
        p.submit(backend, job_id="job-000001", payload={"n": 1}, queue="a", user_id="ann")
        for stage, queue in (("first", "a"), ("second", "b")):
            ctrl = Controller(p, stage, backend)
            while got := backend.transport.receive(queue, max_messages=10, wait_s=0, visibility_s=30):
                ctrl.handle_batch(got)
        [(text,)] = backend.transport.db.read("SELECT doc FROM jobs")
        backend.close()
    doc = json.loads(text)
    assert doc["status"] == "COMPLETED"

    def size(value: object) -> int:
        return len(json.dumps(value, separators=(",", ":")).encode())

    return {"total": len(text.encode()), "steps": size(doc["steps"]), "history": size(doc["history"]),
            "origin": size(doc["origin"]), "fields": size(doc["fields"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    configure_logging(level="error")
    rows = []
    for retries, label in ((0, "first try"), (2, "stage one retried twice")):
        s = finished_job(retries)
        rows.append(f"| {label} | {s['total']:,} | {s['steps']:,} | {s['history']:,} | {s['origin']:,} | "
                    f"{s['fields']:,} |")
    emit_table("\n".join([
        "A finished two-stage job in the job table (bytes of its JSON document):", "",
        "| job | total | steps | history | origin | fields |", "|---|---|---|---|---|---|", *rows]),
        args.out, append=args.append)


if __name__ == "__main__":
    main()
