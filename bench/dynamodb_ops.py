"""What one lazy commit costs a moto DynamoDB server, now and read-less.

    python bench/dynamodb_ops.py [--jobs N] [--out FILE]

A read-less lazy commit for DynamoDB was proposed: instead of reading the batch's records
(one BatchGetItem per receive) and writing each back with a conditional PutItem, write each
step with one conditional UpdateItem and read the record only when the condition fails
(``ReturnValuesOnConditionCheckFailure=ALL_OLD``). On the moto server the SQS benchmark runs
against, the server's CPU is the bottleneck, so what decides is its CPU per message for each
form. This prints it, on items as ``DynamoDBStatusStore`` writes them (a job after one
committed step): the server is its own process and its CPU is read from /proc.

Rows, each per message:
  - now: a conditional PutItem of the whole item plus a tenth of a BatchGetItem of 10;
  - read-less, smallest sound form: SET status and the step's own attribute, ADD version,
    conditional on the step attribute's absence and on the status it moves from (no history
    entry, no fields: a lower bound of what the real update would send);
  - read-less, full form: also the history entry (list_append), the fields and updated_at;
  - each read-less form with ReturnValues=ALL_NEW (what a caller needing the record pays);
  - for scale, the unconditional one-attribute UpdateItem the hand-written loops send.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import boto3  # noqa: E402
from sqs_vs_handwritten import REGION, _ProcessServer, free_port  # noqa: E402

from orchestrator import records  # noqa: E402
from orchestrator.status import JobStatus, OutMessage  # noqa: E402
from orchestrator.stores.dynamodb import DynamoDBStatusStore  # noqa: E402

BATCH = 10


def server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=300, help="operations per row")
    ap.add_argument("--out", type=Path, default=None, help="append the table as markdown here")
    args = ap.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=REGION)
    port = free_port()
    server = _ProcessServer(port)
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    try:
        rows = measure(server.proc.pid, args.jobs)
    finally:
        server.stop()
    now = rows["conditional PutItem"] + rows["BatchGetItem of 10"] / BATCH
    lines = ["", f"DynamoDB on a moto server (process): server CPU per operation, {args.jobs} operations per row", "",
             "| operation | server ms CPU | per message |", "|---|---|---|"]
    for name, ms in rows.items():
        per = ms / BATCH if name.startswith("BatchGetItem") else ms
        lines.append(f"| {name} | {ms:.2f} | {per:.2f} |")
    lines.append(f"| **now: PutItem + 1/{BATCH} BatchGetItem** |  | **{now:.2f}** |")
    for name in ("read-less UpdateItem, smallest form", "read-less UpdateItem, full form"):
        lines.append(f"| **{name}** |  | **{rows[name]:.2f}** ({rows[name] / now:.2f}x now) |")
    print("\n".join(lines))
    if args.out:
        with args.out.open("a") as fh:
            fh.write("\n".join(lines) + "\n")


def measure(pid: int, n: int) -> dict[str, float]:
    ddb = boto3.resource("dynamodb", region_name=REGION)
    store = DynamoDBStatusStore("bench-jobs", dynamodb_resource=ddb)
    client = ddb.meta.client
    ids = [f"j{i}" for i in range(n)]
    for job_id in ids:  # a job as stage two finds it: created, stage one committed
        store.create(job_id, fields={"input_file_name": "x.vcf"})
        records.commit_step(store, job_id, stage="one", message_id=f"m-{job_id}", claim=None, status=JobStatus.RUNNING,
                          fields={}, outbox=[OutMessage(kind="queue", target="b", id=f"o-{job_id}",
                                                        body=json.dumps({"v": 1, "id": "a" * 32, "job_id": job_id,
                                                                        "task": "two"}))])
    items = {job_id: store._item(doc) for job_id, doc in store.get_docs(ids).items()}
    out: dict[str, float] = {}

    def timed(name: str, op: Callable[[int], Any], count: int) -> None:
        cpu0 = server_cpu(pid)
        for i in range(count):
            op(i)
        out[name] = (server_cpu(pid) - cpu0) * 1000 / count

    def put(i: int) -> None:
        item = dict(items[ids[i]], orc_version=items[ids[i]]["orc_version"] + 1)
        client.put_item(TableName="bench-jobs", Item=item, ConditionExpression="#v = :v",
                        ExpressionAttributeNames={"#v": "orc_version"},
                        ExpressionAttributeValues={":v": items[ids[i]]["orc_version"]})
        items[ids[i]] = item

    def batch_get(i: int) -> None:
        keys = [{"job_id": ids[(i * BATCH + k) % n]} for k in range(BATCH)]
        client.batch_get_item(RequestItems={"bench-jobs": {"Keys": keys, "ConsistentRead": True}})

    step = json.dumps({"stage": "two", "message_id": "m" * 32, "state": "committed", "started_at": 2.0,
                       "finished_at": 2.0})
    history = json.dumps({"at": 2.0, "event": "commit", "stage": "two", "message_id": "m" * 32,
                          "from_status": "RUNNING", "to_status": "COMPLETED"})

    def update(full: bool, returns: str) -> Callable[[int], None]:
        def op(i: int) -> None:
            names = {"#s": "job_status", "#p": f"orc_step_two_{returns}_{full}", "#v": "orc_version"}
            values: dict[str, Any] = {":s": "COMPLETED", ":p": step, ":one": 1, ":f": "RUNNING"}
            expr = "SET #s = :s, #p = :p"
            if full:
                names.update({"#h": "orc_history_tail", "#u": "orc_updated_at", "#out": "output_file"})
                values.update({":h": [history], ":e": [], ":u": 2, ":out": "x.annot.vcf"})
                expr += ", #h = list_append(if_not_exists(#h, :e), :h), #u = :u, #out = :out"
            client.update_item(TableName="bench-jobs", Key={"job_id": ids[i]}, UpdateExpression=expr + " ADD #v :one",
                               ConditionExpression="attribute_not_exists(#p) AND #s = :f",
                               ExpressionAttributeNames=names, ExpressionAttributeValues=values,
                               ReturnValues=returns)
        return op

    def handwritten(i: int) -> None:
        client.update_item(TableName="bench-jobs", Key={"job_id": ids[i]}, UpdateExpression="SET job_status = :s",
                           ExpressionAttributeValues={":s": "RUNNING"})

    timed("hand-written loop's UpdateItem (SET job_status), for scale", handwritten, n)
    timed("conditional PutItem", put, n)
    timed("BatchGetItem of 10", batch_get, max(1, n // BATCH))
    for label, full in (("smallest form", False), ("full form", True)):
        for returns in ("NONE", "ALL_NEW"):
            client_reset(client, ids)
            name = f"read-less UpdateItem, {label}" + (", ALL_NEW" if returns == "ALL_NEW" else "")
            timed(name, update(full, returns), n)
    return out


def client_reset(client: Any, ids: list[str]) -> None:
    """Every job back to RUNNING, untimed, so each conditional update succeeds."""
    for job_id in ids:
        client.update_item(TableName="bench-jobs", Key={"job_id": job_id}, UpdateExpression="SET #s = :f",
                           ExpressionAttributeNames={"#s": "job_status"}, ExpressionAttributeValues={":f": "RUNNING"})


if __name__ == "__main__":
    main()
