"""What the SQL adapters need of a database: transactions that nest, and reads.

``SqliteDatabase`` (the embedded default) and ``PostgresDatabase`` implement it; the queue,
topic and status store in ``transports/sql.py`` and ``stores/sql.py`` are written once against
it. That SQL is written with ``?`` placeholders (``PostgresDatabase`` turns them into psycopg's)
and in the dialect both accept; ``stores/postgres.py`` adds PostgreSQL's own batch statements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...


class Conn(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Cursor: ...

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Any: ...


class Database(Protocol):
    #: for messages: "sqlite" or "postgresql"
    dialect: str

    def run(self, fn: Callable[[Any], T], *, begin: bool = True) -> T:
        """Run ``fn(conn)`` in one write transaction; a ``run`` inside a ``run`` on the same
        thread joins the outer one. ``fn`` may be re-run from scratch (lock waits, deadlocks,
        a lost connection), so it must not have effects outside the database."""
        ...

    def transaction(self) -> AbstractContextManager[Any]:
        """A write transaction as a ``with`` block (a backend's unit of work): committed when
        the block ends, rolled back when it raises; inside another on the same thread it joins
        it. Unlike ``run`` the block is not run again: a lost deadlock raises
        ``TransactionConflict`` (everything rolled back, safe to run again), a lost database
        ``BackendUnavailable``."""
        ...

    def read(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        """One statement's rows; inside a ``run`` it sees that transaction's writes."""
        ...

    def close(self) -> None: ...
