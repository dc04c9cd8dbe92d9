"""Backend URLs to adapter bundles.

``sqlite:///PATH`` (the embedded default: queue, topic and status store in one file, objects
in ``PATH.objects/``), ``memory://`` (in-process only), ``postgresql://`` (queues, topics, jobs
and objects in one PostgreSQL schema, for workers on many machines). ``aws://`` comes with the
AWS adapters.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlparse

from orchestrator.base import Backend
from orchestrator.clock import Clock, DatabaseClock, SimClock, SystemClock
from orchestrator.errors import ConfigError

DEFAULT_BACKEND = "sqlite:///orchestrator.db"
# ``Backend`` is defined in ``base`` beside the protocols it bundles (so ``aws`` needs nothing
# from here); it is named here too, where backends are made
__all__ = ["DEFAULT_BACKEND", "Backend", "memory_backend", "open_backend", "postgres_backend", "sqlite_backend"]


def memory_backend(clock: Clock | None = None, *, objects_root: str | Path | None = None) -> Backend:
    from orchestrator.objects.local import LocalObjectStore
    from orchestrator.stores.memory import MemoryStatusStore
    from orchestrator.transports.memory import MemoryTopic, MemoryTransport

    clock = clock or SystemClock()
    transport = MemoryTransport(clock=clock)
    objects = LocalObjectStore(objects_root) if objects_root else None
    return Backend(transport=transport, topic=MemoryTopic(transport), store=MemoryStatusStore(clock=clock),
                   clock=clock, objects=objects, url="memory://")


def sqlite_backend(path: str | Path, *, clock: Clock | None = None, objects_root: str | Path | None = None,
                   create: bool = True) -> Backend:
    """The embedded default. ``create=False`` (reading commands) refuses a file that does not
    exist instead of making an empty database."""
    from orchestrator.objects.local import LocalObjectStore
    from orchestrator.sqlite_db import SqliteDatabase
    from orchestrator.stores.sqlite import SqliteStatusStore
    from orchestrator.transports.sqlite import SqliteTopic, SqliteTransport

    db = SqliteDatabase(path, create=create)
    # SQLite's clock is the OS's, read in C: every process agrees on it even where Python's
    # time is skewed or the wall clock is stepped (between resyncs)
    clock = clock or DatabaseClock(lambda: db.read("SELECT (julianday('now') - 2440587.5) * 86400.0")[0][0])
    transport = SqliteTransport(db, clock=clock)
    objects = LocalObjectStore(objects_root or f"{path}.objects")

    return Backend(transport=transport, topic=SqliteTopic(transport), store=SqliteStatusStore(db, clock=clock),
                   clock=clock, objects=objects, database=db, url=f"sqlite:///{path}")


#: options of a postgresql:// URL that are ours, not libpq's
POSTGRES_OPTIONS = ("schema", "pool_size")


def split_postgres_url(url: str) -> tuple[str, dict[str, str]]:
    """``postgresql://...?schema=NAME&pool_size=N&<libpq options>`` -> (libpq URI, our options)."""
    parsed = urlparse(url)
    ours: dict[str, str] = {}
    libpq: list[tuple[str, str]] = []
    for key, value in parse_qsl(parsed.query, keep_blank_values=True):
        if key in POSTGRES_OPTIONS:
            ours[key] = value
        else:
            libpq.append((key, value))
    base = url.split("?", 1)[0]  # not urlunparse: it turns postgresql:/// (all from PG*) into postgresql:/
    return (f"{base}?{urlencode(libpq)}" if libpq else base), ours


def postgres_backend(url: str, *, clock: Clock | None = None, create: bool = True, **_: Any) -> Backend:
    """``postgresql://user@host:port/db?schema=NAME``: libpq's URI, so its defaults and the
    ``PG*`` environment variables fill in what the URL leaves out (``postgresql:///db``)."""
    try:
        from orchestrator.objects.postgres import PostgresObjectStore
        from orchestrator.postgres_db import DEFAULT_POOL_SIZE, DEFAULT_SCHEMA, PostgresDatabase
        from orchestrator.stores.postgres import PostgresStatusStore
        from orchestrator.transports.postgres import PostgresTopic, PostgresTransport
    except ImportError as exc:
        raise ConfigError(f"backend postgresql://: psycopg is not installed ({exc}); "
                          "pip install 'orchestrator[postgres]'") from exc
    conninfo, ours = split_postgres_url(url)
    try:
        pool_size = int(ours.get("pool_size", DEFAULT_POOL_SIZE))
    except ValueError:
        raise ConfigError(f"backend URL: pool_size must be a whole number, got {ours['pool_size']!r}") from None
    db = PostgresDatabase(conninfo, schema=ours.get("schema", DEFAULT_SCHEMA), pool_size=max(1, pool_size),
                          create=create)
    # one time for every machine: the server's (a worker whose clock runs fast must not make
    # what it sends invisible to the others)
    clock = clock or DatabaseClock(lambda: db.read("SELECT extract(epoch from clock_timestamp())::float8")[0][0])
    transport = PostgresTransport(db, clock=clock)

    return Backend(transport=transport, topic=PostgresTopic(transport), store=PostgresStatusStore(db, clock=clock),
                   clock=clock, objects=PostgresObjectStore(db), database=db, url=url)


def open_backend(url: str | None = None, *, clock: Clock | None = None, create: bool = True,
                 **options: Any) -> Backend:
    """Open the backend a URL names. Raises ``ConfigError`` with a clear message.

    ``create=False``: read-only use (status, queues): a SQLite file or PostgreSQL schema that
    does not exist yet is an error, not created empty."""
    url = url or DEFAULT_BACKEND
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        # sqlite:///PATH: PATH is what follows the third slash (relative, or absolute with a
        # fourth slash, as SQLAlchemy reads it).
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise ConfigError(f"backend URL {url!r} names no database file (expected sqlite:///PATH)")
        return sqlite_backend(url[len("sqlite:///"):], clock=clock, create=create, **options)
    if parsed.scheme == "memory":
        return memory_backend(clock or (SimClock() if "sim" in parse_qs(parsed.query) else None), **options)
    if parsed.scheme in ("postgresql", "postgres"):
        return postgres_backend(url, clock=clock, create=create, **options)
    if parsed.scheme == "aws":
        try:
            aws = importlib.import_module("orchestrator.aws")
        except ImportError as exc:
            raise ConfigError(f"backend {url!r}: the AWS adapters are not available ({exc})") from exc
        backend: Backend = aws.aws_backend(url, clock=clock, create=create, **options)
        return backend
    raise ConfigError(f"unreadable backend URL {url!r}: expected sqlite:///PATH, memory://, "
                      "postgresql://[user@host:port]/db[?schema=NAME] or aws://?region=...")
