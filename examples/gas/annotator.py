"""Our VCF annotator: classify variants, carry allele counts, mark known ones, add MT genes.

    python -m examples.gas.annotator INPUT.vcf OUTPUT_DIR

writes ``<name>.annot.vcf`` and ``<name>.vcf.count.log`` into OUTPUT_DIR. Exit status 2 with
one line on stderr for a malformed VCF (with its line number): the controller turns that into
a permanent failure.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from examples.gas.mito import MT_CHROMOSOMES, mt_genes

EXIT_MALFORMED = 2
TRANSITIONS = frozenset({("A", "G"), ("G", "A"), ("C", "T"), ("T", "C")})
BASES = re.compile(r"^[ACGTNacgtn]+$")
ALT_OK = re.compile(r"^([ACGTNacgtn]+|\*|\.|<[^>]+>|[ACGTNacgtn]*[\[\]].*)$")

NEW_INFO = (
    ("VT", ".", "String", "Variant type per ALT allele: SNV, MNV, INS, DEL, COMPLEX, NONE (added by GAS annotator)"),
    ("TSTV", ".", "String", "For SNVs: ts (transition) or tv (transversion) per ALT allele"),
    ("KNOWN", "0", "Flag", "Variant has a dbSNP rsID"),
    ("MTGENE", ".", "String", "rCRS mitochondrial gene(s) covering the position"),
    ("GAS_AC", ".", "Integer", "Allele count per ALT allele (from INFO AC or genotypes)"),
    ("GAS_AN", "1", "Integer", "Total number of called alleles (from INFO AN or genotypes)"),
    ("GAS_AF", ".", "Float", "Allele frequency per ALT allele, GAS_AC/GAS_AN"),
)


class MalformedVCF(ValueError):
    def __init__(self, line_no: int, message: str) -> None:
        super().__init__(f"malformed VCF at line {line_no}: {message}")
        self.line_no = line_no


@dataclass
class Variant:
    line_no: int
    chrom: str
    pos: int
    id: str
    ref: str
    alts: list[str]
    info: str
    rest: list[str]  # QUAL, FILTER and any FORMAT/sample columns, kept as they were

    @property
    def known(self) -> bool:
        return any(x.startswith("rs") for x in self.id.split(";"))


@dataclass
class Annotation:
    types: list[str]
    tstv: list[str]
    ac: list[int] | None
    an: int | None
    genes: list[str]

    @property
    def af(self) -> list[float] | None:
        if self.ac is None or not self.an:
            return None
        return [round(c / self.an, 6) for c in self.ac]


@dataclass
class Counts:
    total: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    by_chrom: Counter[str] = field(default_factory=Counter)
    transitions: int = 0
    transversions: int = 0
    known: int = 0

    @property
    def tstv_ratio(self) -> float | None:
        return round(self.transitions / self.transversions, 4) if self.transversions else None


def classify(ref: str, alt: str) -> str:
    ref, alt = ref.upper(), alt.upper()
    if alt in (".", "*") or alt.startswith("<") or "[" in alt or "]" in alt:
        return "NONE" if alt == "." else "COMPLEX"
    if len(ref) == len(alt):
        return "SNV" if len(ref) == 1 else "MNV"
    if len(alt) > len(ref) and alt.startswith(ref):
        return "INS"
    if len(ref) > len(alt) and ref.startswith(alt):
        return "DEL"
    return "COMPLEX"


def ts_or_tv(ref: str, alt: str) -> str:
    return "ts" if (ref.upper(), alt.upper()) in TRANSITIONS else "tv"


def parse_info(info: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if info in ("", "."):
        return out
    for item in info.split(";"):
        key, _, value = item.partition("=")
        out[key] = value
    return out


def parse(lines: Iterable[str]) -> tuple[list[str], str, Iterator[Variant]]:
    """Split a VCF into its meta lines, its header line and a lazy stream of variants.

    Accepts VCF 4.x and the 3.3 header syntax (``##INFO=DP,1,Integer,"..."``)."""
    it = iter(enumerate(lines, start=1))
    meta: list[str] = []
    header = ""
    for line_no, raw in it:
        line = raw.rstrip("\r\n")
        if line_no == 1 and not line.startswith("##fileformat=VCF"):
            raise MalformedVCF(1, "first line must be ##fileformat=VCFv..., this is not a VCF file")
        if line.startswith("##"):
            meta.append(line)
            continue
        if line.startswith("#CHROM"):
            cols = line.lstrip("#").split("\t")
            if cols[:8] != ["CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO"]:
                raise MalformedVCF(line_no, "header line must start with the 8 fixed columns, tab-separated")
            header = line
            break
        raise MalformedVCF(line_no, "expected a ## meta line or the #CHROM header line")
    if not header:
        raise MalformedVCF(len(meta) + 1, "missing #CHROM header line")
    n_cols = len(header.split("\t"))

    def records() -> Iterator[Variant]:
        for line_no, raw in it:
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < 8:
                raise MalformedVCF(line_no, f"expected at least 8 tab-separated columns, found {len(cols)}")
            if len(cols) > n_cols:
                raise MalformedVCF(line_no, f"{len(cols)} columns but the header declares {n_cols}")
            chrom, pos, vid, ref, alt = cols[:5]
            if not chrom:
                raise MalformedVCF(line_no, "empty CHROM")
            if not pos.isdigit() or int(pos) < 0:
                raise MalformedVCF(line_no, f"POS {pos!r} is not a non-negative integer")
            if not BASES.match(ref):
                raise MalformedVCF(line_no, f"REF {ref!r} is not a sequence of bases")
            alts = alt.split(",")
            for a in alts:
                if not ALT_OK.match(a):
                    raise MalformedVCF(line_no, f"ALT allele {a!r} is not valid")
            yield Variant(line_no, chrom, int(pos), vid, ref, alts, cols[7], [cols[5], cols[6], *cols[8:]])

    return meta, header, records()


def _genotype_counts(v: Variant) -> tuple[list[int], int] | None:
    if len(v.rest) < 4:  # QUAL, FILTER, FORMAT, at least one sample
        return None
    keys = v.rest[2].split(":")
    if "GT" not in keys:
        return None
    gi = keys.index("GT")
    ac = [0] * len(v.alts)
    an = 0
    for sample in v.rest[3:]:
        fields = sample.split(":")
        if gi >= len(fields):
            continue
        for allele in re.split(r"[/|]", fields[gi]):
            if allele in (".", ""):
                continue
            if not allele.isdigit():
                raise MalformedVCF(v.line_no, f"genotype {fields[gi]!r} is not valid")
            a = int(allele)
            if a > len(v.alts):
                raise MalformedVCF(v.line_no, f"genotype allele {a} but only {len(v.alts)} ALT alleles")
            an += 1
            if a > 0:
                ac[a - 1] += 1
    return ac, an


def annotate_variant(v: Variant) -> Annotation:
    types = [classify(v.ref, a) for a in v.alts]
    tstv = [ts_or_tv(v.ref, a) if t == "SNV" else "." for t, a in zip(types, v.alts, strict=True)]
    info = parse_info(v.info)
    ac: list[int] | None = None
    an: int | None = None
    try:
        if "AC" in info and "AN" in info:
            ac = [int(x) for x in info["AC"].split(",")]
            an = int(info["AN"])
    except ValueError as exc:
        raise MalformedVCF(v.line_no, f"AC/AN are not integers: {exc}") from exc
    if ac is None:
        counted = _genotype_counts(v)
        if counted is not None:
            ac, an = counted
    genes = mt_genes(v.pos) if v.chrom.upper() in MT_CHROMOSOMES else []
    return Annotation(types, tstv, ac, an, genes)


def info_with(v: Variant, a: Annotation) -> str:
    extra = [f"VT={','.join(a.types)}"]
    if any(t != "." for t in a.tstv):
        extra.append(f"TSTV={','.join(a.tstv)}")
    if v.known:
        extra.append("KNOWN")
    if a.genes:
        extra.append(f"MTGENE={','.join(a.genes)}")
    if a.ac is not None and a.an is not None:
        extra.append(f"GAS_AC={','.join(map(str, a.ac))}")
        extra.append(f"GAS_AN={a.an}")
        af = a.af
        if af is not None:
            extra.append(f"GAS_AF={','.join(f'{x:g}' for x in af)}")
    base = "" if v.info in ("", ".") else v.info + ";"
    return base + ";".join(extra)


def info_header(meta: list[str]) -> list[str]:
    v33 = any(m.startswith("##fileformat=VCFv3") for m in meta)
    if v33:  # VCF 3.3 syntax: ##INFO=ID,Number,Type,"Description"
        return [f'##INFO={i},{n if n != "." else -1},{t},"{d}"' for i, n, t, d in NEW_INFO]
    return [f'##INFO=<ID={i},Number={n},Type={t},Description="{d}">' for i, n, t, d in NEW_INFO]


def annotate_lines(lines: Iterable[str]) -> tuple[list[str], Counts]:
    meta, header, records = parse(lines)
    out = [*meta, *info_header(meta), header]
    counts = Counts()
    for v in records:
        a = annotate_variant(v)
        cols = [v.chrom, str(v.pos), v.id, v.ref, ",".join(v.alts), v.rest[0], v.rest[1], info_with(v, a), *v.rest[2:]]
        out.append("\t".join(cols))
        counts.total += 1
        counts.by_chrom[v.chrom] += 1
        for t, tv in zip(a.types, a.tstv, strict=True):
            counts.by_type[t] += 1
            counts.transitions += tv == "ts"
            counts.transversions += tv == "tv"
        counts.known += v.known
    return out, counts


def count_log(name: str, c: Counts) -> str:
    pct = 100.0 * c.known / c.total if c.total else 0.0
    lines = [
        f"file: {name}",
        f"total_variants: {c.total}",
        *(f"type_{t}: {n}" for t, n in sorted(c.by_type.items())),
        *(f"chrom_{ch}: {n}" for ch, n in sorted(c.by_chrom.items(), key=lambda kv: _chrom_key(kv[0]))),
        f"transitions: {c.transitions}",
        f"transversions: {c.transversions}",
        f"ts_tv_ratio: {c.tstv_ratio if c.tstv_ratio is not None else 'NA'}",
        f"with_rsid: {c.known}",
        f"with_rsid_pct: {pct:.2f}",
    ]
    return "\n".join(lines) + "\n"


def _chrom_key(ch: str) -> tuple[int, str]:
    s = ch.upper().removeprefix("CHR")
    return (int(s), "") if s.isdigit() else (1000, s)


def annotate_file(src: Path, out_dir: Path) -> tuple[Path, Path, Counts]:
    data = src.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = data.count(b"\n", 0, exc.start) + 1
        what = "this is not a VCF file (binary content)" if line_no == 1 else f"not UTF-8 text ({exc.reason})"
        raise MalformedVCF(line_no, what) from exc
    lines, counts = annotate_lines(text.splitlines())
    stem = src.name.removesuffix(".vcf")
    annot = out_dir / f"{stem}.annot.vcf"
    log = out_dir / f"{src.name}.count.log"
    annot.write_text("\n".join(lines) + "\n")
    log.write_text(count_log(src.name, counts))
    return annot, log, counts


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m examples.gas.annotator INPUT.vcf OUTPUT_DIR", file=sys.stderr)
        return 64
    try:
        annot, log, counts = annotate_file(Path(argv[0]), Path(argv[1]))
    except MalformedVCF as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_MALFORMED
    print(f"{annot.name} {log.name} {counts.total}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
