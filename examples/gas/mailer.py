"""Email: a local mailbox directory of .eml files on the embedded default."""

from __future__ import annotations

import os
import tempfile
from email.message import EmailMessage
from pathlib import Path

SENDER = "gas-notifications@example.org"


class LocalMailbox:
    """One ``<key>.eml`` file per email. The key makes sending idempotent: a redelivered
    notification finds its file and sends nothing."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def send(self, key: str, *, to: str, subject: str, body: str) -> bool:
        path = self.root / f"{key}.eml"
        if path.exists():
            return False
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = SENDER, to, subject
        msg["Message-ID"] = f"<{key}@gas.example.org>"
        msg.set_content(body)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(bytes(msg))
        try:
            os.link(tmp, path)  # atomic create-if-absent: two racing senders, one file
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def sent(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("*.eml"))
