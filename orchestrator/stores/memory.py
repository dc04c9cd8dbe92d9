"""In-memory status store: a dict under a lock. Real semantics, no persistence."""

from __future__ import annotations

import threading
from typing import Any

from orchestrator.base import StatusStore
from orchestrator.clock import Clock
from orchestrator.status import JobRecord, JobStatus, evolve
from orchestrator.stores.cas import CasStatusStore, VersionConflict


class MemoryStatusStore(CasStatusStore):
    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self._jobs: dict[str, JobRecord] = {}
        self._lock = threading.Lock()

    def _load(self, job_id: str) -> JobRecord | None:
        with self._lock:
            rec = self._jobs.get(job_id)
            # Records are never changed in place (rules evolve a copy); the copy of the
            # containers only keeps a caller's edits (a handler's ctx.job) out of the store.
            return evolve(rec) if rec is not None else None

    def _swap(self, record: JobRecord, expected_version: int, encoded: Any = None) -> None:
        with self._lock:
            current = self._jobs.get(record.job_id)
            if (current.version if current is not None else 0) != expected_version:
                raise VersionConflict(record.job_id)
            self._jobs[record.job_id] = evolve(record)

    def query(self, *, user_id: str | None = None, status: JobStatus | None = None) -> list[JobRecord]:
        with self._lock:
            recs = [evolve(r) for r in self._jobs.values()]
        return sorted(
            (r for r in recs if (user_id is None or r.user_id == user_id) and (status is None or r.status == status)),
            key=lambda r: (r.created_at, r.job_id),
        )


_: type[StatusStore] = MemoryStatusStore
