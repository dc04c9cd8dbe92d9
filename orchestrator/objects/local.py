"""Object store in a local directory. Writes are atomic (temp file + rename).

Symbolic links inside the root are refused, not followed: a link planted there (by a handler,
or anyone who can write the directory) must not let a key read, overwrite or delete a file
outside the root. The path is walked one component at a time through directory file
descriptors opened with ``O_NOFOLLOW``, so there is no window between checking a component
and using it: a link swapped in meanwhile is refused by the open itself. Directories are
created 0700 and files 0600: objects are the pipeline's, not the machine's.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from orchestrator.base import ObjectStore
from orchestrator.errors import InvalidKey, ObjectNotFound
from orchestrator.objects.keys import MAX_SEGMENT_BYTES, check_data, validate_key

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
#: bytes copied at a time by ``put_file``
CHUNK = 1024 * 1024


def _remove_empty_folder(dfd: int, name: str) -> None:
    """Remove the folder ``name`` if it holds only folders (those a delete left empty);
    ``OSError`` if it holds any object, and then nothing is removed that held one."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
    try:
        for entry in os.scandir(fd):
            if not entry.is_dir(follow_symlinks=False):
                raise OSError(errno.ENOTEMPTY, f"{name} holds objects")
            _remove_empty_folder(fd, entry.name)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dfd)


class NotAFolder(InvalidKey):
    """A key that is an object and a folder of objects at once, which a file system cannot hold."""


class LocalObjectStore:
    presigns = False  # file:// URLs: this machine only
    def __init__(self, root: str | Path) -> None:
        # Created by the first put, not here: opening a backend to read must not make directories.
        self.root = Path(root).resolve()

    # -- walking ------------------------------------------------------------------------------
    @contextmanager
    def _dir(self, key: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """An open descriptor of the directory holding ``key``'s file, and the file's name."""
        parts = validate_key(key).replace("\\", "/").split("/")
        if any(len(part.encode()) > MAX_SEGMENT_BYTES for part in parts):  # (S3 takes them; a disk does not)
            raise InvalidKey(f"invalid object key {key[:40]!r}...: a part of it is over the {MAX_SEGMENT_BYTES}-byte "
                             "limit of a file name")
        if create:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        try:
            for i, part in enumerate(parts[:-1]):
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise ObjectNotFound(key) from None
                    with suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=fd)
                    nxt = self._open_dir(key, parts, i, fd)
                except OSError as exc:
                    refusal = self._refusal(key, parts, i, exc, fd)
                    if not create and isinstance(refusal, NotAFolder):
                        raise ObjectNotFound(key) from None  # nothing can be stored under a file
                    raise refusal from None
                os.close(fd)
                fd = nxt
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def _open_dir(self, key: str, parts: list[str], i: int, fd: int) -> int:
        try:
            return os.open(parts[i], _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise self._refusal(key, parts, i, exc, fd) from None

    @staticmethod
    def _refusal(key: str, parts: list[str], i: int, exc: OSError, fd: int) -> Exception:
        where = "/".join(parts[: i + 1])
        try:  # O_DIRECTORY | O_NOFOLLOW on a link says ENOTDIR on Linux, ELOOP elsewhere
            link = stat.S_ISLNK(os.stat(parts[i], dir_fd=fd, follow_symlinks=False).st_mode)
        except OSError:
            link = False
        if link or exc.errno in (errno.ELOOP, errno.EMLINK):
            return InvalidKey(f"object key {key!r}: {where} is a symbolic link; refused")
        if exc.errno == errno.ENOTDIR:
            return NotAFolder(f"object key {key!r}: {where} is an object, so nothing can be stored under "
                              f"{where}/ (a key is an object or a folder of objects on a file system, not both)")
        return exc

    def _open_file(self, key: str, dfd: int, name: str, flags: int, mode: int = 0o600) -> int:
        try:
            return os.open(name, flags | _FILE_FLAGS, mode, dir_fd=dfd)
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):
                raise InvalidKey(f"object key {key!r}: {key} is a symbolic link; refused") from None
            if exc.errno == errno.EISDIR:
                raise ObjectNotFound(key) from exc
            raise

    # -- the store ------------------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        check_data(data)
        self.put_file(key, io.BytesIO(data))

    def put_file(self, key: str, source: BinaryIO) -> None:
        with self._dir(key, create=True) as (dfd, name):
            self._refuse_link(key, dfd, name)
            tmp = f".tmp-{uuid.uuid4().hex}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FILE_FLAGS, 0o600, dir_fd=dfd)
            try:
                with os.fdopen(fd, "wb") as fh:
                    shutil.copyfileobj(source, fh, CHUNK)
                # readers see the old file or the whole new one; a rename replaces a link
                # swapped in meanwhile, it never writes through it
                try:
                    os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except IsADirectoryError:
                    try:  # a folder whose objects were all deleted holds nothing: it gives way
                        _remove_empty_folder(dfd, name)
                    except OSError:
                        raise NotAFolder(f"object key {key!r}: objects are stored under {key}/, so it cannot "
                                         "be an object too (a key is an object or a folder of objects on a "
                                         "file system, not both)") from None
                    os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                with suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dfd)
                raise

    def get(self, key: str) -> bytes:
        with self._dir(key) as (dfd, name):
            fd = self._open_file(key, dfd, name, os.O_RDONLY)
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder of objects (or a device): no object
                os.close(fd)
                raise ObjectNotFound(key)
            with os.fdopen(fd, "rb") as fh:
                return fh.read()

    def exists(self, key: str) -> bool:
        try:
            with self._dir(key) as (dfd, name):
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except (ObjectNotFound, FileNotFoundError):
            return False
        return stat.S_ISREG(st.st_mode)

    def delete(self, key: str) -> None:
        with suppress(ObjectNotFound), self._dir(key) as (dfd, name):
            self._refuse_link(key, dfd, name)
            with suppress(FileNotFoundError, IsADirectoryError):  # (a folder of objects: no object)
                os.unlink(name, dir_fd=dfd)  # removes a link itself, never its target

    @staticmethod
    def _refuse_link(key: str, dfd: int, name: str) -> None:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise InvalidKey(f"object key {key!r}: {key} is a symbolic link; refused")

    def url(self, key: str, *, expires_s: int = 3600) -> str:
        return (self.root / validate_key(key)).as_uri()

    def keys(self, prefix: str = "") -> list[str]:
        out = []
        for dirpath, _dirs, files in os.walk(self.root, followlinks=False):
            for f in files:
                p = Path(dirpath) / f
                rel = str(p.relative_to(self.root))
                if not f.startswith(".tmp-") and rel.startswith(prefix) and not p.is_symlink():
                    out.append(rel)
        return sorted(out)


_: type[ObjectStore] = LocalObjectStore
