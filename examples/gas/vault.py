"""Archives made before the switch-over: the web app's own archiver put results in a Glacier
vault (the Glacier API, not an S3 storage class), and the item's ``results_file_archive_id``
is that vault's archive id.

A vault archive is read in two steps, hours apart: an archive-retrieval job is started, and
once it has completed its output is fetched. The restore stage snoozes in between; the job's
id rides in the item (``restore_job_id``) so a later look asks about that job instead of
starting another. A look that finds no usable job (none yet, failed, or expired: Glacier keeps
a job's output 24 hours) starts one, after checking the vault's jobs for one already under way
for the archive (a crash between starting a job and recording it would otherwise start a
second retrieval, which Glacier bills).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.aws_common import DEFAULT_REGION, client, error_code


@dataclass(frozen=True)
class Retrieval:
    """Where a vault archive's retrieval stands: ``data`` once it is done, else the job's id
    and why it is not done yet."""

    job_id: str
    data: bytes | None = None
    waiting: str = ""


class LegacyVault:
    def __init__(self, name: str, *, region: str = DEFAULT_REGION, tier: str = "Expedited",
                 glacier_client: Any = None) -> None:
        self.name, self.tier = name, tier
        self.glacier = glacier_client or client("glacier", region=region)

    def retrieve(self, archive_id: str, job_id: str | None) -> Retrieval:
        job = self._job(job_id) if job_id else None
        if job is None or job.get("StatusCode") == "Failed":
            job = self._under_way(archive_id) or self._start(archive_id)
        jid = str(job["JobId"])
        if not job.get("Completed"):
            return Retrieval(jid, waiting=f"Glacier vault {self.name}: retrieval {jid[:16]}... of archive "
                                          f"{archive_id[:16]}... in progress ({job.get('Tier') or self.tier})")
        out = self.glacier.get_job_output(vaultName=self.name, accountId="-", jobId=jid)
        return Retrieval(jid, data=out["body"].read())

    def _job(self, job_id: str) -> dict[str, Any] | None:
        try:
            return dict(self.glacier.describe_job(vaultName=self.name, accountId="-", jobId=job_id))
        except Exception as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return None  # expired (or another vault's): start again
            raise

    def _under_way(self, archive_id: str) -> dict[str, Any] | None:
        kwargs: dict[str, Any] = {"vaultName": self.name, "accountId": "-"}
        while True:
            page = self.glacier.list_jobs(**kwargs)
            for job in page.get("JobList", []):
                if job.get("ArchiveId") == archive_id and job.get("StatusCode") in ("InProgress", "Succeeded"):
                    return dict(job)
            if not page.get("Marker"):
                return None
            kwargs["marker"] = page["Marker"]

    def _start(self, archive_id: str) -> dict[str, Any]:
        started = self.glacier.initiate_job(vaultName=self.name, accountId="-", jobParameters={
            "Type": "archive-retrieval", "ArchiveId": archive_id, "Tier": self.tier})
        return {"JobId": started["jobId"], "Completed": False, "Tier": self.tier}
