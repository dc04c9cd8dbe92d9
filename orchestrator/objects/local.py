"""Object store in a local directory. Writes are atomic (temp file + rename).

Symbolic links inside the root are refused, not followed: a link planted there (by a handler,
or anyone who can write the directory) must not let a key read, overwrite or delete a file
outside the root.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from orchestrator.base import ObjectStore
from orchestrator.errors import InvalidKey, ObjectNotFound
from orchestrator.objects.keys import validate_key


class LocalObjectStore:
    def __init__(self, root: str | Path) -> None:
        # Created by the first put, not here: opening a backend to read must not make directories.
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        path = self.root / validate_key(key)
        # Every component below the root must be a real directory or file, not a link.
        probe = self.root
        for part in path.relative_to(self.root).parts:
            probe = probe / part
            if probe.is_symlink():
                raise InvalidKey(f"object key {key!r}: {probe.relative_to(self.root)} is a symbolic link; refused")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)  # readers see the old file or the whole new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectNotFound(key) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def url(self, key: str, *, expires_s: int = 3600) -> str:
        return self._path(key).as_uri()

    def keys(self, prefix: str = "") -> list[str]:
        base = self.root
        return sorted(
            str(p.relative_to(base)) for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-") and str(p.relative_to(base)).startswith(prefix)
        )


_: type[ObjectStore] = LocalObjectStore
