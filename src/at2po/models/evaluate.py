"""Greedy evaluation through the real rollout path: one chain per question, EM of its answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from at2po.rollout.codec import Codec
from at2po.rollout.config import RolloutConfig
from at2po.rollout.engine import SamplingParams
from at2po.rollout.hf_engine import HFEngine
from at2po.rollout.rollouts import rollout
from at2po.tasks.datasets import QAExample
from at2po.tasks.search_env import SearchQAEnv


@dataclass(frozen=True)
class GreedyEval:
    """Mean exact match, answer rate and format validity over the questions, and the time taken."""

    em: float
    answered: float
    format_ok: float
    n: int
    seconds: float


def greedy_eval(
    model: torch.nn.Module,
    tokenizer,
    env: SearchQAEnv,
    examples: Sequence[QAExample],
    *,
    max_turn_tokens: int = 128,
    max_response_tokens: int = 1024,
    max_context_tokens: int = 2048,
    batch_size: int = 64,
) -> GreedyEval:
    """Run one greedy chain per example with :func:`rollout` and average the leaves' scores."""
    if not examples:
        raise ValueError("greedy_eval() needs at least one example")
    engine = HFEngine(model, tokenizer, max_batch_size=batch_size)
    codec = Codec.from_tokenizer(tokenizer)
    cfg = RolloutConfig(
        mode="chain",
        n_rows=1,
        sampling=SamplingParams(greedy=True),
        max_turn_tokens=max_turn_tokens,
        max_response_tokens=max_response_tokens,
        max_context_tokens=max_context_tokens,
    )
    scores: list[dict[str, float]] = []
    seconds = 0.0
    for start in range(0, len(examples), batch_size):
        out = rollout(engine, codec, env, examples[start : start + batch_size], cfg)
        seconds += out.metrics["perf/seconds_chains"]
        scores += [group.tree.nodes[group.row_leaves[0]].scores for group in out.groups]

    def mean(key: str) -> float:
        return sum(s.get(key, 0.0) for s in scores) / len(scores)

    return GreedyEval(mean("em"), mean("answered"), mean("format_ok"), len(scores), seconds)
