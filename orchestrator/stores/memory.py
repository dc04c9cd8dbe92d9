"""In-memory status store: a dict of job documents under a lock. Real semantics, no persistence."""

from __future__ import annotations

import threading
from typing import Any

from orchestrator.base import StatusStore
from orchestrator.clock import Clock
from orchestrator.jobdoc import Doc, to_record
from orchestrator.status import JobRecord, JobStatus
from orchestrator.stores.cas import CasStatusStore, VersionConflict, latest


class MemoryStatusStore(CasStatusStore):
    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self._jobs: dict[str, Doc] = {}
        self._lock = threading.Lock()

    # Documents are never changed in place (rules copy what they change) and callers get typed
    # records as copies (``to_record``), so the store keeps and hands out the documents
    # themselves: no copy per read or write.
    def _load(self, job_id: str) -> Doc | None:
        with self._lock:
            return self._jobs.get(job_id)

    def _swap(self, record: Doc, expected_version: int, encoded: Any = None) -> None:
        with self._lock:
            current = self._jobs.get(record["job_id"])
            if (current["version"] if current is not None else 0) != expected_version:
                raise VersionConflict(record["job_id"])
            self._jobs[record["job_id"]] = record

    def delete(self, job_id: str, *, version: int) -> bool:
        with self._lock:
            current = self._jobs.get(job_id)
            if current is None or current["version"] != version:
                return False
            del self._jobs[job_id]
            return True

    def query(self, *, user_id: str | None = None, status: JobStatus | None = None, since: float | None = None,
              limit: int | None = None) -> list[JobRecord]:
        status = None if status is None else JobStatus(status)  # (an unknown name: ValueError, as elsewhere)
        with self._lock:
            docs = list(self._jobs.values())
        found = sorted((d for d in docs if (user_id is None or d["user_id"] == user_id)
                        and (status is None or d["status"] == status)
                        and (since is None or d["created_at"] >= since)),
                       key=lambda d: (d["created_at"], d["job_id"]))
        return [to_record(d) for d in latest(found, limit)]


_: type[StatusStore] = MemoryStatusStore
