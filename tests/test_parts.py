"""Parts and join (fan-out / fan-in) on every backend: each part committed once, the join run
and committed once per job, with the parts' results in order."""

from __future__ import annotations

from helpers import drain

from orchestrator import JobStatus, PermanentError, Pipeline, Result
from orchestrator.backends import Backend
from orchestrator.controllers.controller import Outcome


def fan(n: int, *, bad: set[int] | None = None, allow_failed: bool = False, runs: list[str] | None = None
        ) -> Pipeline:
    p = Pipeline("fan")
    runs = runs if runs is not None else []

    @p.stage("split", source="split", emit_to="part")
    def split(ctx, msg):  # type: ignore[no-untyped-def]
        return Result(status=JobStatus.RUNNING, parts=[{"n": i} for i in range(n)])

    @p.stage("annotate_part", source="part", max_receives=2)
    def annotate_part(ctx, msg):  # type: ignore[no-untyped-def]
        runs.append(f"part{ctx.part}")
        if msg.payload["n"] in (bad or set()):
            raise PermanentError(f"part {msg.payload['n']} is unreadable")
        return Result(fields={"square": msg.payload["n"] ** 2})

    @p.join("merge", parts_of="annotate_part", allow_failed=allow_failed)
    def merge(ctx, msg):  # type: ignore[no-untyped-def]
        runs.append("merge")
        squares = [p["square"] if p else None for p in ctx.parts]
        failures = {str(i): why for i, why in ctx.part_failures.items()}
        return Result(status=JobStatus.COMPLETED, fields={"squares": squares, "failures": failures})

    return p


def test_the_join_runs_once_when_every_part_has_committed_with_their_results_in_order(backend: Backend) -> None:
    runs: list[str] = []
    p = fan(6, runs=runs)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="split")
    drain(backend, p, "split")
    assert backend.transport.depth("part").total == 6
    assert drain(backend, p, "merge") == []  # nothing to join yet
    assert drain(backend, p, "annotate_part") == [Outcome.COMMITTED] * 6
    assert drain(backend, p, "merge") == [Outcome.COMMITTED]
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.COMPLETED
    assert job.fields["squares"] == [0, 1, 4, 9, 16, 25]
    assert runs.count("merge") == 1 and sorted(r for r in runs if r != "merge") == sorted(f"part{i}" for i in range(6))
    assert all(job.commits(f"annotate_part#{i}") == 1 for i in range(6)) and job.commits("merge") == 1
    assert "square" not in job.fields  # a part's fields are its result, not the job's


def test_a_part_delivered_twice_is_committed_once_and_the_join_still_runs_once(backend: Backend) -> None:
    from orchestrator.base import Outgoing

    runs: list[str] = []
    p = fan(3, runs=runs)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="split")
    drain(backend, p, "split")
    for d in backend.transport.peek("part", 10):  # every part twice (a duplicate delivery)
        backend.transport.send("part", Outgoing(body=d.body, message_id=f"{d.message_id}-copy"))
    outcomes = drain(backend, p, "annotate_part")
    assert sorted(outcomes) == sorted([Outcome.COMMITTED] * 3 + [Outcome.DUPLICATE] * 3)
    assert drain(backend, p, "merge") == [Outcome.COMMITTED]
    job = backend.store.get("j1")
    assert job is not None and job.commits("merge") == 1 and runs.count("merge") == 1


def test_a_failed_part_fails_the_job_with_its_reason_and_the_join_never_runs(backend: Backend) -> None:
    runs: list[str] = []
    p = fan(4, bad={2}, runs=runs)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="split")
    drain(backend, p, "split")
    drain(backend, p, "annotate_part")
    assert drain(backend, p, "merge") == []
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.FAILED
    assert "part 2 is unreadable" in (job.history[-1].reason or "") or any(
        "part 2 is unreadable" in (h.reason or "") for h in job.history)
    assert "merge" not in runs


def test_a_join_that_allows_failed_parts_gets_them(backend: Backend) -> None:
    p = fan(4, bad={1, 3}, allow_failed=True)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="split")
    drain(backend, p, "split")
    drain(backend, p, "annotate_part")
    assert drain(backend, p, "merge") == [Outcome.COMMITTED]
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.COMPLETED
    assert job.fields["squares"] == [0, None, 4, None]
    assert job.fields["failures"] == {"1": "part 1 is unreadable", "3": "part 3 is unreadable"}
