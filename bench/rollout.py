"""Benchmark: AT²PO tree rollout vs independent chains, on the same prompts and model.

Variants (all on the same held-out questions of the demo task: shared-name dev worlds, 30 %
one-hop and 70 % two-hop, each world searched in its own BM25 corpus; temperature 1):

* ``tree``: M=10 chains, L=2 rounds of K=6 entropy-picked re-samples, N=22 rows;
* ``chains22``: 22 independent chains (the tree's row count);
* ``chains16``: 16 independent chains (the paper's claimed token-equivalent budget).

Targets: the tree generates ≤ 0.8× the tokens of 22 chains and takes ≤ 0.85× their wall time.
It also checks the token-cost formula of docs/rollout.md: tree tokens ≈ (M + L·K·f)·B, with B the
mean generated tokens of one chain and f the mean fraction of a trajectory a re-sample regenerates
(the paper assumes f = 1/2); both the f = 1/2 prediction and the measured f are printed.

Where expansion lands: the tree record also gives the mean entropy of the turns the entropy score
picked and of those it never picked, and ``expanded_turns``: how many re-sampled turns hang at
each turn index of the kept tree (turn 1 counts the root's children beyond the M chains; deeper
branch points are all expansions), with the mean reward of the rows below the branch points of
each depth ≥ 2.

Engine throughput and prefix-cache savings are measured by bench/engine.py.

Usage: python bench/rollout.py [--model tiny|smollm2-135m|DIR] [--prompts 4] [--seed 0]
[--min-entropy 0.01]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from at2po.models.bootstrap import DEMO_MIX
from at2po.models.demos import worlds_env
from at2po.models.registry import resolve_model
from at2po.rollout.codec import Codec
from at2po.rollout.config import RolloutConfig
from at2po.rollout.hf_engine import HFEngine
from at2po.rollout.rollouts import rollout
from at2po.tasks.search_env import SearchEnvConfig
from at2po.tasks.worlds.splits import build_world_sets


def expansion_sites(groups, n_chains: int) -> dict:
    """Re-sampled turns per turn index and the mean reward of the rows below each depth's
    branch points (see the module docstring)."""
    counts: dict[int, int] = {}
    rewards: dict[int, list[float]] = {}
    for group in groups:
        tree = group.tree
        for node_id in range(len(tree.nodes)):
            children = tree.children(node_id)
            extra = len(children) - (n_chains if node_id == 0 else 1)
            if extra <= 0:
                continue
            depth = tree.depth(node_id) + 1
            counts[depth] = counts.get(depth, 0) + extra
            for leaf in group.row_leaves if depth >= 2 else ():
                if node_id in tree.path(leaf):
                    rewards.setdefault(depth, []).append(tree.nodes[leaf].reward or 0.0)
    return {
        "expanded_turns": {f"turn{d}": counts[d] for d in sorted(counts)},
        "reward_below_branch": {
            f"turn{d}": round(sum(r) / len(r), 3) for d, r in sorted(rewards.items())
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, smollm2-135m or a model directory")
    parser.add_argument("--prompts", type=int, default=4, help="dev questions rolled out at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-turn-tokens", type=int, default=96)
    parser.add_argument("--max-response-tokens", type=int, default=768)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--min-entropy",
        type=float,
        default=0.0,
        help="entropy floor of the tree's expansion (rollout.expansion_min_entropy; 0: the paper)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    worlds = build_world_sets(args.seed, {"dev": args.prompts}, question_mix=DEMO_MIX)["dev"]
    examples = [q for world in worlds for q in world.questions][: args.prompts]
    env = worlds_env(worlds, SearchEnvConfig())
    path = resolve_model(args.model)
    engine = HFEngine.from_pretrained(path)
    codec = Codec.from_tokenizer(engine.tokenizer)
    budgets = dict(
        max_turn_tokens=args.max_turn_tokens,
        max_response_tokens=args.max_response_tokens,
        max_context_tokens=args.max_response_tokens + 1024,
        seed=args.seed,
    )
    variants = {
        "chains22": RolloutConfig(mode="chain", n_rows=22, **budgets),
        "chains16": RolloutConfig(mode="chain", n_rows=16, **budgets),
        "tree": RolloutConfig(
            mode="tree",
            n_rows=22,
            n_chains=10,
            expansion_rounds=2,
            expansion_k=6,
            expansion_min_entropy=args.min_entropy,
            **budgets,
        ),
    }
    rollout(engine, codec, env, examples[:1], RolloutConfig(mode="chain", n_rows=2, **budgets))
    measured = {}
    for name, cfg in variants.items():
        engine.prefix_cache.clear()
        start = time.perf_counter()
        out = rollout(engine, codec, env, examples, cfg)
        wall = time.perf_counter() - start
        metrics = out.metrics
        measured[name] = (metrics["rollout/generated_tokens"], wall, out)
        record = {
            "bench": "rollout.tree_vs_chains",
            "model": str(args.model),
            "variant": name,
            "prompts": len(examples),
            "min_entropy": args.min_entropy,
            "rows": int(metrics["rollout/rows"]),
            "generated_tokens": int(metrics["rollout/generated_tokens"]),
            "row_tokens": int(metrics["tree/row_tokens"]),
            "wall_s": round(wall, 2),
            "tokens_per_s": round(metrics["rollout/generated_tokens"] / wall, 1),
            "reward_mean": round(metrics["reward/mean"], 3),
            "turns_per_trajectory": round(metrics["rollout/turns_per_trajectory"], 2),
            "cached_tokens": int(metrics["rollout/cached_tokens"]),
            "prefill_tokens": int(metrics["rollout/prefill_tokens"]),
        }
        if name == "tree":
            record |= expansion_sites(out.groups, n_chains=cfg.n_chains)
            for key in ("tree/picked_entropy", "tree/unpicked_entropy"):
                if key in metrics:
                    record[key.split("/")[1]] = round(metrics[key], 3)
        print(json.dumps(record), flush=True)

    tokens22, wall22, _ = measured["chains22"]
    tokens_tree, wall_tree, tree_out = measured["tree"]
    chain_tokens = tokens22 / (22 * len(examples))
    m, lk = 10, 2 * 6
    f_measured = (tokens_tree / len(examples) - m * chain_tokens) / (lk * chain_tokens)
    print(
        json.dumps(
            {
                "bench": "rollout.tree_vs_chains",
                "variant": "summary",
                "model": str(args.model),
                "tree_tokens_over_chains22": round(tokens_tree / tokens22, 3),
                "tree_tokens_target": 0.8,
                "tree_wall_over_chains22": round(wall_tree / wall22, 3),
                "tree_wall_target": 0.85,
                "chains16_tokens_over_chains22": round(measured["chains16"][0] / tokens22, 3),
                "chain_mean_tokens_B": round(chain_tokens, 1),
                "predicted_tree_tokens_f_half": round((m + lk / 2) * chain_tokens * len(examples)),
                "measured_tree_tokens": int(tokens_tree),
                "measured_f": round(f_measured, 3),
                "unique_over_row_tokens": round(
                    tree_out.metrics["tree/unique_tokens"] / tree_out.metrics["tree/row_tokens"], 3
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
