"""Where the GAS sample VCFs live: ``examples/gas/samples/`` inside the project (shipped with it, so
a fresh clone runs the demo and the tests with nothing beside it), or ``$GAS_SAMPLES_DIR`` when set."""

from __future__ import annotations

import os
from pathlib import Path

BUNDLED = Path(__file__).resolve().parent / "samples"


def samples_dir() -> Path:
    """The directory holding ``test.vcf`` and the other samples; ``FileNotFoundError`` if absent."""
    override = os.environ.get("GAS_SAMPLES_DIR")
    found = Path(override) if override else BUNDLED
    if not (found / "test.vcf").is_file():
        raise FileNotFoundError(f"GAS sample files not found in {found} (GAS_SAMPLES_DIR overrides the bundled copy)")
    return found
