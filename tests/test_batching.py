"""How many messages a worker takes per receive: fixed when the stage says, else sized to the
handlers' pace (``BatchSizer``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from orchestrator import JobStatus, Pipeline, Result, Worker
from orchestrator.backends import memory_backend, sqlite_backend
from orchestrator.controllers.batching import BATCH_TARGET_S, BatchSizer
from orchestrator.controllers.submit import submit_many
from orchestrator.errors import ConfigError
from orchestrator.middleware import Middleware
from orchestrator.pipeline import Stage


def sizes(sizer: BatchSizer, per_message_s: float, batches: int) -> list[int]:
    out = []
    for _ in range(batches):
        out.append(sizer.size)
        sizer.record(sizer.size, sizer.size * per_message_s)
    return out


def test_fast_handlers_double_the_batch_up_to_the_transport_limit() -> None:
    assert sizes(BatchSizer(limit=100), 0.0002, 9) == [1, 2, 4, 8, 16, 32, 64, 100, 100]
    assert sizes(BatchSizer(limit=10), 0.0002, 6) == [1, 2, 4, 8, 10, 10]


def test_slow_handlers_keep_batches_of_one() -> None:
    assert sizes(BatchSizer(limit=100), 2 * BATCH_TARGET_S, 5) == [1] * 5


def test_a_batch_that_slows_down_shrinks_the_next_at_once() -> None:
    sizer = BatchSizer(limit=100)
    sizes(sizer, 0.0001, 10)
    assert sizer.size == 100
    sizer.record(100, 100 * BATCH_TARGET_S / 4)  # handlers now take a quarter of the target each
    assert sizer.size == 4
    sizer.record(4, 4 * 2 * BATCH_TARGET_S)
    assert sizer.size == 1


@pytest.mark.parametrize(("count", "seconds"), [(0, 0.0), (5, 0.0)])
def test_an_empty_or_instant_batch_is_not_a_reason_to_jump(count: int, seconds: float) -> None:
    sizer = BatchSizer(limit=100)
    sizer.record(count, seconds)
    assert sizer.size == (1 if count == 0 else 2)


def test_a_fixed_batch_size_is_kept() -> None:
    assert sizes(BatchSizer(limit=100, fixed=7), 0.0001, 4) == [7, 7, 7, 7]
    assert sizes(BatchSizer(limit=100, fixed=7), 10.0, 2) == [7, 7]


def test_batch_size_is_checked_against_the_backend() -> None:
    st = Stage("s", lambda ctx, msg: None, source="in", batch_size=50)
    assert st.problems(max_visibility_s=43200, max_delay_s=900, max_batch=100) == []
    assert st.problems(max_visibility_s=43200, max_delay_s=900, max_batch=10) == [
        "stage s: batch_size must be 1..10 on this backend, got 50"]
    assert Stage("s", lambda ctx, msg: None, source="in").problems(
        max_visibility_s=43200, max_delay_s=900, max_batch=10) == []


class Batches(Middleware):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_receive(self, stage: Stage, count: int) -> None:
        if count:
            self.sizes.append(count)


def run_worker(tmp_path: Path, handler_s: float, jobs: int, batch_size: int | None = None,
               commit_s: float = 0.0, backend_kind: str = "sqlite") -> list[int]:
    pipeline = Pipeline("sized")

    @pipeline.stage("work", source="in", wait_s=0.05, batch_size=batch_size)
    def work(ctx, msg):  # type: ignore[no-untyped-def]
        time.sleep(handler_s)
        return Result(status=JobStatus.COMPLETED)

    backend = sqlite_backend(tmp_path / "q.db") if backend_kind == "sqlite" else memory_backend()
    if commit_s:  # a distant store: every batch's commit takes a round trip of commit_s
        commit_docs = backend.store.commit_docs

        def slow_commit(*args, **kwargs):  # type: ignore[no-untyped-def]
            time.sleep(commit_s)
            return commit_docs(*args, **kwargs)

        backend.store.commit_docs = slow_commit  # type: ignore[method-assign]
    pipeline.setup(backend)
    submit_many(backend, [(f"j{i}", {}) for i in range(jobs)], queue="in")
    seen = Batches()
    w = Worker(pipeline, "work", backend, middleware=[seen])
    t = threading.Thread(target=w.run, kwargs={"until_idle": True})
    t.start()
    t.join(60)
    assert not t.is_alive()
    assert all(j.status == JobStatus.COMPLETED for j in backend.store.query())
    assert sum(seen.sizes) == jobs
    return seen.sizes


@pytest.mark.parametrize("backend_kind", ["sqlite", "memory"])
def test_a_worker_takes_bigger_batches_than_sqs_allows_when_handlers_are_fast(tmp_path: Path, backend_kind: str
                                                                              ) -> None:
    got = run_worker(tmp_path, 0.0, 600, backend_kind=backend_kind)
    assert got[:3] == [1, 2, 4] and max(got) > 10


def test_a_worker_takes_one_message_at_a_time_when_handlers_are_slow(tmp_path: Path) -> None:
    assert run_worker(tmp_path, 0.15, 4) == [1, 1, 1, 1]


def test_a_stage_batch_size_fixes_the_batch(tmp_path: Path) -> None:
    assert run_worker(tmp_path, 0.0, 30, batch_size=10) == [10, 10, 10]


def test_slow_round_trips_do_not_shrink_the_batches_of_fast_handlers(tmp_path: Path) -> None:
    # 0.12 s per commit would read as 0.12 s per message in a batch of one: only the handlers count
    got = run_worker(tmp_path, 0.0, 300, commit_s=0.12)
    assert got[:4] == [1, 2, 4, 8] and max(got) == 100


def test_a_worker_batch_size_beyond_the_backend_is_refused(tmp_path: Path) -> None:
    pipeline = Pipeline("wide")
    pipeline.stage("work", source="in")(lambda ctx, msg: None)
    backend = sqlite_backend(tmp_path / "q.db")
    with pytest.raises(ConfigError, match=r"batch_size must be 1\.\.100 on this backend, got 101"):
        Worker(pipeline, "work", backend, batch_size=101)
    assert Worker(pipeline, "work", backend, batch_size=100).batch_size == 100
