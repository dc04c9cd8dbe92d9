"""The GAS annotator: every sample parses, records round-trip, bad files fail with a line number."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from examples.gas.annotator import (
    MalformedVCF,
    annotate_file,
    annotate_lines,
    classify,
    parse_info,
    ts_or_tv,
)
from examples.gas.mito import mt_genes
from examples.gas.samples import samples_dir

SAMPLES = samples_dir()
EXPECTED = {"test.vcf": 350, "free_1.vcf": 1141, "free_2.vcf": 2788, "premium_1.vcf": 3000, "premium_3.vcf": 3431}


@pytest.mark.parametrize(("name", "variants"), sorted(EXPECTED.items()))
def test_every_sample_file_parses_with_its_variant_count(name: str, variants: int, tmp_path: Path) -> None:
    annot, log, counts = annotate_file(SAMPLES / name, tmp_path)
    assert counts.total == variants
    body = [ln for ln in annot.read_text().splitlines() if not ln.startswith("#")]
    assert len(body) == variants
    assert all("VT=" in ln.split("\t")[7] for ln in body)
    text = log.read_text()
    assert f"total_variants: {variants}" in text and "ts_tv_ratio:" in text and "with_rsid_pct:" in text
    header = annot.read_text().splitlines()
    assert any(h.startswith("##INFO") and "VT" in h for h in header)
    if name == "premium_3.vcf":  # VCF 3.3 keeps its own header syntax
        assert '##INFO=VT,-1,String,"' in annot.read_text()


def test_known_variants_and_mitochondrial_genes_are_marked(tmp_path: Path) -> None:
    _, log, counts = annotate_file(SAMPLES / "free_2.vcf", tmp_path)
    assert counts.known > 0 and "with_rsid_pct: " in log.read_text()
    lines, _ = annotate_lines(["##fileformat=VCFv4.0", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO",
                               "MT\t3308\trs1\tT\tC\t.\t.\tAC=1;AN=2", "MT\t100\t.\tA\tAT\t.\t.\t."])
    assert "MTGENE=MT-ND1" in lines[-2] and "KNOWN" in lines[-2] and "GAS_AF=0.5" in lines[-2]
    assert "VT=INS" in lines[-1] and "MTGENE=MT-DLOOP" in lines[-1]


def test_allele_counts_come_from_genotypes_when_info_lacks_them() -> None:
    lines, _ = annotate_lines(["##fileformat=VCFv4.0", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tA\tB",
                               "1\t5\t.\tG\tA,T\t.\t.\t.\tGT\t0/1\t2|2"])
    assert "GAS_AC=1,2;GAS_AN=4;GAS_AF=0.25,0.5" in lines[-1]


def test_classification_rules() -> None:
    assert classify("A", "G") == "SNV" and ts_or_tv("A", "G") == "ts" and ts_or_tv("A", "C") == "tv"
    assert classify("AC", "GT") == "MNV"
    assert classify("A", "ATT") == "INS" and classify("ATT", "A") == "DEL"
    assert classify("AT", "GCC") == "COMPLEX" and classify("A", ".") == "NONE"
    assert mt_genes(8530) == ["MT-ATP8", "MT-ATP6"]


@pytest.mark.parametrize(
    ("lines", "line_no", "what"),
    [
        (["hello world"], 1, "not a VCF"),
        (["##fileformat=VCFv4.0", "#CHROM\tPOS"], 2, "8 fixed columns"),
        (["##fileformat=VCFv4.0", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO", "1\tx\t.\tA\tG\t.\t.\t."], 3, "POS"),
        (["##fileformat=VCFv4.0", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO", "1\t5\t.\tA\tG\t.\t.\t.",
          "1\t6\t.\tQ\tG\t.\t.\t."], 4, "REF"),
        (["##fileformat=VCFv4.0", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO", "1 5 . A G . . ."], 3, "columns"),
    ],
)
def test_a_malformed_vcf_names_the_line(lines: list[str], line_no: int, what: str) -> None:
    with pytest.raises(MalformedVCF) as err:
        annotate_lines(lines)
    assert err.value.line_no == line_no and what in str(err.value) and f"line {line_no}" in str(err.value)


bases = st.text(alphabet="ACGT", min_size=1, max_size=6)
records = st.lists(
    st.tuples(st.sampled_from(["1", "2", "X", "MT"]), st.integers(1, 16569), st.sampled_from([".", "rs123", "rs9"]),
              bases, st.lists(bases, min_size=1, max_size=3), st.integers(0, 50), st.integers(0, 50)),
    min_size=0, max_size=40,
)


@given(records)
def test_annotation_keeps_every_record_and_counts_add_up(recs: list[tuple]) -> None:  # type: ignore[type-arg]
    lines = ["##fileformat=VCFv4.1", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for chrom, pos, vid, ref, alts, ac, an in recs:
        lines.append(f"{chrom}\t{pos}\t{vid}\t{ref}\t{','.join(alts)}\t.\tPASS\tAC={','.join([str(ac)] * len(alts))};AN={an}")
    out, counts = annotate_lines(lines)
    body = [ln for ln in out if not ln.startswith("#")]
    assert len(body) == len(recs) == counts.total
    for src, dst in zip(lines[2:], body, strict=True):
        s, d = src.split("\t"), dst.split("\t")
        assert d[:7] == s[:7] and d[7].startswith(s[7] + ";")  # input columns and INFO kept
        info = parse_info(d[7])
        types = info["VT"].split(",")
        assert len(types) == len(s[4].split(","))
        assert ("KNOWN" in info) == s[2].startswith("rs")
    assert sum(counts.by_type.values()) == sum(len(r[4]) for r in recs)
    assert counts.transitions + counts.transversions == counts.by_type.get("SNV", 0)
    assert counts.known == sum(1 for r in recs if r[2].startswith("rs"))
