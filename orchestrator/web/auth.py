"""Who may use the dashboard: two roles, argon2 password hashes, sessions that sign-out ends.

Operators sign in with a password. Only its argon2 hash is kept, in
``ORCHESTRATOR_WEB_OPERATOR_HASH`` (may redrive, cancel, retry) and
``ORCHESTRATOR_WEB_VIEWER_HASH`` (read-only); ``orchestrator web passwd`` makes one. A session
is a random id in a cookie, looked up on the server: signing out deletes it, so a copied
cookie stops working at once (a signed cookie would stay valid until it expired).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

OPERATOR, VIEWER = "operator", "viewer"
ENV = {OPERATOR: "ORCHESTRATOR_WEB_OPERATOR_HASH", VIEWER: "ORCHESTRATOR_WEB_VIEWER_HASH"}
SESSION_TTL_S = 8 * 3600.0

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches the argon2 hash ``stored``. Without a hash a dummy one is
    checked, so an unknown name takes as long to refuse as a wrong password."""
    try:
        return bool(_hasher.verify(stored or _DUMMY, password)) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


_DUMMY = _hasher.hash(secrets.token_hex(16))


def hashes_from_env() -> dict[str, str]:
    return {role: os.environ[var] for role, var in ENV.items() if os.environ.get(var)}


def role_for(password: str, hashes: dict[str, str]) -> str | None:
    """The role whose hash ``password`` matches (operator first), or None."""
    for role in (OPERATOR, VIEWER):
        stored = hashes.get(role)
        if not stored:
            continue
        try:
            if _hasher.verify(stored, password):
                return role
        except (VerificationError, InvalidHashError):
            continue
    return None


@dataclass
class Session:
    role: str
    csrf: str
    expires: float


class Sessions:
    """Server-side sessions of one dashboard process."""

    def __init__(self, ttl_s: float = SESSION_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def start(self, role: str) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._by_id = {k: s for k, s in self._by_id.items() if s.expires > now}
            self._by_id[sid] = Session(role, secrets.token_urlsafe(24), now + self.ttl_s)
        return sid

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._by_id.get(sid)
            if s is None or s.expires <= time.monotonic():
                self._by_id.pop(sid, None)
                return None
            return s

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)
