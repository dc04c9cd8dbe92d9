"""Who is premium, and their email: where a deployment keeps its users.

GAS web apps write neither ``user_tier`` nor ``user_email`` into the job item: they keep users
in their own database (often PostgreSQL), a DynamoDB table, or behind an API. ``GAS_ACCOUNTS``
picks the source:

- ``item`` (default): the job item's ``user_tier`` / ``user_email`` (what ``python -m
  examples.gas submit`` writes);
- ``dynamodb:TABLE[?key=user_id&tier=role&email=email]``;
- ``sql:URL#QUERY``: ``postgresql://...`` or ``sqlite:///PATH``, a query with one parameter
  (``%s`` or ``?``: the user id) returning one row (tier, email);
- ``python:MODULE:FUNCTION``: ``FUNCTION(user_id, item) -> (tier, email)``.

A tier is "free" only when the source says so (a value containing "free", e.g. ``free_user``);
anything else, unknown included, is premium: we never archive what we cannot prove is free.
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

from orchestrator.errors import ConfigError


@dataclass(frozen=True)
class Account:
    tier: str  # "free" or "premium"
    email: str | None


def normalise_tier(raw: object) -> str:
    return "free" if isinstance(raw, str) and "free" in raw.lower() else "premium"


Lookup = Callable[[str, Mapping[str, Any]], tuple[object, object]]


class Accounts:
    def __init__(self, spec: str, lookup: Lookup) -> None:
        self.spec = spec
        self._lookup = lookup

    def get(self, user_id: str, item: Mapping[str, Any]) -> Account:
        tier, email = self._lookup(user_id, item)
        return Account(tier=normalise_tier(tier), email=str(email) if email else None)


def open_accounts(spec: str, *, region: str | None = None) -> Accounts:
    if spec == "item":
        return Accounts(spec, lambda _uid, item: (item.get("user_tier"), item.get("user_email")))
    kind, _, rest = spec.partition(":")
    if kind == "dynamodb" and rest:
        return Accounts(spec, _dynamodb(rest, region))
    if kind == "sql" and "#" in rest:
        url, _, query = rest.partition("#")
        return Accounts(spec, _sql(url, query))
    if kind == "python" and rest.count(":") == 1:
        module, _, name = rest.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"GAS_ACCOUNTS={spec!r}: {exc}") from exc
        return Accounts(spec, fn)
    raise ConfigError(f"GAS_ACCOUNTS={spec!r}: expected item, dynamodb:TABLE, sql:URL#QUERY or python:MODULE:FUNCTION")


def _dynamodb(rest: str, region: str | None) -> Lookup:
    from orchestrator.aws_common import DEFAULT_REGION, resource

    parsed = urlparse(f"x://{rest}")
    q = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    table = resource("dynamodb", region=region or DEFAULT_REGION).Table(parsed.netloc + parsed.path)
    key, tier_attr, email_attr = q.get("key", "user_id"), q.get("tier", "role"), q.get("email", "email")

    def lookup(user_id: str, _item: Mapping[str, Any]) -> tuple[object, object]:
        row = table.get_item(Key={key: user_id}).get("Item") or {}
        return row.get(tier_attr), row.get(email_attr)

    return lookup


def _sql(url: str, query: str) -> Lookup:
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]

        def lookup_sqlite(user_id: str, _item: Mapping[str, Any]) -> tuple[object, object]:
            with sqlite3.connect(path) as conn:
                row = conn.execute(query.replace("%s", "?"), (user_id,)).fetchone()
            return (row[0], row[1]) if row else (None, None)

        return lookup_sqlite
    if url.startswith(("postgresql://", "postgres://")):
        import psycopg

        def lookup_pg(user_id: str, _item: Mapping[str, Any]) -> tuple[object, object]:
            with psycopg.connect(url, autocommit=True) as conn:
                row = conn.execute(query.replace("?", "%s"), (user_id,)).fetchone()  # type: ignore[arg-type]
            return (row[0], row[1]) if row else (None, None)

        return lookup_pg
    raise ConfigError(f"GAS_ACCOUNTS sql source {url!r}: expected postgresql://... or sqlite:///PATH")
