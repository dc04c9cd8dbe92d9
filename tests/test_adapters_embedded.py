"""The contract suite on the in-memory, SQLite and PostgreSQL adapters."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from contract import (
    BatchStoreContract,
    StatusStoreContract,
    TopicContract,
    TransportContract,
    UnitContract,
)
from pg import drop_schema, new_schema

from orchestrator.backends.postgres_db import PostgresDatabase
from orchestrator.backends.sqlite_db import SqliteDatabase
from orchestrator.base import Backend, StatusStore, Topic, Transport
from orchestrator.clock import SimClock
from orchestrator.stores.memory import MemoryStatusStore
from orchestrator.stores.postgres import PostgresStatusStore
from orchestrator.stores.sqlite import SqliteStatusStore
from orchestrator.transports.memory import MemoryTopic, MemoryTransport
from orchestrator.transports.postgres import PostgresTopic, PostgresTransport
from orchestrator.transports.sqlite import SqliteTopic, SqliteTransport


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def advance_clock(clock: SimClock) -> Callable[[float], None]:
    return clock.advance


class TestMemory(TransportContract, TopicContract, StatusStoreContract, BatchStoreContract, UnitContract):
    transactional = False

    @pytest.fixture
    def backend(self, transport: Transport, topic: Topic, store: StatusStore, clock: SimClock) -> Backend:
        return Backend(transport=transport, topic=topic, store=store, clock=clock)

    @pytest.fixture
    def transport(self, clock: SimClock) -> Transport:
        return MemoryTransport(clock=clock)

    @pytest.fixture
    def topic(self, transport: MemoryTransport) -> Topic:
        return MemoryTopic(transport)

    @pytest.fixture
    def store(self, clock: SimClock) -> StatusStore:
        return MemoryStatusStore(clock=clock)


class TestSqlite(TransportContract, TopicContract, StatusStoreContract, BatchStoreContract, UnitContract):
    transactional = True

    @pytest.fixture
    def backend(self, transport: Transport, topic: Topic, store: StatusStore, clock: SimClock,
                db: SqliteDatabase) -> Backend:
        return Backend(transport=transport, topic=topic, store=store, clock=clock, database=db)

    @pytest.fixture
    def db(self, tmp_path: Path) -> Iterator[SqliteDatabase]:
        db = SqliteDatabase(tmp_path / "t.db")
        yield db
        db.close()

    @pytest.fixture
    def transport(self, db: SqliteDatabase, clock: SimClock) -> Transport:
        return SqliteTransport(db, clock=clock)

    @pytest.fixture
    def topic(self, transport: SqliteTransport) -> Topic:
        return SqliteTopic(transport)

    @pytest.fixture
    def store(self, db: SqliteDatabase, clock: SimClock) -> StatusStore:
        return SqliteStatusStore(db, clock=clock)


class TestPostgres(TransportContract, TopicContract, StatusStoreContract, BatchStoreContract, UnitContract):
    transactional = True

    @pytest.fixture
    def backend(self, transport: Transport, topic: Topic, store: StatusStore, clock: SimClock,
                db: PostgresDatabase) -> Backend:
        return Backend(transport=transport, topic=topic, store=store, clock=clock, database=db)

    @pytest.fixture
    def db(self, pg_server: str) -> Iterator[PostgresDatabase]:
        schema = new_schema()
        db = PostgresDatabase(pg_server, schema=schema)
        yield db
        db.close()
        drop_schema(pg_server, schema)

    @pytest.fixture
    def transport(self, db: PostgresDatabase, clock: SimClock) -> Transport:
        return PostgresTransport(db, clock=clock)

    @pytest.fixture
    def topic(self, transport: PostgresTransport) -> Topic:
        return PostgresTopic(transport)

    @pytest.fixture
    def store(self, db: PostgresDatabase, clock: SimClock) -> StatusStore:
        return PostgresStatusStore(db, clock=clock)


def test_receipts_and_message_ids_drawn_in_forked_workers_differ() -> None:
    # Given a process that drew receipts, then forked workers (as `orchestrator worker --processes` does)
    import os

    from orchestrator.transports.common import new_receipt

    mine = {new_receipt() for _ in range(100)}
    read, write = os.pipe()
    pids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:  # a child draws its own
            os.write(write, " ".join(new_receipt() for _ in range(100)).encode() + b"\n")
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(write)
    with os.fdopen(read) as f:
        theirs = [line.split() for line in f.read().splitlines()]
    # Then no two draws anywhere are alike: a child does not repeat its parent's or a sibling's
    drawn = [r for batch in theirs for r in batch] + sorted(mine)
    assert len(theirs) == 4 and len(drawn) == 500 and len(set(drawn)) == 500
    assert all(len(r) == 32 and int(r, 16) >= 0 for r in drawn)
