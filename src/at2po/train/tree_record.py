"""What a run records of a step's turn trees, for ``at2po view`` to read without the model.

One record per step (``<run>/trees/step_NNNNNN.json``)::

    {"step": 10, "sibling_penalty": 0.05, "estimator": "tree",
     "groups": [{"example": {"id", "question", "golden_answers"},
                 "row_leaves": [leaf id of each training row],
                 "tree": TurnTree.to_dict(), log-probs rounded to DIGITS decimals,
                 "turns": [one entry per node, indexed by node id]}]}

Each entry of ``turns`` holds what the tree's token ids cannot show without the tokenizer and
the credit settings:

* ``obs``: the observation text before the turn (tool output), decoded;
* ``act``: the turn's sampled text, decoded;
* ``tokens``: each sampled token decoded on its own (its log-prob is the node's
  ``act_logprobs`` entry at the same index);
* ``score``: the expansion score H − α·b in the kept tree (``null`` for leaves, which expansion
  never picks); the score at the moment expansion picked a node is in the node's ``picks``;
* ``value``: V(n) of the tree estimator (``null`` for the other estimators, which have none);
* ``advantage``: A(n): the tree estimator's node advantage, or for the row estimators the mean
  advantage of the rows' turns at this node.

The root's ``obs``/``act``/``tokens`` are empty (the prompt is the question).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from at2po.core.credit import Forest, tree_credit
from at2po.core.expansion import expansion_scores
from at2po.core.tree import TurnTree
from at2po.rollout.rollouts import PromptGroup
from at2po.train.config import CreditConfig, TrainConfig
from at2po.train.credit import assign_credit

DIGITS = 4
"""Decimals kept for log-probs, values, advantages and scores (the files stay small)."""


def tree_record(
    step: int, groups: Sequence[PromptGroup], tokenizer: Any, cfg: TrainConfig
) -> dict[str, Any]:
    """The step's record (module docstring)."""
    alpha = cfg.rollout.sibling_penalty
    values, advantages = node_credit(groups, cfg.credit) if groups else ([], [])
    return {
        "step": step,
        "sibling_penalty": alpha,
        "estimator": cfg.credit.estimator,
        "groups": [
            {
                "example": {
                    "id": g.example.id,
                    "question": g.example.question,
                    "golden_answers": list(g.example.golden_answers),
                },
                "row_leaves": list(g.row_leaves),
                "tree": rounded_tree(g.tree),
                "turns": turn_entries(g.tree, tokenizer, alpha, value, advantage),
            }
            for g, value, advantage in zip(groups, values, advantages, strict=True)
        ],
    }


def rounded_tree(tree: TurnTree) -> dict[str, Any]:
    """:meth:`TurnTree.to_dict` with the log-probs rounded to :data:`DIGITS` decimals."""
    data = tree.to_dict()
    for node in data["nodes"]:
        node["act_logprobs"] = [round(x, DIGITS) for x in node["act_logprobs"]]
    return data


def turn_entries(
    tree: TurnTree,
    tokenizer: Any,
    alpha: float,
    values: Sequence[float] | None,
    advantages: Sequence[float],
) -> list[dict[str, Any]]:
    """The ``turns`` entries of one tree, one per node (module docstring)."""
    candidates, scores = expansion_scores(tree, alpha)
    score_of = dict(zip(candidates, scores, strict=True))
    return [
        {
            "obs": tokenizer.decode(node.obs_ids),
            "act": tokenizer.decode(node.act_ids),
            "tokens": [tokenizer.decode([token]) for token in node.act_ids],
            "score": _rounded(score_of.get(node.id)),
            "value": None if values is None else _rounded(values[node.id]),
            "advantage": _rounded(advantages[node.id]),
        }
        for node in tree.nodes
    ]


def node_credit(
    groups: Sequence[PromptGroup], cfg: CreditConfig
) -> tuple[list[list[float] | None], list[list[float]]]:
    """V(n) and A(n) of every node of every group's tree, as the step's credit assigned them.

    The tree estimator gives both per node. The row estimators (GRPO, Tree-GRPO, GiGPO) give an
    advantage per row (and turn); a node's A is then the mean over the rows through it of the
    advantage of their turn at that node, and V is ``None``. The root's A is its V for the tree
    estimator (as :func:`at2po.core.credit.node_advantages` defines it) and 0 otherwise.
    """
    trees = [g.tree for g in groups]
    if cfg.estimator == "tree":
        forest = Forest.from_trees(trees, [list(g.row_leaves) for g in groups])
        credit = tree_credit(forest, cfg.value_mode, cfg.adv_mode, cfg.leaf_norm)
        values = [v.tolist() for v in forest.per_tree(credit.value_G)]
        return values, [a.tolist() for a in forest.per_tree(credit.adv_G)]
    adv = assign_credit(groups, cfg).advantages.to(torch.float64)
    advantages = []
    row = 0
    for tree, group in zip(trees, groups, strict=True):
        total = [0.0] * len(tree)
        count = [0] * len(tree)
        for leaf in group.row_leaves:
            for turn, node_id in enumerate(tree.path(leaf)[1:]):
                total[node_id] += float(adv[row] if adv.dim() == 1 else adv[row, turn])
                count[node_id] += 1
            row += 1
        advantages.append([t / c if c else 0.0 for t, c in zip(total, count, strict=True)])
    return [None] * len(groups), advantages


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(float(x), DIGITS)
