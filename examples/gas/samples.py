"""Where the GAS sample VCFs live: ``$GAS_SAMPLES_DIR``, else ``shared/gas-samples`` beside the
project's root (as on the developers' machines and CI), else inside it."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def samples_dir() -> Path:
    candidates = [Path(p) for p in [os.environ.get("GAS_SAMPLES_DIR")] if p]
    candidates += [ROOT.parent / "shared" / "gas-samples", ROOT / "shared" / "gas-samples"]
    for c in candidates:
        if (c / "test.vcf").is_file():
            return c
    raise FileNotFoundError("GAS sample files not found; set GAS_SAMPLES_DIR (looked in: "
                            + ", ".join(str(c) for c in candidates) + ")")
