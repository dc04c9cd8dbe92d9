"""What every benchmark script shares: package versions for the header, writing its table."""

from __future__ import annotations

from pathlib import Path


def versions(*packages: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in packages:
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} missing")
    return ", ".join(out)


def emit_table(table: str, out: Path | None, *, append: bool) -> None:
    """Print the markdown table, and write it to ``out`` (appended after a blank line)."""
    print(table)
    if out is not None:
        with out.open("a" if append else "w") as fh:
            fh.write(("\n" if append and not table.startswith("\n") else "") + table + "\n")
