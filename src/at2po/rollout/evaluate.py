"""Held-out evaluation: one greedy chain per question, through the same rollout path as training.

Metrics (means over the questions; ``prefix`` is ``eval`` unless given): ``<prefix>/em``,
``<prefix>/f1``, ``<prefix>/format_ok``, ``<prefix>/answered``, ``<prefix>/tool_calls``
(searches per question); the same EM and F1 per question type (``<prefix>/em/type/<type>``) and
per dataset (``<prefix>/em/source/<data_source>``); and ``<prefix>/n`` (questions),
``<prefix>/generated_tokens``, ``<prefix>/turns``.

The engine's prefix cache is emptied first, so the numbers depend only on the weights, the
questions and the settings: a saved checkpoint evaluates to the numbers logged when it was saved.
The bootstrap's held-out check and the trainer's evaluations both run this function.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from at2po.rollout.codec import Codec
from at2po.rollout.config import RolloutConfig
from at2po.rollout.engine import SamplingParams
from at2po.rollout.hf_engine import HFEngine
from at2po.rollout.rollouts import rollout
from at2po.tasks.datasets import QAExample

SCORES = ("em", "f1", "format_ok", "answered", "tool_calls")
"""Leaf sub-scores averaged into ``<prefix>/<name>``."""


def eval_rollout_config(cfg: RolloutConfig) -> RolloutConfig:
    """``cfg``'s budgets with one greedy chain per question.

    T²PO's intervention and turn resampling are training-time exploration control: evaluation
    measures the policy alone, so both are off (a greedy redraw would repeat the turn anyway).
    """
    return replace(
        cfg,
        mode="chain",
        n_rows=1,
        sampling=SamplingParams(greedy=True),
        seed=0,
        tti=False,
        tds=False,
    )


def evaluate(
    engine: HFEngine,
    codec: Codec,
    env: Any,
    examples: Sequence[QAExample],
    cfg: RolloutConfig,
    on_progress: Callable[[int], None] | None = None,
    prefix: str = "eval",
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
    metrics = {
        f"{prefix}/{name}": _mean(s.get(name, 0.0) for _, s in per_question) for name in SCORES
    }
    for label, key_of in (
        ("type", lambda ex: str(ex.metadata.get("type", "unknown"))),
        ("source", lambda ex: ex.data_source),
    ):
        groups: dict[str, list[dict[str, float]]] = defaultdict(list)
        for example, scores in per_question:
            groups[key_of(example)].append(scores)
        for value, members in sorted(groups.items()):
            for name in ("em", "f1"):
                metrics[f"{prefix}/{name}/{label}/{value}"] = _mean(
                    s.get(name, 0.0) for s in members
                )
    metrics[f"{prefix}/n"] = float(len(per_question))
    metrics[f"{prefix}/generated_tokens"] = generated
    metrics[f"{prefix}/turns"] = turns / len(per_question)
    return metrics


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
