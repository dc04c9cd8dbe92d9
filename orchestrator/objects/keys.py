from __future__ import annotations

from orchestrator.errors import InvalidKey

#: the longest key, in bytes of UTF-8: S3's limit, so a key moves between stores unchanged
MAX_KEY_BYTES = 1024
#: the longest segment of a key a file system stores (a file or directory name, NAME_MAX)
MAX_SEGMENT_BYTES = 255


def validate_key(key: str) -> str:
    """Refuse keys that could escape the store's root or confuse a filesystem."""
    if not isinstance(key, str):
        raise InvalidKey(f"invalid object key {key!r}: a key is text, not {type(key).__name__}")
    if not key or "\x00" in key:
        raise InvalidKey(f"invalid object key {key!r}: empty or contains NUL")
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        raise InvalidKey(f"invalid object key {key!r}: not valid UTF-8 text") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(f"invalid object key {key[:40]!r}...: {size} bytes, over the {MAX_KEY_BYTES}-byte limit")
    if key.startswith("/") or key.startswith("\\") or (len(key) > 1 and key[1] == ":"):
        raise InvalidKey(f"invalid object key {key!r}: absolute paths are not keys")
    parts = key.replace("\\", "/").split("/")
    if any(part in ("..", ".") for part in parts):
        raise InvalidKey(f"invalid object key {key!r}: '.' and '..' segments are not allowed")
    # "x/" and "x" (and "a//b" and "a/b") would name one file on disk and two objects on S3
    if any(part == "" for part in parts):
        raise InvalidKey(f"invalid object key {key!r}: empty path segments (a trailing or doubled '/') are not allowed")
    return key


def check_data(data: object) -> None:
    """Object data is bytes: None would be stored as an empty object, text in one store's
    encoding and refused by another."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"object data must be bytes, got {type(data).__name__}")
