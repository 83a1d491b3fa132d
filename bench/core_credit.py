"""Benchmark: AT²PO credit assignment for a paper-scale batch (64 trees × 22 rows, ~6 turns a path).

Trees are grown the way the tree rollout grows them: M independent chains from the root, then L
rounds in which the top K nodes by H − α·b are re-sampled as new siblings and run to completion.
Turn lengths, log-probs and rewards are random. Prints one JSON line per measurement:

    {"bench": "core.credit", "what": ..., "median_ms": ..., "p90_ms": ..., ...}

``credit`` (flatten + values + advantages + per-row turn advantages) is the part with a target
(< 20 ms); ``token_advantages`` (turn advantages onto the padded token grid) and ``build_rows``
(the whole padded batch, dominated by copying token ids) are reported alongside.

Usage: python bench/core_credit.py [--trees 64] [--repeats 30] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable

import torch

from at2po.core.credit import Forest, tree_credit
from at2po.core.expansion import select_by_entropy
from at2po.core.rows import build_rows, scatter_turn_advantages
from at2po.core.tree import ROOT, TurnTree, sample_leaves

MAX_TURNS = 9


def add_turn(tree: TurnTree, parent: int, rng: random.Random, last: bool) -> int:
    """Append one sampled turn (a tool call, or the final answer when ``last``)."""
    obs = [] if parent == ROOT else [rng.randrange(32000) for _ in range(rng.randint(100, 400))]
    n_act = rng.randint(30, 200)
    logps = [-rng.expovariate(1.5) for _ in range(n_act)]
    node = tree.add_child(
        parent,
        obs_ids=obs,
        act_ids=[rng.randrange(32000) for _ in range(n_act)],
        act_logprobs=logps,
        finish="answer" if last else "tool_call",
        reward=float(rng.choice((-1, 0, 1))) if last else None,
    )
    return node.id


def run_chain(tree: TurnTree, parent: int, depth: int, rng: random.Random) -> None:
    """Generate turns under ``parent`` (at ``depth``) until the chain answers, 3–9 turns in all."""
    total = rng.randint(max(depth + 1, 3), MAX_TURNS)
    node = parent
    for turn in range(depth + 1, total + 1):
        node = add_turn(tree, node, rng, last=turn == total)


def grow_tree(rng: random.Random, chains: int, rounds: int, k: int) -> TurnTree:
    tree = TurnTree([rng.randrange(32000) for _ in range(300)])
    for _ in range(chains):
        run_chain(tree, ROOT, 0, rng)
    for _ in range(rounds):
        for picked in select_by_entropy(tree, k):
            parent = tree.nodes[picked].parent
            parent = ROOT if parent is None else parent
            run_chain(tree, parent, tree.depth(parent), rng)
    return tree


def timed(fn: Callable[[], object], repeats: int) -> dict:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 3),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=64)
    parser.add_argument("--chains", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--rows", type=int, default=22)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads; the credit tensors hold thousands of elements, so extra "
        "threads mostly add OpenMP wake-ups (0 keeps torch's default)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = random.Random(args.seed)
    sampled = [
        sample_leaves(grow_tree(rng, args.chains, args.rounds, args.k), args.rows, rng)
        for _ in range(args.trees)
    ]
    trees = [tree for tree, _ in sampled]
    leaf_rows = [leaves for _, leaves in sampled]
    forest = Forest.from_trees(trees, leaf_rows)
    credit = tree_credit(forest)
    rows = build_rows(trees, leaf_rows, credit.adv_BJ, pad_id=0)
    shape = {
        "trees": len(trees),
        "rows": len(forest.row_leaf_B),
        "nodes": len(forest.parent_G),
        "mean_turns": round(float((forest.path_BJ >= 0).sum(1).double().mean()), 2),
        "max_turns": forest.path_BJ.shape[1],
        "tokens_BT": list(rows.input_ids_BT.shape),
        "threads": torch.get_num_threads(),
    }

    def credit_all() -> None:
        tree_credit(Forest.from_trees(trees, leaf_rows))

    measurements = {
        "credit": (credit_all, {"target_ms": 20}),
        "flatten": (lambda: Forest.from_trees(trees, leaf_rows), {}),
        "values_advantages": (lambda: tree_credit(forest), {}),
        "token_advantages": (lambda: scatter_turn_advantages(credit.adv_BJ, rows.turn_BT), {}),
        "build_rows": (lambda: build_rows(trees, leaf_rows, credit.adv_BJ, pad_id=0), {}),
    }
    for what, (fn, extra) in measurements.items():
        repeats = max(3, args.repeats // 10) if what == "build_rows" else args.repeats
        result = {"bench": "core.credit", "what": what, **timed(fn, repeats), **extra, **shape}
        print(json.dumps(result))


if __name__ == "__main__":
    main()
