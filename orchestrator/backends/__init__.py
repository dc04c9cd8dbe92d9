"""Backends, one module each, and the URLs that name them.

``sqlite:///PATH`` (``sqlite.py``, the embedded default: queue, topic and status store in one
file, objects in ``PATH.objects/``), ``memory://`` (``memory.py``, in-process only),
``postgresql://`` (``postgres.py``: queues, topics, jobs and objects in one PostgreSQL schema,
for workers on many machines), ``aws://`` (``aws.py``: SQS, SNS, DynamoDB and S3). The drivers
of the two databases are ``sqlite_db.py`` and ``postgres_db.py``.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import parse_qs, urlparse

from orchestrator.backends.memory import memory_backend
from orchestrator.backends.postgres import POSTGRES_OPTIONS, postgres_backend, split_postgres_url
from orchestrator.backends.sqlite import sqlite_backend
from orchestrator.base import Backend
from orchestrator.clock import Clock, SimClock
from orchestrator.errors import ConfigError

DEFAULT_BACKEND = "sqlite:///orchestrator.db"
# ``Backend`` is defined in ``base`` beside the protocols it bundles; it is named here too,
# where backends are made
__all__ = ["DEFAULT_BACKEND", "POSTGRES_OPTIONS", "Backend", "memory_backend", "open_backend", "postgres_backend",
           "split_postgres_url", "sqlite_backend"]


def open_backend(url: str | None = None, *, clock: Clock | None = None, create: bool = True,
                 **options: Any) -> Backend:
    """Open the backend a URL names. Raises ``ConfigError`` with a clear message.

    ``create=False``: read-only use (status, queues): a SQLite file or PostgreSQL schema that
    does not exist yet is an error, not created empty."""
    url = url or DEFAULT_BACKEND
    if "\x00" in url:  # no file, database or region name holds one; the drivers would cut it off or raise
        raise ConfigError(f"backend URL {url!r} contains a NUL character")
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
            aws = importlib.import_module("orchestrator.backends.aws")
        except ImportError as exc:
            raise ConfigError(f"backend {url!r}: the AWS adapters are not available ({exc})") from exc
        backend: Backend = aws.aws_backend(url, clock=clock, create=create, **options)
        return backend
    raise ConfigError(f"unreadable backend URL {url!r}: expected sqlite:///PATH, memory://, "
                      "postgresql://[user@host:port]/db[?schema=NAME] or aws://?region=...")
