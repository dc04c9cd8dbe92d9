"""``StatusStore`` on DynamoDB: one item per job, every write conditional.

The item keeps the job's fields as top-level attributes and its status in a configurable
attribute, so an existing table (GAS's ``<prefix>annotations``, keyed by ``job_id`` with the
status in ``job_status``) is adopted as it is. The framework's own bookkeeping lives in extra
``orc_*`` attributes; items written by other programs without them read as version 0.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from orchestrator.aws_common import (
    CONDITION_FAILED,
    DEFAULT_REGION,
    FORBIDDEN,
    RESOURCE_EXISTS,
    RESOURCE_MISSING,
    error_code,
    resource,
)
from orchestrator.base import StatusStore
from orchestrator.clock import Clock
from orchestrator.errors import RecordTooLarge, StoreError
from orchestrator.jobdoc import Doc, full, lean, to_record
from orchestrator.status import JobRecord, JobStatus
from orchestrator.stores.cas import CasStatusStore, Prepared, VersionConflict, holdable, latest, unholdable

BATCH_GET_MAX = 100
ACCESS_DENIED = FORBIDDEN
MAX_ITEM_BYTES = 400 * 1024  # DynamoDB's item limit, attribute names included
UNPROCESSED_RETRIES = 8
PARALLEL_WRITES = 10  # one receive batch at most
VERSION = "orc_version"  # its own attribute: every write is conditional on it
# Steps, history, timestamps and origin in one JSON attribute: DynamoDB's cost is the item's
# bytes either way, and one attribute instead of five makes every read and write of the item
# cheaper to (de)serialise. Items written before kept them apart; they are still read.
STATE = "orc_state"
STEPS, HISTORY, CREATED, UPDATED, ORIGIN = "orc_steps", "orc_history", "orc_created_at", "orc_updated_at", "orc_origin"
LEGACY = (STEPS, HISTORY, CREATED, UPDATED, ORIGIN)
USER_INDEX = "user_id_index"


def to_dynamo(value: Any) -> Any:
    """Floats become Decimals (boto3 refuses floats); containers are converted deeply."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: to_dynamo(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [to_dynamo(v) for v in value]
    return value


def item_bytes(value: Any) -> int:
    """An upper bound on DynamoDB's size of a (to_dynamo-converted) value: strings and binary by
    their bytes, numbers by their digits, containers with their names and a few bytes each."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, (int, Decimal)):
        return len(str(value)) + 1
    if isinstance(value, dict):
        return 3 + sum(len(str(k).encode()) + 1 + item_bytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return 3 + sum(1 + item_bytes(v) for v in value)
    return len(str(value).encode())


def from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: from_dynamo(v) for k, v in value.items()}
    if isinstance(value, (list, set)):
        return [from_dynamo(v) for v in value]
    return value


@dataclass(frozen=True)
class _Update:
    """An UpdateItem for one write: its expression, names and values, and the whole item
    as a put would write it (for the size check)."""

    expression: str
    names: dict[str, str]
    values: dict[str, Any]
    item: dict[str, Any]


class DynamoDBStatusStore(CasStatusStore):
    def __init__(
        self,
        table: str,
        *,
        key_attr: str = "job_id",
        status_attr: str = "job_status",
        region: str = DEFAULT_REGION,
        clock: Clock | None = None,
        dynamodb_resource: Any = None,
        create: bool = True,
        status_names: dict[str, str] | None = None,
    ) -> None:
        super().__init__(clock=clock)
        self.table_name = table
        self.key_attr = key_attr
        self.status_attr = status_attr
        # what an adopted table's readers call our statuses (e.g. FAILED -> ERROR), both ways
        self._status_out = {JobStatus(k).value: v for k, v in (status_names or {}).items()}
        self._status_in = {v: k for k, v in self._status_out.items()}
        self.region = region
        self.ddb = dynamodb_resource or resource("dynamodb", region=region)
        # Every call goes through the resource's low-level client: clients are thread-safe,
        # resources and Table objects are not, and a worker's threads share this store. The
        # resource's client still converts Python values (Decimal, dict) to DynamoDB's types.
        self.client = self.ddb.meta.client
        self._executor: ThreadPoolExecutor | None = None
        if create:
            self.ensure_table()

    def ensure_table(self) -> None:
        """Create the table (on-demand billing, GSI on user_id) unless it exists. Idempotent.
        An existing table is never asked to be created again, so a worker whose role may only
        use items (no CreateTable, perhaps no DescribeTable) starts fine."""
        try:
            self.client.describe_table(TableName=self.table_name)
            return
        except ClientError as exc:
            if error_code(exc) in ACCESS_DENIED:
                return  # may not look: take it as there; the first item call says clearly if not
            if error_code(exc) not in RESOURCE_MISSING:
                raise
        try:
            self.ddb.create_table(
                TableName=self.table_name,
                KeySchema=[{"AttributeName": self.key_attr, "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": self.key_attr, "AttributeType": "S"},
                                      {"AttributeName": "user_id", "AttributeType": "S"}],
                GlobalSecondaryIndexes=[{"IndexName": USER_INDEX,
                                         "KeySchema": [{"AttributeName": "user_id", "KeyType": "HASH"}],
                                         "Projection": {"ProjectionType": "ALL"}}],
                BillingMode="PAY_PER_REQUEST",
            )
            self.ddb.meta.client.get_waiter("table_exists").wait(TableName=self.table_name)
        except ClientError as exc:
            if error_code(exc) not in RESOURCE_EXISTS:
                raise

    # -- mapping ----------------------------------------------------------------------------
    def _from_item(self, item: dict[str, Any]) -> Doc:
        item = from_dynamo(item)
        own = {self.key_attr, "user_id", self.status_attr, VERSION, STATE, STEPS, HISTORY, CREATED, UPDATED, ORIGIN}
        if item.get(STATE):
            state = json.loads(item[STATE])
        else:  # written by an earlier version, or by another program (then all of it is absent)
            state = {"steps": json.loads(item[STEPS]) if item.get(STEPS) else {},
                     "history": json.loads(item[HISTORY]) if item.get(HISTORY) else [],
                     "created_at": item.get(CREATED, item.get("submit_time", 0)), "updated_at": item.get(UPDATED, 0),
                     "origin": json.loads(item[ORIGIN]) if item.get(ORIGIN) else None}
        status = item.get(self.status_attr, JobStatus.PENDING.value)
        return full({
            "job_id": str(item[self.key_attr]),
            "user_id": item.get("user_id"),
            # an unknown status (another program's) is refused here, as the typed record would
            "status": JobStatus(self._status_in.get(str(status), status)).value,
            "fields": {k: v for k, v in item.items() if k not in own},
            # steps and history are kept lean (jobdoc.lean): made whole again below
            "steps": state["steps"], "history": state["history"],
            "created_at": float(state.get("created_at") or 0),
            "updated_at": float(state.get("updated_at") or 0),
            "origin": state.get("origin") or None,
            "version": int(item.get(VERSION, 0)),
        })

    def _item(self, doc: Doc) -> dict[str, Any]:
        item: dict[str, Any] = {k: v for k, v in doc["fields"].items() if v is not None}
        kept = lean(doc)
        state: dict[str, Any] = {"steps": kept["steps"], "history": kept["history"],
                                 "created_at": doc["created_at"], "updated_at": doc["updated_at"]}
        if doc["origin"] is not None:
            state["origin"] = doc["origin"]
        item.update({self.key_attr: doc["job_id"], self.status_attr: self._status_out.get(doc["status"], doc["status"]),
                     VERSION: doc["version"],
                     STATE: json.dumps(state, separators=(",", ":"))})
        if doc["user_id"] is not None:
            item["user_id"] = doc["user_id"]
        return to_dynamo(item)  # type: ignore[no-any-return]

    # -- primitives -------------------------------------------------------------------------
    def _load(self, job_id: str) -> Doc | None:
        item = self.client.get_item(TableName=self.table_name, Key={self.key_attr: job_id},
                                    ConsistentRead=True).get("Item")
        return self._from_item(item) if item else None

    def _condition(self, expected_version: int) -> tuple[str, dict[str, str], dict[str, Any] | None]:
        if expected_version == 0:
            # first framework write to an item another program created (the GAS web app)
            return "attribute_exists(#k) AND attribute_not_exists(#v)", {"#k": self.key_attr, "#v": VERSION}, None
        # version_unchanged: nobody wrote since we read
        return "#v = :v", {"#v": VERSION}, {":v": expected_version}

    def _encode(self, record: Doc, previous: Doc | None = None) -> Any:
        """An update of what this write changes (None without ``previous``: a whole put).

        Only the store's own attributes and the fields the rule set or dropped are written
        (``SET``/``REMOVE``), so an attribute another program wrote to the item since we read
        it (a GAS web app's ``thaw_id``) survives, and so does a field we read and left alone."""
        if previous is None:
            return None
        item = self._item(record)
        own = {self.status_attr, VERSION, STATE, "user_id"}
        before, after = previous["fields"], record["fields"]
        changed = [k for k, v in after.items() if v is not None and (k not in before or before[k] != v)]
        dropped = [k for k in before if after.get(k) is None and k not in own and k != self.key_attr]
        dropped += LEGACY  # an item in the earlier layout moves to the current one
        sets = [k for k in item if k in own] + [k for k in changed if k not in own and k != self.key_attr]
        names = {f"#a{i}": k for i, k in enumerate(sets + dropped)}
        values = {f":a{i}": item[k] for i, k in enumerate(sets)}
        expr = "SET " + ", ".join(f"#a{i} = :a{i}" for i in range(len(sets)))
        if dropped:
            expr += " REMOVE " + ", ".join(f"#a{i}" for i in range(len(sets), len(sets) + len(dropped)))
        return _Update(expr, names, values, item)

    def _put(self, record: Doc, cond: str, names: dict[str, str], values: dict[str, Any] | None = None,
             update: _Update | None = None) -> None:
        item = update.item if update is not None else self._item(record)
        # Refused here, not by DynamoDB, so the step fails with the reason instead of every
        # redelivery repeating a write that cannot succeed.
        size = sum(len(k.encode()) + item_bytes(v) for k, v in item.items())
        if size > MAX_ITEM_BYTES:
            raise RecordTooLarge(record["job_id"], size, MAX_ITEM_BYTES)
        kwargs: dict[str, Any] = {"ConditionExpression": cond, "ExpressionAttributeNames": dict(names)}
        if values:
            kwargs["ExpressionAttributeValues"] = dict(values)
        try:
            if update is None:
                self.client.put_item(TableName=self.table_name, Item=item, **kwargs)
            else:
                kwargs["ExpressionAttributeNames"].update(update.names)
                kwargs["ExpressionAttributeValues"] = {**kwargs.get("ExpressionAttributeValues", {}), **update.values}
                self.client.update_item(TableName=self.table_name, Key={self.key_attr: record["job_id"]},
                                        UpdateExpression=update.expression, **kwargs)
        except ClientError as exc:
            code = error_code(exc)
            if code in CONDITION_FAILED:
                raise VersionConflict(record["job_id"]) from exc
            if code == "ValidationException" and "size" in str(exc).lower():
                raise RecordTooLarge(record["job_id"], max(size, MAX_ITEM_BYTES + 1), MAX_ITEM_BYTES) from exc
            raise

    def _insert(self, record: Doc) -> None:
        # job_absent: never overwrite an item another program created
        self._put(record, "attribute_not_exists(#k)", {"#k": self.key_attr})

    def _swap(self, record: Doc, expected_version: int, encoded: Any = None) -> None:
        self._put(record, *self._condition(expected_version), update=encoded)

    def get_docs(self, job_ids: Sequence[str]) -> dict[str, Doc]:
        ids = holdable(job_ids)
        out: dict[str, Doc] = {}
        for start in range(0, len(ids), BATCH_GET_MAX):
            request: dict[str, Any] | None = {self.table_name: {
                "Keys": [{self.key_attr: i} for i in ids[start:start + BATCH_GET_MAX]], "ConsistentRead": True}}
            for attempt in range(UNPROCESSED_RETRIES):
                resp = self.client.batch_get_item(RequestItems=request)
                for item in resp.get("Responses", {}).get(self.table_name, []):
                    doc = self._from_item(item)
                    out[doc["job_id"]] = doc
                request = resp.get("UnprocessedKeys") or None
                if not request:
                    break
                # a partial answer (throttling, 16 MB): ask again for the rest, backing off as AWS advises
                time.sleep(min(2.0, 0.05 * 2 ** attempt))
            else:
                raise StoreError(f"BatchGetItem still left keys unprocessed after {UNPROCESSED_RETRIES} tries")
        return out

    def _swap_many(self, prepared: Sequence[tuple[int, Prepared]]) -> dict[int, Doc | StoreError]:
        """The batch's conditional puts sent concurrently (one round trip of latency for the
        batch) rather than as TransactWriteItems: no all-or-nothing coupling between unrelated
        jobs, and half the write cost. A job whose condition fails is judged again on a fresh
        read by ``_write_many``."""
        if len(prepared) < 2:
            return super()._swap_many(prepared)

        def put(item: tuple[int, Prepared]) -> tuple[int, Doc | StoreError | None]:
            pos, pre = item
            try:
                self._swap(pre.record, pre.expected_version, pre.encoded)
                return pos, pre.record
            except VersionConflict:
                return pos, None
            except StoreError as exc:  # this job's own failure, not its batch-mates'
                return pos, exc

        return {pos: res for pos, res in self._pool().map(put, prepared) if res is not None}

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=PARALLEL_WRITES, thread_name_prefix="ddb-write")
        return self._executor

    def delete(self, job_id: str, *, version: int) -> bool:
        cond, names, values = self._condition(version)
        kwargs: dict[str, Any] = {"ConditionExpression": cond, "ExpressionAttributeNames": names}
        if values:
            kwargs["ExpressionAttributeValues"] = values
        try:
            self.client.delete_item(TableName=self.table_name, Key={self.key_attr: job_id}, **kwargs)
        except ClientError as exc:
            if error_code(exc) in CONDITION_FAILED:
                return False
            raise
        return True

    def query(self, *, user_id: str | None = None, status: JobStatus | None = None, since: float | None = None,
              limit: int | None = None) -> list[JobRecord]:
        """As the protocol says; without a user, a scan of the table (DynamoDB keeps no order
        by creation time across users), so ``limit`` saves the records' conversion, not the read."""
        from boto3.dynamodb.conditions import Attr, Key

        if unholdable(user_id) or (limit is not None and limit <= 0):
            return []
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {}
        if status is not None:
            status = JobStatus(status)  # (the name as text is taken too)
            kwargs["FilterExpression"] = Attr(self.status_attr).eq(self._status_out.get(status.value, status.value))
        if user_id is not None:
            kwargs.update(IndexName=USER_INDEX, KeyConditionExpression=Key("user_id").eq(user_id))
            call = self.client.query
        else:
            call = self.client.scan
        kwargs["TableName"] = self.table_name
        while True:
            resp = call(**kwargs)
            items += resp.get("Items", [])
            if "LastEvaluatedKey" not in resp:
                break
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        docs = sorted((d for d in map(self._from_item, items) if since is None or d["created_at"] >= since),
                      key=lambda d: (d["created_at"], d["job_id"]))
        return [to_record(d) for d in latest(docs, limit)]


_: type[StatusStore] = DynamoDBStatusStore
