"""One object store seen as several: every key gets a prefix (a "bucket" inside a store)."""

from __future__ import annotations

from typing import BinaryIO

from orchestrator.base import ObjectStore
from orchestrator.objects.keys import validate_key


class PrefixedObjectStore:
    def __init__(self, inner: ObjectStore, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix.rstrip("/") + "/"

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    @property
    def presigns(self) -> bool:
        return bool(self.inner.presigns)

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(self._key(key), data)

    def put_file(self, key: str, source: BinaryIO) -> None:
        self.inner.put_file(self._key(key), source)

    def get(self, key: str) -> bytes:
        return self.inner.get(self._key(key))

    def exists(self, key: str) -> bool:
        return self.inner.exists(self._key(key))

    def delete(self, key: str) -> None:
        self.inner.delete(self._key(key))

    def url(self, key: str, *, expires_s: int = 3600) -> str:
        return self.inner.url(self._key(key), expires_s=expires_s)

    def keys(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (where the inner store can list)."""
        listing = getattr(self.inner, "keys", None)
        if listing is None:
            raise NotImplementedError(f"{type(self.inner).__name__} cannot list keys")
        return [k.removeprefix(self.prefix) for k in listing(self.prefix + prefix)]


_: type[ObjectStore] = PrefixedObjectStore
