"""Objects in the PostgreSQL database (table ``objects``): every machine running a worker sees
the same files without a shared disk or S3."""

from __future__ import annotations

from typing import BinaryIO

from orchestrator.backends.postgres_db import PostgresDatabase
from orchestrator.base import ObjectStore
from orchestrator.errors import ObjectNotFound
from orchestrator.objects.keys import check_data, validate_key


class PostgresObjectStore:
    presigns = False
    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    def put(self, key: str, data: bytes) -> None:
        key = validate_key(key)
        check_data(data)
        self.db.run(lambda c: c.execute(
            "INSERT INTO objects(key, data) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET data=excluded.data",
            (key, data)) and None)

    def put_file(self, key: str, source: BinaryIO) -> None:
        self.put(key, source.read())  # one bytea value: the driver sends it whole

    def get(self, key: str) -> bytes:
        rows = self.db.read("SELECT data FROM objects WHERE key=?", (validate_key(key),))
        if not rows:
            raise ObjectNotFound(key)
        return bytes(rows[0][0])

    def exists(self, key: str) -> bool:
        return bool(self.db.read("SELECT 1 FROM objects WHERE key=?", (validate_key(key),)))

    def delete(self, key: str) -> None:
        key = validate_key(key)
        self.db.run(lambda c: c.execute("DELETE FROM objects WHERE key=?", (key,)) and None)

    def url(self, key: str, *, expires_s: int = 3600) -> str:
        """Not fetchable over HTTP: rows are read through this store (``get``)."""
        return f"postgresql-object:{self.db.schema}/{validate_key(key)}"

    def keys(self, prefix: str = "") -> list[str]:
        rows = self.db.read("SELECT key FROM objects WHERE key LIKE ? ESCAPE '!' ORDER BY key",
                            (prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%",))
        return [r[0] for r in rows]


_: type[ObjectStore] = PostgresObjectStore
