"""Chain, AT²PO tree and ARPO/AEPO branching rollouts, all producing :class:`TurnTree` s.

``chain`` — n independent trajectories per prompt (GRPO, DAPO, GSPO, GiGPO).

``tree`` — the AT²PO phases (arXiv 2601.04767 Alg. 1; reference spec §2.2):
  1. M chains per prompt, generated to completion;
  2. L rounds: each tree picks K expandable nodes (:func:`select_expansion_nodes`, entropy or random
     mode) and each pick re-samples the picked turn from its own context as a new sibling, which
     then runs to completion;
  3. exactly N leaves per tree (:func:`sample_leaves`).
  Tree-GRPO is this with random expansion.

``branching`` — ARPO/AEPO online branching (reference spec §7): M chains advance in lock-step; after
every tool observation, up to ``branch_beam − 1`` extra continuations of that observation start when
:func:`arpo_should_branch` says so, until the prompt has n trajectories; prompts still short of n at
the end get fresh chains. The step-entropy signal is the turn's mean negative log-prob (the same H
that AT²PO expansion uses) compared with the trajectory's first turn; the authors' code used the
normalised entropy of the top-10 log-probs of the first 20 tokens (see docs/rollout.md).

Every generation round batches the pending turns of all trees of the batch into one engine call.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from at2po.core.expansion import arpo_should_branch, expansion_scores, select_expansion_nodes
from at2po.core.tree import TurnTree, sample_leaves
from at2po.rollout.codec import Codec
from at2po.rollout.config import RolloutConfig
from at2po.rollout.engine import Engine
from at2po.rollout.turns import PendingTurn, RoundStats, TreeState, TurnRunner


@dataclass(frozen=True)
class PromptGroup:
    """The rollout of one prompt: its tree (pruned to the kept rows) and the leaf of each row."""

    example: Any
    tree: TurnTree
    row_leaves: tuple[int, ...]


@dataclass(frozen=True)
class RolloutOutput:
    """Groups in the order of the examples, and the metrics (``rollout/*``, ``tree/*`` …)."""

    groups: list[PromptGroup]
    metrics: dict[str, float]


def rollout(
    engine: Engine,
    codec: Codec,
    env: Any,
    examples: Sequence[Any],
    cfg: RolloutConfig,
) -> RolloutOutput:
    """Grow one tree per example with ``cfg.mode`` and keep ``cfg.n_rows`` rows per tree."""
    if not examples:
        raise ValueError("rollout() needs at least one example")
    seed_rng = random.Random(cfg.seed)
    pick_rng = random.Random(seed_rng.randrange(2**31))
    leaf_rng = random.Random(seed_rng.randrange(2**31))
    trees = []
    for example in examples:
        state = env.reset(example)
        trees.append(
            TreeState(example, TurnTree(codec.encode_prompt(state.prompt_messages())), {0: state})
        )

    picked: set[tuple[int, int]] = set()
    seconds: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=cfg.tool_workers) as pool:
        runner = TurnRunner(engine, codec, env, cfg, pool, seed_rng)
        start = time.perf_counter()
        initial = [
            runner.first_turn(i, trees)
            for i in range(len(trees))
            for _ in range(cfg.initial_chains)
        ]
        if cfg.mode == "branching":
            _run_branching(runner, initial, trees, cfg, random.Random(pick_rng.randrange(2**31)))
        else:
            runner.run(initial, trees)
        seconds["perf/seconds_chains"] = time.perf_counter() - start
        if cfg.mode == "tree":
            start = time.perf_counter()
            for _ in range(cfg.expansion_rounds):
                pending = []
                for i, entry in enumerate(trees):
                    picks = select_expansion_nodes(
                        entry.tree,
                        cfg.expansion_k,
                        cfg.expansion_mode,
                        pick_rng,
                        cfg.sibling_penalty,
                        cfg.expansion_min_entropy,
                    )
                    picked.update((i, x) for x in picks if x != 0)
                    _record_picks(entry.tree, picks, cfg.sibling_penalty)
                    pending += [runner.resample(i, x, trees) for x in picks]
                runner.run(pending, trees)
            seconds["perf/seconds_expansion"] = time.perf_counter() - start

    groups = []
    for entry in trees:
        tree, rows = sample_leaves(entry.tree, cfg.n_rows, leaf_rng)
        groups.append(PromptGroup(entry.example, tree, tuple(rows)))
    metrics = _metrics(groups, [t.tree for t in trees], runner, picked) | seconds
    return RolloutOutput(groups, metrics)


def _record_picks(tree: TurnTree, picks: Sequence[int], alpha: float) -> None:
    """Append each picked node's current expansion score H − α·b to its ``picks``."""
    candidates, scores = expansion_scores(tree, alpha)
    score_of = dict(zip(candidates, scores, strict=True))
    for node_id in picks:
        tree.nodes[node_id].picks.append(score_of[node_id])


def _run_branching(
    runner: TurnRunner,
    pending: list[PendingTurn],
    trees: Sequence[TreeState],
    cfg: RolloutConfig,
    rng: random.Random,
) -> None:
    """ARPO/AEPO: branch after observations while a prompt has fewer than n trajectories."""
    started = [0] * len(trees)
    for p in pending:
        started[p.tree_index] += 1
    branched: set[tuple[int, int]] = set()
    while pending:
        follow = runner.round(pending, trees)
        extra = []
        for p in follow:
            i, tree = p.tree_index, trees[p.tree_index].tree
            path = tree.path(p.parent)
            streak = 0
            for node_id in reversed(path[1:-1]):
                if (i, node_id) not in branched:
                    break
                streak += 1
            for _ in range(cfg.branch_beam - 1):
                if started[i] >= cfg.n_rows:
                    break
                if arpo_should_branch(
                    tree.nodes[p.parent].entropy,
                    tree.nodes[path[1]].entropy,
                    entropy_weight=cfg.branch_entropy_weight,
                    consecutive_branches=streak,
                    branch_probability=cfg.branch_probability,
                    u=rng.random(),
                ):
                    extra.append(runner.branch(p))
                    branched.add((i, p.parent))
                    started[i] += 1
        pending = follow + extra
    top_up = [
        runner.first_turn(i, trees)
        for i in range(len(trees))
        for _ in range(cfg.n_rows - started[i])
    ]
    runner.run(top_up, trees)


def _metrics(
    groups: Sequence[PromptGroup],
    full_trees: Sequence[TurnTree],
    runner: TurnRunner,
    picked: set[tuple[int, int]],
) -> dict[str, float]:
    """Token, tool and tree-shape counters of one rollout (stable metric names)."""
    stats = runner.stats
    rows = [(g.tree, leaf) for g in groups for leaf in g.row_leaves]
    row_tokens = sum(len(tree.row_tokens(leaf)[0]) for tree, leaf in rows)
    unique_tokens = sum(len(n.obs_ids) + len(n.act_ids) for g in groups for n in g.tree.nodes[1:])
    depths = [g.tree.depth(leaf) for g in groups for leaf in g.row_leaves]
    inner = [(f, i) for f, t in enumerate(full_trees) for i in t.expandable() if i != 0]
    fanout = [len(t.children(i)) for t in full_trees for i in t.expandable()]
    picked_h = [full_trees[f].nodes[i].entropy for f, i in inner if (f, i) in picked]
    unpicked_h = [full_trees[f].nodes[i].entropy for f, i in inner if (f, i) not in picked]
    rewards = [tree.nodes[leaf].reward or 0.0 for tree, leaf in rows]
    finishes = [tree.nodes[leaf].finish for tree, leaf in rows]
    out = {
        "rollout/generated_tokens": float(stats.generated_tokens),
        "rollout/prefill_tokens": float(stats.prefill_tokens),
        "rollout/cached_tokens": float(stats.cached_tokens),
        "rollout/tool_calls": float(stats.tool_calls),
        "rollout/tool_errors": float(stats.tool_errors),
        "rollout/tool_failures": float(stats.tool_failures),
        "rollout/rounds": float(stats.rounds),
        "rollout/requests": float(stats.requests),
        "rollout/rows": float(len(rows)),
        "rollout/turns_per_trajectory": sum(depths) / len(depths),
        "rollout/answer_rate": finishes.count("answer") / len(finishes),
        "reward/mean": sum(rewards) / len(rewards),
        "tree/row_tokens": float(row_tokens),
        "tree/unique_tokens": float(unique_tokens),
        "tree/depth_max": float(max(depths)),
        "tree/branching": sum(fanout) / max(1, len(fanout)),
        "perf/seconds_generate": stats.seconds_generate,
        "perf/seconds_tools": stats.seconds_tools,
    }
    out |= _t2po_metrics(full_trees, stats)
    if picked_h:
        out["tree/picked_entropy"] = sum(picked_h) / len(picked_h)
    if unpicked_h:
        out["tree/unpicked_entropy"] = sum(unpicked_h) / len(unpicked_h)
    return out


def _t2po_metrics(full_trees: Sequence[TurnTree], stats: RoundStats) -> dict[str, float]:
    """T²PO metrics over every turn generated (``t2po/*``; empty when M_t was not computed).

    ``uncertainty_turn_*``: the mean and the 10/50/90th percentiles of the turns' mean M_t;
    ``tti_fire_rate``: share of turns where TTI intervened; ``forced_tokens``: tokens it forced;
    ``tds_resample_rate``: share of eligible turns (those with a previous turn) drawn again;
    ``tds_tries_mean``: draws per eligible turn; ``tds_redraw_tokens``: tokens of discarded draws.
    """
    turns = [n for t in full_trees for n in t.nodes[1:] if n.act_uncertainty]
    if not turns:
        return {}
    means = torch.tensor(
        [_mean([m for m in n.act_uncertainty if m is not None]) for n in turns],
        dtype=torch.float64,
    )
    quantiles = means.nanquantile(torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    eligible = max(1, stats.tds_eligible)
    return {
        "t2po/uncertainty_turn_mean": float(means.nanmean()),
        "t2po/uncertainty_turn_p10": quantiles[0],
        "t2po/uncertainty_turn_p50": quantiles[1],
        "t2po/uncertainty_turn_p90": quantiles[2],
        "t2po/tti_fire_rate": sum(n.intervention is not None for n in turns) / len(turns),
        "t2po/forced_tokens": float(sum(sum(n.act_forced) for n in turns)),
        "t2po/tds_resample_rate": stats.tds_redrawn_turns / eligible,
        "t2po/tds_tries_mean": (stats.tds_eligible + stats.tds_redraws) / eligible,
        "t2po/tds_redraw_tokens": float(stats.tds_redraw_tokens),
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan
