"""What a snooze costs, and how soon a high priority overtakes a backlog.

    python bench/time_features.py [--snoozes 200] [--backlog 10000] [--out FILE --append]

1. **A snooze's cost.** One job whose handler snoozes ``--snoozes`` times (1 s each) before it
   completes, on the SQLite default, the in-memory backend and SQS + DynamoDB (moto, in
   process). Every call the controller makes on the queue and the store is counted; the table
   gives the calls per snooze (the handler's own receive included) and the time per snooze
   cycle (receive, begin, handler, snooze record, hand-back; no waiting: the clock is moved).
   On SQS a snooze is a copy sent with the delay and the original deleted, as SQS cannot take
   a receive back.
2. **Priorities.** ``--backlog`` messages of priority 0 queued, then one of priority 9; the
   table says where in the next receive (batch 10) the priority-9 message came, and the
   receive's time with and without the backlog.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import emit_table  # noqa: E402

from orchestrator import Controller, JobStatus, Pipeline, Result, Snooze  # noqa: E402
from orchestrator.backends import Backend, memory_backend, sqlite_backend  # noqa: E402
from orchestrator.base import Outgoing  # noqa: E402
from orchestrator.clock import SimClock  # noqa: E402
from orchestrator.logging import configure_logging  # noqa: E402

QUEUE_CALLS = ("receive", "send", "send_batch", "ack", "ack_batch", "extend", "release", "snooze", "dead_letter")
STORE_CALLS = ("create", "create_doc", "get_docs", "begin_docs", "commit_docs", "snooze", "fail")
SQS_CALLS = ("receive_message", "send_message", "send_message_batch", "delete_message", "delete_message_batch",
             "change_message_visibility")


class _Counted:
    """A proxy counting calls of the named methods."""

    def __init__(self, inner: Any, names: tuple[str, ...], counts: Counter[str], prefix: str) -> None:
        self._inner, self._names, self._counts, self._prefix = inner, names, counts, prefix

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in self._names:
            return attr

        def counted(*a: Any, **kw: Any) -> Any:
            self._counts[f"{self._prefix}.{name}"] += 1
            return attr(*a, **kw)
        return counted


def snoozing(n: int) -> Pipeline:
    p = Pipeline("snooze-bench")
    seen = Counter[str]()

    @p.stage("wait", source="waits", max_receives=3, max_snooze_s=None, visibility_timeout_s=30)
    def wait(ctx, msg):  # type: ignore[no-untyped-def]
        seen[msg.job_id] += 1
        return Snooze(1.0, reason="not yet") if seen[msg.job_id] <= n else Result(status=JobStatus.COMPLETED)

    return p


def snooze_cost(backend: Backend, advance: Callable[[float], None], n: int, counts: Counter[str]) -> float:
    """Seconds per snooze cycle; ``counts`` holds the calls made."""
    p = snoozing(n)
    p.setup(backend)
    p.submit(backend, job_id="j", payload={}, queue="waits")
    st = p.get("wait")
    ctrl = Controller(p, st, backend)
    counts.clear()
    start = time.perf_counter()
    for _ in range(n + 1):
        got = backend.transport.receive("waits", max_messages=1, wait_s=0, visibility_s=30)
        assert len(got) == 1, "the snoozed message was not back after its second"
        ctrl.handle_batch(got)
        advance(1.0)
    took = time.perf_counter() - start
    job = backend.store.get("j")
    assert job is not None and job.status == JobStatus.COMPLETED, job
    assert sum(1 for h in job.history if h.event == "snoozed") == n
    return took / (n + 1)


def counted_backend(b: Backend, counts: Counter[str]) -> Backend:
    b.transport = _Counted(b.transport, QUEUE_CALLS, counts, "queue")  # type: ignore[assignment]
    b.store = _Counted(b.store, STORE_CALLS, counts, "store")  # type: ignore[assignment]
    return b


@contextmanager
def moto_backend(counts: Counter[str]) -> Iterator[tuple[Backend, Callable[[float], None]]]:
    import datetime

    import boto3
    import moto.core.utils
    from moto import mock_aws

    from orchestrator.backends.aws import aws_backend

    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(k, v)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    offset = [0.0]
    real = moto.core.utils.utcnow
    moto.core.utils.utcnow = lambda: real() + datetime.timedelta(seconds=offset[0])  # type: ignore[assignment]

    from orchestrator.clock import SystemClock

    class MotoClock(SystemClock):
        def now(self) -> float:
            return moto.core.utils.utcnow().replace(tzinfo=datetime.UTC).timestamp()

    def advance(s: float) -> None:
        offset[0] += s

    try:
        with mock_aws():
            b = aws_backend("aws://?region=us-east-1&prefix=bench-", clock=MotoClock())
            sqs = boto3.client("sqs", region_name="us-east-1")
            b.transport.sqs = _Counted(sqs, SQS_CALLS, counts, "sqs")  # type: ignore[attr-defined]
            yield counted_backend(b, counts), advance
    finally:
        moto.core.utils.utcnow = real  # type: ignore[assignment]


def snooze_rows(n: int) -> list[str]:
    rows = []
    cases: list[tuple[str, Callable[[Counter[str]], Any]]] = []

    @contextmanager
    def sqlite(counts: Counter[str]) -> Iterator[tuple[Backend, Callable[[float], None]]]:
        clock = SimClock()
        with tempfile.TemporaryDirectory() as tmp:
            b = sqlite_backend(Path(tmp) / "s.db", clock=clock)
            try:
                yield counted_backend(b, counts), clock.advance
            finally:
                b.close()

    @contextmanager
    def memory(counts: Counter[str]) -> Iterator[tuple[Backend, Callable[[float], None]]]:
        clock = SimClock()
        yield counted_backend(memory_backend(clock), counts), clock.advance

    cases = [("SQLite default", sqlite), ("memory", memory), ("SQS + DynamoDB (moto, in process)", moto_backend)]
    for name, make in cases:
        counts: Counter[str] = Counter()
        with make(counts) as (backend, advance):
            per = snooze_cost(backend, advance, n, counts)
        calls = {k: v / (n + 1) for k, v in sorted(counts.items())}
        queue = sum(v for k, v in calls.items() if k.startswith("queue."))
        store = sum(v for k, v in calls.items() if k.startswith("store."))
        sqs = sum(v for k, v in calls.items() if k.startswith("sqs."))
        detail = ", ".join(f"{k} {v:.2f}" for k, v in calls.items() if v >= 0.01)
        rows.append(f"| {name} | {queue:.2f} | {store:.2f} | {f'{sqs:.2f}' if sqs else '-'} | "
                    f"{per * 1e6:,.0f} µs | {detail} |")
        print(rows[-1], flush=True)
    return rows


def priority_rows(backlog: int) -> list[str]:
    rows = []
    for name in ("SQLite default", "memory"):
        clock = SimClock()
        with tempfile.TemporaryDirectory() as tmp:
            b = sqlite_backend(Path(tmp) / "p.db", clock=clock) if name.startswith("SQLite") else memory_backend(clock)
            t = b.transport
            try:
                t.send_batch("q", [Outgoing(body="x", message_id=f"warm{i}") for i in range(10)])
                empty = []
                for _ in range(5):
                    s = time.perf_counter()
                    got = t.receive("q", max_messages=10, wait_s=0, visibility_s=30)
                    empty.append(time.perf_counter() - s)
                    for d in got:
                        t.ack(d)
                    t.send_batch("q", [Outgoing(body="x", message_id=f"w{_}-{i}") for i in range(10)])
                for i in range(0, backlog, 1000):
                    t.send_batch("q", [Outgoing(body="low", message_id=f"b{j}") for j in range(i, i + 1000)])
                clock.advance(1)
                for d in t.receive("q", max_messages=10, wait_s=0, visibility_s=30):  # warm: the first
                    t.release(d, 0)  # receive after a bulk load pays once for caches and heaps
                t.send("q", Outgoing(body="urgent", message_id="urgent", priority=9))
                s = time.perf_counter()
                got = t.receive("q", max_messages=10, wait_s=0, visibility_s=30)
                full = time.perf_counter() - s
                where = next((n for n, d in enumerate(got) if d.body == "urgent"), None)
                after = []
                for _ in range(20):
                    s = time.perf_counter()
                    more = t.receive("q", max_messages=10, wait_s=0, visibility_s=30)
                    after.append(time.perf_counter() - s)
                    t.ack_batch(more)
                rows.append(f"| {name} | {backlog:,} | {'first' if where == 0 else where} | "
                            f"{statistics.median(empty) * 1e3:.2f} ms | {full * 1e3:.2f} ms | "
                            f"{statistics.median(after) * 1e3:.2f} ms |")
                print(rows[-1], flush=True)
            finally:
                b.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--snoozes", type=int, default=200)
    ap.add_argument("--backlog", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    configure_logging(level="error")
    lines = [f"A snooze's cost: one job snoozed {args.snoozes} times, then completed; calls per snooze cycle "
             "(its receive included) and time per cycle (the clock moved, no waiting)", "",
             "| backend | queue calls | store calls | SQS API calls | time per snooze | calls |",
             "|---|---|---|---|---|---|", *snooze_rows(args.snoozes), "",
             f"Priorities: {args.backlog:,} messages of priority 0 queued, then one of priority 9; where it "
             "comes in the next receive of 10, and that receive's time beside one on a near-empty queue (both "
             "after a first receive: the first after a bulk load pays once for caches and heaps)", "",
             "| backend | backlog | priority 9 came | receive, near-empty queue | the receive that brought it "
             "(a first query of two priorities) | the next 20 receives, median |",
             "|---|---|---|---|---|---|", *priority_rows(args.backlog)]
    emit_table("\n".join(lines), args.out, append=args.append)


if __name__ == "__main__":
    main()
