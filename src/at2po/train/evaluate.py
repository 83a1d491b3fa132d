"""Held-out evaluation of a saved checkpoint (:func:`at2po.rollout.evaluate.evaluate` does the
rollouts and the metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from at2po.rollout.codec import Codec
from at2po.rollout.evaluate import evaluate
from at2po.train.checkpoint import CONFIG_FILE
from at2po.train.config import ConfigError, TrainConfig, load_config
from at2po.train.policy import build_engine, load_model, load_tokenizer, set_threads
from at2po.train.task import build_task


def evaluate_checkpoint(
    path: Path, split: str | None = None, overrides: Sequence[str] = ()
) -> tuple[TrainConfig, dict[str, float]]:
    """Held-out metrics of a saved checkpoint, with its run's config (plus ``overrides``).

    ``split`` (``dev``/``test``) replaces ``train.eval_split``; the first ``train.eval_size``
    questions are evaluated, as during training, and so are those of the novel-name split
    (``eval_novel/*``) where the task has one.
    """
    if not (path / CONFIG_FILE).is_file():
        raise ConfigError(
            f"{path} is not a checkpoint directory (no {CONFIG_FILE}); pass "
            "<run>/checkpoints/step_NNNNNN"
        )
    extra = [f"train.eval_split={split}"] if split is not None else []
    cfg = load_config(path / CONFIG_FILE, [*overrides, *extra])
    set_threads(cfg.model)
    task = build_task(cfg.task)
    sets = {
        "eval": task.split(cfg.train.eval_split)[: cfg.train.eval_size],
        "eval_novel": task.splits.get("novel", [])[: cfg.train.eval_size],
    }
    tokenizer = load_tokenizer(path)
    model = load_model(path, cfg.model, trainable=False)
    engine = build_engine(model, tokenizer, cfg.rollout)
    codec = Codec.from_tokenizer(tokenizer)
    metrics: dict[str, float] = {}
    for prefix, examples in sets.items():
        if examples:
            rollout_cfg = cfg.rollout.to_rollout_config()
            metrics |= evaluate(engine, codec, task.env, examples, rollout_cfg, prefix=prefix)
    return cfg, metrics
