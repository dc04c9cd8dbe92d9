"""Email: a mailbox of .eml files, in a local directory (the embedded default) or in the
backend's object store (PostgreSQL: every machine sees one mailbox)."""

from __future__ import annotations

import os
import tempfile
from email.message import EmailMessage
from pathlib import Path

from orchestrator.objects.prefixed import PrefixedObjectStore

SENDER = "gas-notifications@example.org"


def _eml(key: str, *, to: str, subject: str, body: str, sender: str = SENDER) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = f"<{key}@gas.example.org>"
    msg.set_content(body)
    return bytes(msg)


class ObjectMailbox:
    """One ``<key>.eml`` object per email. Checked then written: two workers racing on one
    redelivered notification can both send (at least once, as with SES); the step record
    makes that race the only way."""

    def __init__(self, store: PrefixedObjectStore, *, sender: str = SENDER) -> None:
        self.store = store
        self.sender = sender

    def sent(self) -> list[str]:
        return [k for k in self.store.keys(prefix="") if k.endswith(".eml")]

    def send(self, key: str, *, to: str, subject: str, body: str) -> bool:
        if self.store.exists(f"{key}.eml"):
            return False
        self.store.put(f"{key}.eml", _eml(key, to=to, subject=subject, body=body, sender=self.sender))
        return True


class LocalMailbox:
    """One ``<key>.eml`` file per email. The key makes sending idempotent: a redelivered
    notification finds its file and sends nothing."""

    def __init__(self, root: Path, *, sender: str = SENDER) -> None:
        self.root = root
        self.sender = sender
        root.mkdir(parents=True, exist_ok=True)

    def send(self, key: str, *, to: str, subject: str, body: str) -> bool:
        path = self.root / f"{key}.eml"
        if path.exists():
            return False
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(_eml(key, to=to, subject=subject, body=body, sender=self.sender))
        try:
            os.link(tmp, path)  # atomic create-if-absent: two racing senders, one file
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def sent(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("*.eml"))
