"""Where the PostgreSQL tests find a server, and a fresh schema per test.

``ORCHESTRATOR_TEST_POSTGRES_URL`` names the server (default: the local one, trust auth,
database ``test``). Without a reachable server the tests skip with the reason, except in CI
(``CI`` set), where they fail: CI's machine runs PostgreSQL, so a skip would hide a break.
"""

from __future__ import annotations

import os
import uuid

import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    url = os.environ.get("ORCHESTRATOR_TEST_POSTGRES_URL", DEFAULT_URL)
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        why = f"no PostgreSQL at {url} ({type(exc).__name__}: {exc}); set ORCHESTRATOR_TEST_POSTGRES_URL"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return url


def new_schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"
