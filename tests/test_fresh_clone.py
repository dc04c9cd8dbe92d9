"""A user's clone has nothing beside it: everything the demo and the tests read ships inside."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_copy_of_the_tracked_files_alone_finds_the_gas_samples_inside_itself(tmp_path: Path) -> None:
    # Given only what git tracks, copied into a directory with no ``shared/`` beside it
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    clone = tmp_path / "clone"
    for rel in tracked:
        if rel.startswith(("examples/", "orchestrator/")):
            dest = clone / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest)
    # When the samples are looked up there (with no override)
    code = "from examples.gas.samples import samples_dir; print(samples_dir())"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(clone)}
    out = subprocess.run([sys.executable, "-c", code], cwd=clone, env=env, capture_output=True, text=True)
    # Then they are found inside the copy, all five of them
    assert out.returncode == 0, out.stderr
    found = Path(out.stdout.strip())
    assert found.is_relative_to(clone)
    assert {p.name for p in found.glob("*.vcf")} == {"test.vcf", "free_1.vcf", "free_2.vcf", "premium_1.vcf",
                                                       "premium_3.vcf"}
    assert (found / "README.md").is_file()  # provenance and licence travel with the data


def test_no_project_file_reads_the_shared_directory_beside_the_checkout() -> None:
    beside = "sh" "ared"  # spelt in two pieces so that this file does not match its own search
    pattern = rf'\.\./{beside}|"{beside}"|/{beside}/'
    hits = subprocess.run(["git", "grep", "-n", "-E", pattern, "--", "*.py", "Makefile", ".ci"],
                          cwd=ROOT, capture_output=True, text=True).stdout
    assert hits == "", hits
