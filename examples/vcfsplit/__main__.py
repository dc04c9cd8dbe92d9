"""Demo: one VCF split per chromosome, the parts annotated by four worker threads, merged.

    python -m examples.vcfsplit [FILE.vcf] [--backend URL]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from examples.gas.samples import samples_dir
from examples.vcfsplit import pipeline, submit_file
from orchestrator import Worker
from orchestrator.backends import open_backend
from orchestrator.logging import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.vcfsplit", description=__doc__.splitlines()[0])
    parser.add_argument("vcf", nargs="?", default=str(samples_dir() / "premium_1.vcf"))
    parser.add_argument("--backend", help="backend URL (default: a fresh SQLite file)")
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    url = args.backend or f"sqlite:///{tempfile.mkdtemp(prefix='vcfsplit-')}/vcfsplit.db"
    backend = open_backend(url)
    job = f"split-{int(time.time())}"
    submit_file(backend, args.vcf, job_id=job)
    started = time.monotonic()
    chain = [st.source for st in pipeline.stages.values()]
    workers = [Worker(pipeline, "split", backend, idle_queues=chain),
               Worker(pipeline, "annotate_part", backend, concurrency=4, idle_queues=chain),
               Worker(pipeline, "merge", backend, idle_queues=chain)]
    for w in workers:
        w.start()
    for w in workers:
        w.run(until_idle=True)
    rec = backend.store.get(job)
    assert rec is not None
    print(f"{job}: {rec.status.value} in {time.monotonic() - started:.2f}s, {rec.fields.get('chromosomes')} parts, "
          f"{rec.fields.get('variants')} variants -> {rec.fields.get('result_key')}")
    for chrom, n in (rec.fields.get("by_chromosome") or {}).items():
        print(f"  {chrom:>4} {n}")
    backend.close()
    return 0 if rec.status.value == "COMPLETED" else 1


if __name__ == "__main__":
    raise SystemExit(main())
