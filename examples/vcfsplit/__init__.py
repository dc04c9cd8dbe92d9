"""Fan-out and fan-in: split a VCF per chromosome, annotate the parts in parallel, merge.

    split ──parts──▶ annotate_part (one message per chromosome, any number of workers) ──▶ merge

``split`` returns ``Result(parts=[...])``: one part per chromosome, each committed once by
``annotate_part``; ``merge`` is a join: it runs once per job, when every part has committed,
and reads the parts' results in order from ``ctx.parts``. Files live in the backend's object
store (``vcfsplit/<job>/...``). A part that cannot be annotated fails the job with its reason.

    from examples.vcfsplit import pipeline, submit_file
    submit_file(backend, "examples/gas/samples/premium_1.vcf", job_id="j1")
"""

from __future__ import annotations

from pathlib import Path

from examples.gas.annotator import MalformedVCF, annotate_lines, parse
from orchestrator import Context, Envelope, JobStatus, PermanentError, Pipeline, Result
from orchestrator.backends import Backend
from orchestrator.base import ObjectStore

pipeline = Pipeline("vcfsplit")


def chrom_order(chrom: str) -> tuple[int, str]:
    """1, 2, ... 22, then X, Y, MT and the rest by name."""
    name = chrom.upper().removeprefix("CHR")
    return (int(name), "") if name.isdigit() else (1000, name)


def _objects(ctx: Context) -> ObjectStore:
    if ctx.objects is None:
        raise PermanentError("this backend has no object store for the VCF files")
    return ctx.objects


def _lines(data: bytes, what: str) -> list[str]:
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise PermanentError(f"{what} is not UTF-8 text") from None


@pipeline.stage("split", source="vcf_in", emit_to="vcf_parts")
def split(ctx: Context, msg: Envelope) -> Result:
    objects, key = _objects(ctx), str(msg.payload["key"])
    try:
        meta, header, records = parse(_lines(objects.get(key), key))
        by_chrom: dict[str, list[str]] = {}
        for v in records:  # the file's own lines, grouped by chromosome
            cols = [v.chrom, str(v.pos), v.id, v.ref, ",".join(v.alts), v.rest[0], v.rest[1], v.info, *v.rest[2:]]
            by_chrom.setdefault(v.chrom, []).append("\t".join(cols))
    except MalformedVCF as exc:
        raise PermanentError(str(exc)) from None
    parts = []
    for i, chrom in enumerate(sorted(by_chrom, key=chrom_order)):
        part_key = f"vcfsplit/{msg.job_id}/part-{i}.vcf"
        objects.put(part_key, ("\n".join([*meta, header, *by_chrom[chrom]]) + "\n").encode())
        parts.append({"key": part_key, "chrom": chrom})
    return Result(status=JobStatus.RUNNING, fields={"chromosomes": len(parts)}, parts=parts)


@pipeline.stage("annotate_part", source="vcf_parts", max_receives=3)
def annotate_part(ctx: Context, msg: Envelope) -> Result:
    objects, key = _objects(ctx), str(msg.payload["key"])
    try:
        lines, counts = annotate_lines(_lines(objects.get(key), key))
    except MalformedVCF as exc:
        raise PermanentError(f"{msg.payload['chrom']}: {exc}") from None
    out_key = key.removesuffix(".vcf") + ".annot.vcf"
    objects.put(out_key, ("\n".join(lines) + "\n").encode())
    # the part's result, for the join
    return Result(fields={"key": out_key, "chrom": msg.payload["chrom"], "variants": counts.total})


@pipeline.join("merge", parts_of="annotate_part")
def merge(ctx: Context, msg: Envelope) -> Result:
    objects = _objects(ctx)
    out: list[str] = []
    for n, part in enumerate(ctx.parts):
        assert part is not None  # a failed part fails the job: the join never sees one
        lines = objects.get(str(part["key"])).decode().splitlines()
        body = [line for line in lines if not line.startswith("#")]
        out += ([line for line in lines if line.startswith("#")] if n == 0 else []) + body
    key = f"vcfsplit/{msg.job_id}/merged.annot.vcf"
    objects.put(key, ("\n".join(out) + "\n").encode())
    return Result(status=JobStatus.COMPLETED, fields={
        "result_key": key, "variants": sum(int(p["variants"]) for p in ctx.parts if p),
        "by_chromosome": {str(p["chrom"]): p["variants"] for p in ctx.parts if p}})


def submit_file(backend: Backend, path: str | Path, *, job_id: str) -> None:
    """Store a VCF in the backend's object store and submit a job to split it."""
    if backend.objects is None:
        raise PermanentError("this backend has no object store for the VCF files")
    key = f"vcfsplit/{job_id}/input.vcf"
    backend.objects.put(key, Path(path).read_bytes())
    pipeline.setup(backend)
    pipeline.submit(backend, job_id=job_id, payload={"key": key}, queue="vcf_in")
