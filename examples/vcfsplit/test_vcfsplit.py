"""The split / annotate parts / merge example: the merged file is the whole file's annotation."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.gas.annotator import annotate_lines
from examples.gas.samples import samples_dir
from examples.vcfsplit import pipeline, submit_file
from orchestrator import JobStatus, Worker
from orchestrator.backends import sqlite_backend


@pytest.mark.parametrize("sample", ["premium_1.vcf", "test.vcf"])
def test_a_vcf_split_per_chromosome_and_merged_equals_its_whole_annotation(tmp_path: Path, sample: str) -> None:
    backend = sqlite_backend(tmp_path / "v.db")
    try:
        submit_file(backend, samples_dir() / sample, job_id="j1")
        for stage, n in (("split", 1), ("annotate_part", 3), ("merge", 1)):  # one stage after the other
            Worker(pipeline, stage, backend, concurrency=n, wait_s=0.05).run(until_idle=True)
        job = backend.store.get("j1")
        assert job is not None and job.status == JobStatus.COMPLETED
        chromosomes = job.fields["chromosomes"]
        assert all(job.commits(f"annotate_part#{i}") == 1 for i in range(chromosomes)) and job.commits("merge") == 1
        assert backend.objects is not None
        merged = backend.objects.get(job.fields["result_key"]).decode().splitlines()
        whole, counts = annotate_lines((samples_dir() / sample).read_text().splitlines())
        assert job.fields["variants"] == counts.total
        assert [x for x in merged if x.startswith("#")] == [x for x in whole if x.startswith("#")]
        assert sorted(x for x in merged if not x.startswith("#")) == sorted(x for x in whole if not x.startswith("#"))
    finally:
        backend.close()
