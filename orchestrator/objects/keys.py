from __future__ import annotations

from orchestrator.errors import InvalidKey


def validate_key(key: str) -> str:
    """Refuse keys that could escape the store's root or confuse a filesystem."""
    if not key or "\x00" in key:
        raise InvalidKey(f"invalid object key {key!r}: empty or contains NUL")
    if key.startswith("/") or key.startswith("\\") or (len(key) > 1 and key[1] == ":"):
        raise InvalidKey(f"invalid object key {key!r}: absolute paths are not keys")
    if any(part in ("..", ".") for part in key.replace("\\", "/").split("/")):
        raise InvalidKey(f"invalid object key {key!r}: '.' and '..' segments are not allowed")
    return key
