"""The embedded default, ``sqlite:///PATH``: queues, topics and the job table in one SQLite
file (``sqlite_db.py`` is its driver), objects in ``PATH.objects/``."""

from __future__ import annotations

from pathlib import Path

from orchestrator.backends.sqlite_db import SqliteDatabase
from orchestrator.base import Backend
from orchestrator.clock import Clock, DatabaseClock
from orchestrator.objects.local import LocalObjectStore
from orchestrator.stores.sqlite import SqliteStatusStore
from orchestrator.transports.sqlite import SqliteTopic, SqliteTransport


def sqlite_backend(path: str | Path, *, clock: Clock | None = None, objects_root: str | Path | None = None,
                   create: bool = True) -> Backend:
    """The embedded default. ``create=False`` (reading commands) refuses a file that does not
    exist instead of making an empty database."""
    db = SqliteDatabase(path, create=create)
    # SQLite's clock is the OS's, read in C: every process agrees on it even where Python's
    # time is skewed or the wall clock is stepped (between resyncs)
    clock = clock or DatabaseClock(lambda: db.read("SELECT (julianday('now') - 2440587.5) * 86400.0")[0][0])
    transport = SqliteTransport(db, clock=clock)
    objects = LocalObjectStore(objects_root or f"{path}.objects")

    return Backend(transport=transport, topic=SqliteTopic(transport), store=SqliteStatusStore(db, clock=clock),
                   clock=clock, objects=objects, database=db, url=f"sqlite:///{path}")
