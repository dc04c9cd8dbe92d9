from __future__ import annotations

from orchestrator.errors import InvalidKey


def validate_key(key: str) -> str:
    """Refuse keys that could escape the store's root or confuse a filesystem."""
    if not key or "\x00" in key:
        raise InvalidKey(f"invalid object key {key!r}: empty or contains NUL")
    if key.startswith("/") or key.startswith("\\") or (len(key) > 1 and key[1] == ":"):
        raise InvalidKey(f"invalid object key {key!r}: absolute paths are not keys")
    parts = key.replace("\\", "/").split("/")
    if any(part in ("..", ".") for part in parts):
        raise InvalidKey(f"invalid object key {key!r}: '.' and '..' segments are not allowed")
    # "x/" and "x" (and "a//b" and "a/b") would name one file on disk and two objects on S3
    if any(part == "" for part in parts):
        raise InvalidKey(f"invalid object key {key!r}: empty path segments (a trailing or doubled '/') are not allowed")
    return key
