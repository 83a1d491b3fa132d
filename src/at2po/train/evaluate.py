"""Held-out evaluation: one greedy chain per question, through the same rollout path as training.

Metrics (means over the questions): ``eval/em``, ``eval/f1``, ``eval/format_ok``,
``eval/answered``, ``eval/tool_calls``; the same EM and F1 per question type
(``eval/em/type/<metadata["type"]>``) and per dataset (``eval/em/source/<data_source>``); and
``eval/n`` (questions), ``eval/generated_tokens``, ``eval/turns``.

The engine's prefix cache is emptied first, so the numbers depend only on the weights, the
questions and the settings: a saved checkpoint evaluates to the numbers logged when it was saved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from at2po.rollout.codec import Codec
from at2po.rollout.config import RolloutConfig
from at2po.rollout.engine import SamplingParams
from at2po.rollout.hf_engine import HFEngine
from at2po.rollout.rollouts import rollout
from at2po.tasks.datasets import QAExample
from at2po.train.checkpoint import CONFIG_FILE
from at2po.train.config import ConfigError, TrainConfig, load_config
from at2po.train.policy import build_engine, load_model, load_tokenizer, set_threads
from at2po.train.task import build_task

SCORES = ("em", "f1", "format_ok", "answered", "tool_calls")
"""Leaf sub-scores averaged into ``eval/<name>``."""


def eval_rollout_config(cfg: RolloutConfig) -> RolloutConfig:
    """``cfg``'s budgets with one greedy chain per question."""
    return replace(cfg, mode="chain", n_rows=1, sampling=SamplingParams(greedy=True), seed=0)


def evaluate(
    engine: HFEngine,
    codec: Codec,
    env: Any,
    examples: Sequence[QAExample],
    cfg: RolloutConfig,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Greedy held-out metrics of the module docstring; ``on_progress(n_done)`` after each batch."""
    if not examples:
        raise ValueError("evaluate() needs at least one example")
    greedy = eval_rollout_config(cfg)
    engine.prefix_cache.clear()
    per_question: list[tuple[QAExample, dict[str, float]]] = []
    generated = turns = 0.0
    batch = engine.max_batch_size
    for start in range(0, len(examples), batch):
        out = rollout(engine, codec, env, examples[start : start + batch], greedy)
        generated += out.metrics["rollout/generated_tokens"]
        for group in out.groups:
            leaf = group.row_leaves[0]
            per_question.append((group.example, group.tree.nodes[leaf].scores))
            turns += group.tree.depth(leaf)
        if on_progress is not None:
            on_progress(len(per_question))
    metrics = {f"eval/{name}": _mean(s.get(name, 0.0) for _, s in per_question) for name in SCORES}
    for label, key_of in (
        ("type", lambda ex: str(ex.metadata.get("type", "unknown"))),
        ("source", lambda ex: ex.data_source),
    ):
        groups: dict[str, list[dict[str, float]]] = defaultdict(list)
        for example, scores in per_question:
            groups[key_of(example)].append(scores)
        for value, members in sorted(groups.items()):
            for name in ("em", "f1"):
                metrics[f"eval/{name}/{label}/{value}"] = _mean(s.get(name, 0.0) for s in members)
    metrics["eval/n"] = float(len(per_question))
    metrics["eval/generated_tokens"] = generated
    metrics["eval/turns"] = turns / len(per_question)
    return metrics


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def evaluate_checkpoint(
    path: Path, split: str | None = None, overrides: Sequence[str] = ()
) -> tuple[TrainConfig, dict[str, float]]:
    """Held-out metrics of a saved checkpoint, with its run's config (plus ``overrides``).

    ``split`` (``dev``/``test``) replaces ``train.eval_split``; the first ``train.eval_size``
    questions are evaluated, as during training.
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
    examples = task.split(cfg.train.eval_split)[: cfg.train.eval_size]
    tokenizer = load_tokenizer(path)
    model = load_model(path, cfg.model, trainable=False)
    engine = build_engine(model, tokenizer, cfg.rollout)
    metrics = evaluate(
        engine, Codec.from_tokenizer(tokenizer), task.env, examples, cfg.rollout.to_rollout_config()
    )
    return cfg, metrics
