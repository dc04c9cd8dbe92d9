"""``postgresql://``: queues, topics, jobs and objects in one PostgreSQL schema, for workers on
many machines (``postgres_db.py`` is its driver). psycopg is an optional dependency: it is
imported when a backend is opened, so the rest of the library works without it."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse

from orchestrator.base import Backend
from orchestrator.clock import Clock, DatabaseClock
from orchestrator.errors import ConfigError

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
        from orchestrator.backends.postgres_db import DEFAULT_POOL_SIZE, DEFAULT_SCHEMA, PostgresDatabase
        from orchestrator.objects.postgres import PostgresObjectStore
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
