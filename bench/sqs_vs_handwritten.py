"""The SQS path against a moto server: orchestrator vs hand-written boto3 loops.

    python bench/sqs_vs_handwritten.py [--jobs N]

Runs, against one moto server on 127.0.0.1 and at equal queue depth:
  1. orchestrator's no-op two-stage pipeline on aws:// (one worker thread per stage);
  2. a hand-written one-message-at-a-time loop per stage (receive 1 -> update item -> send ->
     delete), as a typical hand-rolled annotator does;
  3. a hand-written batched loop per stage (receive 10 -> update items -> send batch ->
     delete batch).
Prints msgs/s for each (two messages per job) and the ratios.
"""

from __future__ import annotations

import argparse
import os
import socket
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
from orchestrator.aws import aws_backend  # noqa: E402
from orchestrator.logging import configure_logging  # noqa: E402

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orchestrator_run(n: int, claim: str = "eager") -> float:
    prefix = f"o{uuid.uuid4().hex[:6]}-"
    backend = aws_backend(f"aws://?region={REGION}&prefix={prefix}")
    p = Pipeline("bench")
    p.stage("one", source="a", emit_to="b", wait_s=1, claim=claim)(
        lambda ctx, msg: Result(status=JobStatus.RUNNING, emit=[{}]))
    p.stage("two", source="b", wait_s=1, claim=claim)(lambda ctx, msg: Result(status=JobStatus.COMPLETED))
    p.setup(backend)
    for i in range(n):
        p.submit(backend, job_id=f"j{i}", payload={}, queue="a")
    workers = [Worker(p, s, backend) for s in ("one", "two")]
    start = time.perf_counter()
    for w in workers:
        w.start()
    while sum(w.stats["committed"] for w in workers) < 2 * n:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
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


def timed(n: int, loops: list[Callable[[threading.Event, list[int]], None]]) -> float:
    stop = threading.Event()
    counts = [0] * len(loops)
    threads = [threading.Thread(target=lambda f=f, i=i: f(stop, counts_ref(counts, i))) for i, f in enumerate(loops)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    while sum(counts) < 2 * n:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join()
    return 2 * n / elapsed


class counts_ref(list[int]):  # noqa: N801 - a tiny mutable view: counts[i] += k
    def __init__(self, counts: list[int], i: int) -> None:
        super().__init__()
        self.counts, self.i = counts, i

    def add(self, k: int) -> None:
        self.counts[self.i] += k


def one_at_a_time(n: int) -> float:
    sqs, table, qa, qb, _ = handwritten_setup(n)

    def stage(src: str, dst: str | None, status: str) -> Callable[[threading.Event, Any], None]:
        def loop(stop: threading.Event, count: Any) -> None:
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

    def stage(src: str, dst: str | None, status: str) -> Callable[[threading.Event, Any], None]:
        def loop(stop: threading.Event, count: Any) -> None:
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


def main() -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the moto server logs every request
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=150)
    args = ap.parse_args()
    configure_logging(level="error")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=REGION)
    try:
        print(f"moto server, {args.jobs} jobs x 2 stages = {2 * args.jobs} messages each run")
        single = one_at_a_time(args.jobs)
        print(f"hand-written, one message at a time  : {single:7.1f} msgs/s")
        batch = batched(args.jobs)
        print(f"hand-written, batched                : {batch:7.1f} msgs/s")
        for claim in ("eager", "lazy"):
            ours = orchestrator_run(args.jobs, claim)
            print(f"orchestrator (aws://, claim={claim:<5}) : {ours:7.1f} msgs/s   "
                  f"{ours / single:5.2f}x one-at-a-time, {ours / batch:5.2f}x batched")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
