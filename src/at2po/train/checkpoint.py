"""Checkpoints: everything a run needs to continue exactly, written atomically, the last k kept.

``<run>/checkpoints/step_000010/`` holds

    config.json, model.safetensors …   the policy as a Hugging Face directory (model + tokenizer),
                                        usable as ``model.path`` or by ``at2po eval --checkpoint``
    optimizer.pt                        AdamW and scheduler state, torch's CPU (and CUDA) RNG state
    trainer_state.json                  step, sampler position, token counters, the trainer's own
                                        ``random.Random`` and the global python / numpy RNG states,
                                        the eval metrics of this step
    config.yaml                         the run's resolved config

A checkpoint is written into a hidden temporary directory next to its final place and renamed
there when complete, so a run killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from at2po.models.paths import staged_dir

_NAME = re.compile(r"^step_(\d{6,})$")
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
CONFIG_FILE = "config.yaml"


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


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
    """The trainer state of the checkpoint at ``path``."""
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not a checkpoint (no {STATE_FILE}); pass a directory "
            "<run>/checkpoints/step_NNNNNN written by `at2po train`"
        )
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    blob = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    return Checkpoint(
        path=path,
        state=state,
        optimizer=blob["optimizer"],
        scheduler=blob["scheduler"],
        torch_rng=blob["torch_rng"],
        cuda_rng=blob["cuda_rng"],
    )
