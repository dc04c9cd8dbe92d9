"""The SQS path against a moto server: orchestrator vs hand-written boto3 loops.

    python bench/sqs_vs_handwritten.py [--jobs N] [--repeat K] [--rtt-ms MS] [--server process|thread]

Runs, against a moto server on 127.0.0.1 (its own process by default) and at equal queue depth:
  1. orchestrator's no-op two-stage pipeline on aws:// (one worker thread per stage);
  2. a hand-written one-message-at-a-time loop per stage (receive 1 -> update item -> send ->
     delete), as a typical hand-rolled annotator does;
  3. a hand-written batched loop per stage (receive 10 -> update items -> send batch ->
     delete batch).
Prints msgs/s for each (two messages per job) and the ratios, as the median of --repeat
interleaved rounds, each run on a fresh moto server so that every run starts from the same state.
Also printed per run: API requests per message and the server's CPU per message (read from
/proc when the server is its own process), which show where the time goes.

--rtt-ms adds a modelled network round trip to every request (a sleep before sending, which
releases the GIL as a socket wait does). 0, the default, is the raw moto server, where the
server's CPU is the bottleneck; a few ms is closer to real SQS and DynamoDB in-region.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import boto3  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from orchestrator import JobStatus, Pipeline, Result, Worker  # noqa: E402
from orchestrator.backends.aws import aws_backend  # noqa: E402
from orchestrator.logging import configure_logging  # noqa: E402

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orchestrator_run(n: int, claim: str = "deferred") -> float:
    prefix = f"o{uuid.uuid4().hex[:6]}-"
    backend = aws_backend(f"aws://?region={REGION}&prefix={prefix}")
    p = Pipeline("bench")
    p.stage("one", source="a", emit_to="b", wait_s=1, begin=claim)(
        lambda ctx, msg: Result(status=JobStatus.RUNNING, emit=[{}]))
    p.stage("two", source="b", wait_s=1, begin=claim)(lambda ctx, msg: Result(status=JobStatus.COMPLETED))
    p.setup(backend)
    for i in range(n):
        p.submit(backend, job_id=f"j{i}", payload={}, queue="a")
    workers = [Worker(p, s, backend) for s in ("one", "two")]
    METER.start()
    start = time.perf_counter()
    for w in workers:
        w.start()
    while sum(w.stats["committed"] for w in workers) < 2 * n:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    METER.stop()
    for w in workers:
        w.stop()
    return 2 * n / elapsed


def handwritten_setup(n: int) -> tuple[Any, Any, str, str, Any]:
    sqs = boto3.client("sqs", region_name=REGION)
    ddb = boto3.resource("dynamodb", region_name=REGION)
    tag = uuid.uuid4().hex[:6]
    qa = sqs.create_queue(QueueName=f"h{tag}-a")["QueueUrl"]
    qb = sqs.create_queue(QueueName=f"h{tag}-b")["QueueUrl"]
    table = ddb.create_table(TableName=f"h{tag}-jobs", KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
                             AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}],
                             BillingMode="PAY_PER_REQUEST")
    for i in range(n):
        table.put_item(Item={"job_id": f"j{i}", "job_status": "PENDING"})
    for start in range(0, n, 10):
        sqs.send_message_batch(QueueUrl=qa, Entries=[{"Id": str(i), "MessageBody": f"j{i}"}
                                                     for i in range(start, min(n, start + 10))])
    return sqs, table, qa, qb, ddb


class Count:
    """Messages one loop has finished; each loop has its own, so no lock is needed."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> None:
        self.n += k


def timed(n: int, loops: list[Callable[[threading.Event, Count], None]]) -> float:
    stop = threading.Event()
    counts = [Count() for _ in loops]
    threads = [threading.Thread(target=f, args=(stop, c)) for f, c in zip(loops, counts, strict=True)]
    METER.start()
    start = time.perf_counter()
    for t in threads:
        t.start()
    while sum(c.n for c in counts) < 2 * n:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    METER.stop()
    stop.set()
    for t in threads:
        t.join()
    return 2 * n / elapsed


def one_at_a_time(n: int) -> float:
    sqs, table, qa, qb, _ = handwritten_setup(n)

    def stage(src: str, dst: str | None, status: str) -> Callable[[threading.Event, Count], None]:
        def loop(stop: threading.Event, count: Count) -> None:
            while not stop.is_set():
                msgs = sqs.receive_message(QueueUrl=src, MaxNumberOfMessages=1, WaitTimeSeconds=1).get("Messages", [])
                for m in msgs:
                    table.update_item(Key={"job_id": m["Body"]}, UpdateExpression="SET job_status = :s",
                                      ExpressionAttributeValues={":s": status})
                    if dst:
                        sqs.send_message(QueueUrl=dst, MessageBody=m["Body"])
                    sqs.delete_message(QueueUrl=src, ReceiptHandle=m["ReceiptHandle"])
                    count.add(1)
        return loop

    return timed(n, [stage(qa, qb, "RUNNING"), stage(qb, None, "COMPLETED")])


def batched(n: int) -> float:
    sqs, table, qa, qb, _ = handwritten_setup(n)

    def stage(src: str, dst: str | None, status: str) -> Callable[[threading.Event, Count], None]:
        def loop(stop: threading.Event, count: Count) -> None:
            while not stop.is_set():
                msgs = sqs.receive_message(QueueUrl=src, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
                if not msgs:
                    continue
                for m in msgs:
                    table.update_item(Key={"job_id": m["Body"]}, UpdateExpression="SET job_status = :s",
                                      ExpressionAttributeValues={":s": status})
                if dst:
                    sqs.send_message_batch(QueueUrl=dst, Entries=[{"Id": str(i), "MessageBody": m["Body"]}
                                                                  for i, m in enumerate(msgs)])
                sqs.delete_message_batch(QueueUrl=src, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                                                for i, m in enumerate(msgs)])
                count.add(len(msgs))
        return loop

    return timed(n, [stage(qa, qb, "RUNNING"), stage(qb, None, "COMPLETED")])


class Meter:
    """API requests made by this process, and the server process's CPU, over a timed window."""

    def __init__(self) -> None:
        self.requests = 0
        self.server_pid: int | None = None
        self._lock = threading.Lock()
        self._counting = False
        self._cpu0 = 0.0
        self.window_requests = 0
        self.window_cpu_s = 0.0

    def install(self, rtt_s: float) -> None:
        import botocore.httpsession

        send = botocore.httpsession.URLLib3Session.send

        def counted_send(session: Any, request: Any) -> Any:
            if self._counting:
                with self._lock:
                    self.requests += 1
            if rtt_s:
                time.sleep(rtt_s)
            return send(session, request)

        botocore.httpsession.URLLib3Session.send = counted_send  # type: ignore[method-assign,assignment]

    def _server_cpu(self) -> float:
        if self.server_pid is None:
            return 0.0
        fields = Path(f"/proc/{self.server_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def start(self) -> None:
        self.requests, self._counting, self._cpu0 = 0, True, self._server_cpu()

    def stop(self) -> None:
        self._counting = False
        self.window_requests, self.window_cpu_s = self.requests, self._server_cpu() - self._cpu0


METER = Meter()


def run_on_fresh_server(kind: str, run: Callable[[], float]) -> tuple[float, int, float]:
    port = free_port()
    server = start_server(kind, port)
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    METER.server_pid = server.proc.pid if isinstance(server, _ProcessServer) else None
    try:
        rate = run()
    finally:
        server.stop()
    return rate, METER.window_requests, METER.window_cpu_s


def main() -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the moto server logs every request
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=150)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument("--rtt-ms", type=float, default=0.0, help="modelled network round trip per request")
    ap.add_argument("--server", choices=("process", "thread"), default="process",
                    help="moto server in its own process (like a remote AWS) or a thread of this one")
    ap.add_argument("--out", type=Path, default=None, help="append the table as markdown here")
    args = ap.parse_args()
    configure_logging(level="error")
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=REGION)
    METER.install(args.rtt_ms / 1000)
    n = args.jobs
    runs: dict[str, Callable[[], float]] = {
        "hand-written, one message at a time": lambda: one_at_a_time(n),
        "hand-written, batched": lambda: batched(n),
        "orchestrator (aws://, default: begin=deferred)": lambda: orchestrator_run(n, "deferred"),
        "orchestrator (aws://, begin=eager)": lambda: orchestrator_run(n, "eager"),
        "orchestrator (aws://, begin=lazy)": lambda: orchestrator_run(n, "lazy"),
    }
    results: dict[str, list[tuple[float, int, float]]] = {name: [] for name in runs}
    print(f"moto server ({args.server}), {n} jobs x 2 stages = {2 * n} messages per run, "
          f"rtt {args.rtt_ms:g} ms, median of {args.repeat}")
    for _ in range(args.repeat):
        for name, run in runs.items():
            results[name].append(run_on_fresh_server(args.server, run))
    med = {name: statistics.median(r[0] for r in rs) for name, rs in results.items()}
    single, batch = med["hand-written, one message at a time"], med["hand-written, batched"]
    for name, rs in results.items():
        rates = sorted(r[0] for r in rs)
        reqs = statistics.median(r[1] for r in rs) / (2 * n)
        cpu = statistics.median(r[2] for r in rs) * 1000 / (2 * n)
        line = (f"{name:<36}: {med[name]:7.1f} msgs/s (runs {rates[0]:.1f}-{rates[-1]:.1f})  "
                f"{reqs:4.2f} req/msg")
        if args.server == "process":
            line += f"  server {cpu:5.1f} ms CPU/msg"
        if name.startswith("orchestrator"):
            line += f"  {med[name] / single:5.2f}x one-at-a-time, {med[name] / batch:5.2f}x batched"
        print(line)
    if args.out:
        lines = ["", f"SQS path: a moto server ({args.server}), {n} jobs x 2 stages, rtt {args.rtt_ms:g} ms, median of "
                 f"{args.repeat} interleaved rounds on fresh servers", "",
                 "| loop | msgs/s | requests/msg | ours ÷ one-at-a-time | ours ÷ batched |", "|---|---|---|---|---|"]
        for name, rs in results.items():
            reqs = statistics.median(r[1] for r in rs) / (2 * n)
            ours = name.startswith("orchestrator")
            lines.append(f"| {name} | {med[name]:.0f} | {reqs:.2f} | "
                         f"{f'{med[name] / single:.2f}x' if ours else ''} | {f'{med[name] / batch:.2f}x' if ours else ''} |")
        with args.out.open("a") as fh:
            fh.write("\n".join(lines) + "\n")


class _ProcessServer:
    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_server(kind: str, port: int) -> Any:
    """In its own process the server's CPU does not share this process's GIL, as with real AWS."""
    if kind == "process":
        return _ProcessServer(port)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    return server


if __name__ == "__main__":
    main()
