"""Whole-file checks of a Hugging Face model directory, run before transformers reads it.

transformers reports an empty ``model.safetensors`` or a truncated ``tokenizer.json`` with a
traceback from deep inside its loaders (a missing ``tokenizer.json`` even as a sentencepiece
problem). These checks name the first damaged file instead; the callers add the fix that suits
them (:mod:`at2po.train.policy` for a model directory, :mod:`at2po.train.checkpoint` for a
checkpoint). Reading a safetensors header is cheap: the tensors themselves are not loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"


class DamagedFile(Exception):
    """A file of a model directory that cannot be read whole.

    Attributes:
        path: the file.
        problem: what is wrong with it, worded to follow the file's name ("is missing", …).
    """

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path
        self.problem = problem


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; DamagedFile when it is missing or not readable JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedFile(path, "is missing") from None
    except (OSError, ValueError) as error:
        raise DamagedFile(path, f"is damaged (not readable JSON: {error})") from None


def check_model_files(directory: Path) -> None:
    """DamagedFile unless ``config.json`` is a JSON object and every safetensors weight file has
    a readable header that accounts for the whole file."""
    config = directory / CONFIG_FILE
    if not isinstance(read_json(config), dict):
        raise DamagedFile(config, "is not a JSON object, so the model is damaged")
    for weights in _weight_files(directory):
        try:
            with safe_open(weights, framework="pt") as reader:
                reader.keys()
        except (SafetensorError, OSError) as error:
            raise DamagedFile(weights, f"is damaged (empty or truncated: {error})") from None


def check_tokenizer_file(directory: Path) -> None:
    """DamagedFile unless ``tokenizer.json`` (the fast tokenizer every at2po model carries)
    exists and is JSON."""
    read_json(directory / TOKENIZER_FILE)


def _weight_files(directory: Path) -> list[Path]:
    """The safetensors files of the model: ``model.safetensors``, or the shards its index lists;
    none for a directory with only ``pytorch_model.bin`` (transformers reads that itself)."""
    single, index = directory / WEIGHTS_FILE, directory / WEIGHTS_INDEX_FILE
    if single.exists():
        return [single]
    if index.exists():
        listing = read_json(index)
        shards = listing.get("weight_map", {}) if isinstance(listing, dict) else {}
        return [directory / name for name in sorted(set(shards.values()))]
    if (directory / "pytorch_model.bin").exists():
        return []
    raise DamagedFile(single, "is missing, so the model has no weights")
