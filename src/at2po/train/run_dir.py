"""The run directory and the metric sinks that write into it.

    <run>/config.yaml          the resolved config
    <run>/metrics.jsonl        one JSON object per step: {"step", "time" (unix seconds), metrics…}
    <run>/tensorboard/         TensorBoard events (``train.tensorboard``)
    <run>/wandb/               Weights & Biases files (``train.wandb``; offline by default)
    <run>/trees/step_000010.json   the step's turn trees (``train.log_trees_every``)
    <run>/checkpoints/step_000010/ checkpoints (:mod:`at2po.train.checkpoint`)

Resuming from the checkpoint of step s drops every metrics line after s (those steps run again)
and tells TensorBoard to purge its events after s, so each step is logged exactly once. A last
metrics line cut short by a kill is dropped too (:meth:`RunDir.keep_metrics_through` returns it);
``config.yaml`` and the kept metrics are replaced atomically, so a kill never leaves them half
written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from at2po.rollout.rollouts import PromptGroup
from at2po.train.config import ConfigError, TrainConfig
from at2po.train.tree_record import tree_record


class MetricSink(Protocol):
    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


class RunDir:
    """Paths of one run's directory (module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "config.yaml"
        self.metrics = root / "metrics.jsonl"
        self.trees = root / "trees"
        self.checkpoints = root / "checkpoints"
        self.tensorboard = root / "tensorboard"

    def holds_run(self) -> bool:
        return self.metrics.is_file() or self.checkpoints.is_dir()

    def check(self, resume: bool) -> None:
        """Refuse a path that cannot hold a run, a run that would be written over unless resuming
        it, and a resume of a directory that holds no run."""
        self._check_writable()
        if self.holds_run() and not resume:
            raise ConfigError(
                f"{self.root} already holds a run; pass --resume to continue it, or --out DIR "
                "(out_dir=DIR) for a new run"
            )
        if resume and not self.holds_run():
            raise ConfigError(
                f"--resume: {self.root} holds no run (no metrics.jsonl, no checkpoints/); check "
                "--out (the run's directory), or drop --resume to start a new run"
            )

    def _check_writable(self) -> None:
        """The run directory is a directory, or can be created as one."""
        fix = "pass --out DIR (out_dir=DIR) naming a directory in a writable place"
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"out_dir {self.root} is a file, not a directory; {fix}")
        existing = next(p for p in (self.root, *self.root.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError(f"out_dir {self.root} cannot be created: {existing} is a file; {fix}")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(
                f"out_dir {self.root} cannot be created: {existing} is not writable; {fix}"
            )

    def write_config(self, text: str) -> None:
        """``config.yaml``, replaced atomically."""
        _replace_text(self.config, text)

    def keep_metrics_through(self, step: int) -> str | None:
        """Drop the metrics lines after ``step`` (atomically); returns the torn last line dropped
        with them, if the file ended in one."""
        records, torn = _parse_metrics(self.metrics)
        kept = [r for r in records if r["step"] <= step]
        if kept != records or torn is not None:
            _replace_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))
        return torn

    def write_trees(
        self, step: int, groups: Sequence[PromptGroup], tokenizer: Any, cfg: TrainConfig
    ) -> Path:
        """The step's trees as JSON, turns decoded (:mod:`at2po.train.tree_record`)."""
        self.trees.mkdir(parents=True, exist_ok=True)
        path = self.trees / f"step_{step:06d}.json"
        record = tree_record(step, groups, tokenizer, cfg)
        path.write_text(json.dumps(record), encoding="utf-8")
        return path


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, in order, without a torn last line (a run killed
    while writing it)."""
    return _parse_metrics(path)[0]


def _parse_metrics(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The records of ``path`` and its last line if that one is not JSON (torn by a kill); a bad
    line before the last is a ConfigError naming it."""
    if not path.is_file():
        return [], None
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                return records, line
            raise ConfigError(
                f"{path} line {number} is not JSON; delete or repair that line to read the run"
            ) from None
    return records, None


def _replace_text(path: Path, text: str) -> None:
    """Write ``text`` to a hidden file next to ``path``, then rename it over ``path``."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


class JsonlSink:
    """Appends one JSON line per step (on resume, after :meth:`RunDir.keep_metrics_through`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._file.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    """Scalars under their metric names; events after ``resume_step`` are purged on resume."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(log_dir=str(path), purge_step=purge)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """Weights & Biases, in the run directory, offline unless ``train.wandb_mode=online``."""

    def __init__(self, root: Path, cfg: TrainConfig, resume: bool) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "train.wandb=true needs Weights & Biases: pip install 'at2po[wandb]' (or set "
                "train.wandb=false)"
            ) from None
        self._run = wandb.init(
            project=cfg.train.wandb_project,
            name=cfg.name,
            id=_wandb_id(root),
            dir=str(root),
            mode=cfg.train.wandb_mode,
            config=cfg.model_dump(mode="json"),
            resume="allow" if resume else None,
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._run.log(dict(metrics), step=step)

    def close(self) -> None:
        self._run.finish()


def _wandb_id(root: Path) -> str:
    """A run id stored in the run directory, so a resumed run continues the same W&B run."""
    path = root / "wandb_id.txt"
    if not path.is_file():
        path.write_text(f"{root.name}-{time.time_ns():x}", encoding="utf-8")
    return path.read_text(encoding="utf-8").strip()


def open_sinks(run: RunDir, cfg: TrainConfig, resume_step: int | None) -> list[MetricSink]:
    """JSONL always, TensorBoard and W&B as configured; ``resume_step``: the step resumed from."""
    sinks: list[MetricSink] = [JsonlSink(run.metrics)]
    if cfg.train.tensorboard:
        sinks.append(TensorBoardSink(run.tensorboard, resume_step))
    if cfg.train.wandb:
        sinks.append(WandbSink(run.root, cfg, resume_step is not None))
    return sinks
