"""The default tiny policy as shipped with at2po: weights, tokenizer and the record of their build.

``at2po bootstrap`` with default settings installs this copy instead of training for an hour on a
CPU. The directory ``weights/<name>/`` holds a Hugging Face model directory (weights stored in
float16 to stay under 10 MB; they load as float32), its ``bootstrap.json`` (settings, seeds,
measured numbers, the command that rebuilt it) and ``SHA256SUMS``, checked before every install.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).parent / "weights"
CHECKSUMS_FILE = "SHA256SUMS"
_RECORD_FILE = "bootstrap.json"


def packaged_model(name: str = "tiny-search-v2", root: Path = WEIGHTS_DIR) -> Path | None:
    """The shipped directory of model ``name``, or None if this install has none."""
    directory = root / name
    return directory if (directory / _RECORD_FILE).is_file() else None


def packaged_settings(directory: Path) -> dict[str, Any]:
    """The bootstrap settings the shipped model was built with."""
    return json.loads((directory / _RECORD_FILE).read_text())["settings"]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: Path) -> None:
    """Write ``SHA256SUMS`` for every file of ``directory`` (``sha256sum -c`` reads it)."""
    lines = [
        f"{sha256_of(path)}  {path.name}\n"
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != CHECKSUMS_FILE
    ]
    (directory / CHECKSUMS_FILE).write_text("".join(lines))


def verify_checksums(directory: Path) -> None:
    """Raise ValueError naming the first file that is missing or differs from ``SHA256SUMS``."""
    listing = directory / CHECKSUMS_FILE
    if not listing.is_file():
        raise ValueError(f"{directory} has no {CHECKSUMS_FILE}; the packaged model is incomplete")
    for line in listing.read_text().splitlines():
        expected, name = line.split(maxsplit=1)
        path = directory / name
        if not path.is_file() or sha256_of(path) != expected:
            raise ValueError(
                f"the packaged model file {path} is missing or damaged (its SHA-256 differs from "
                f"{CHECKSUMS_FILE}); reinstall at2po, or rebuild the model with "
                "`at2po bootstrap --force`"
            )


def install_packaged(source: Path, target: Path) -> None:
    """Check ``source`` against its checksums, then copy its files into ``target``."""
    verify_checksums(source)
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and path.name != CHECKSUMS_FILE:
            shutil.copy2(path, target / path.name)
