"""Checkpoints: everything a run needs to continue exactly, written atomically, the last k kept.

``<run>/checkpoints/step_000010/`` holds

    config.json, model.safetensors …   the policy as a Hugging Face directory (model + tokenizer),
                                        usable as ``model.path`` or by ``at2po eval --checkpoint``
    optimizer.pt                        AdamW and scheduler state, torch's CPU (and CUDA) RNG state
    trainer_state.json                  step, sampler position, token counters, the trainer's own
                                        ``random.Random`` and the global python / numpy RNG states,
                                        the eval metrics of this step
    config.yaml                         the run's resolved config

A checkpoint is written into a hidden temporary directory (``.step_000010-building-*``) next to its
final place and renamed there when complete, so a run killed mid-write leaves the previous
checkpoint intact; :func:`remove_leftovers` deletes what such a kill leaves behind.

A resume reads the newest checkpoint that loads whole (:func:`newest_usable_checkpoint`): each
file it reads is checked (weights by their safetensors header, the JSON files by parsing them,
``optimizer.pt`` by loading it); a damaged one is skipped with the reason, naming the file.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from at2po.models import integrity
from at2po.models.paths import staged_dir

_NAME = re.compile(r"^step_(\d{6,})$")
_LEFTOVER = re.compile(r"^\.step_\d{6,}-building-")
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
CONFIG_FILE = "config.yaml"
_STATE_KEYS = ("step", "generated_tokens", "seconds", "sampler", "rng", "global_rng")
_OPTIMIZER_KEYS = ("optimizer", "scheduler", "torch_rng", "cuda_rng")


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be resumed from; the message names the file and what is wrong."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint directory in ``directory``, oldest first (whole or not:
    :func:`load_checkpoint` tells)."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def newest_usable_checkpoint(
    directory: Path,
) -> tuple[Checkpoint | None, list[tuple[Path, str]]]:
    """The newest checkpoint in ``directory`` that loads whole (None if none does), and the path
    and reason of every newer one skipped as damaged, newest first."""
    damaged = []
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path), damaged
        except DamagedCheckpoint as error:
            damaged.append((path, str(error)))
    return None, damaged


def remove_leftovers(directory: Path) -> list[Path]:
    """Delete the hidden building directories of saves that were killed before they completed;
    returns their paths."""
    if not directory.is_dir():
        return []
    leftovers = sorted(p for p in directory.iterdir() if _LEFTOVER.match(p.name))
    for path in leftovers:
        shutil.rmtree(path)
    return leftovers


def global_rng_state() -> dict[str, Any]:
    """Python's and numpy's global RNG states as JSON values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": _jsonable(random.getstate()),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
    }


def set_global_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tupled(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def random_state(rng: random.Random) -> list:
    """A ``random.Random``'s state as JSON values."""
    return _jsonable(rng.getstate())


def set_random_state(rng: random.Random, state: list) -> None:
    rng.setstate(_tupled(state))


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple | list) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint's trainer state; the model is read from :attr:`path` separately."""

    path: Path
    state: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor]


def save_checkpoint(
    directory: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    config_yaml: str,
    keep_last: int,
) -> Path:
    """Write checkpoint ``step`` atomically (module docstring) and delete all but the newest
    ``keep_last`` checkpoints; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / checkpoint_name(step)
    with staged_dir(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            staging / OPTIMIZER_FILE,
        )
        (staging / CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
        (staging / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    for _, path in list_checkpoints(directory)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    return target


def load_checkpoint(path: Path) -> Checkpoint:
    """The trainer state of the checkpoint at ``path``, once every file a resume reads is known
    to be whole; raises DamagedCheckpoint naming the first file that is not."""
    _check_model_files(path)
    state = _read_state(path / STATE_FILE)
    blob = _read_optimizer(path / OPTIMIZER_FILE)
    return Checkpoint(
        path=path,
        state=state,
        optimizer=blob["optimizer"],
        scheduler=blob["scheduler"],
        torch_rng=blob["torch_rng"],
        cuda_rng=blob["cuda_rng"],
    )


def _check_model_files(path: Path) -> None:
    """Raise DamagedCheckpoint unless the policy saved in ``path`` is whole: its safetensors
    weights and every JSON file (config, tokenizer, …), by :mod:`at2po.models.integrity`."""
    try:
        integrity.check_model_files(path)
        integrity.check_tokenizer_file(path)
    except integrity.DamagedFile as damaged:
        raise DamagedCheckpoint(f"{damaged.path.name} {damaged.problem}") from None
    for file in sorted(path.glob("*.json")):
        _read_json(file)


def _read_json(file: Path) -> Any:
    """The JSON in ``file``, or DamagedCheckpoint naming it."""
    try:
        return integrity.read_json(file)
    except integrity.DamagedFile as damaged:
        raise DamagedCheckpoint(f"{file.name} {damaged.problem}") from None


def _read_state(file: Path) -> dict[str, Any]:
    """``trainer_state.json``, with every key a resume reads."""
    state = _read_json(file)
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise DamagedCheckpoint(f"{file.name} lacks {', '.join(missing)}")
    return state


def _read_optimizer(file: Path) -> dict[str, Any]:
    """``optimizer.pt``: optimizer, scheduler and torch RNG states."""
    if not file.is_file():
        raise DamagedCheckpoint(f"{file.name} is missing")
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        reason = str(error).split(". ")[0].splitlines()[0] if str(error) else "empty file"
        raise DamagedCheckpoint(f"{file.name} cannot be read ({reason})") from None
    missing = [k for k in _OPTIMIZER_KEYS if not isinstance(blob, dict) or k not in blob]
    if missing:
        raise DamagedCheckpoint(f"{file.name} lacks {', '.join(missing)}")
    return blob
