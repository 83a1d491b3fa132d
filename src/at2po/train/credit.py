"""From rollout groups to per-row advantages: reward shaping, DAPO's filter and the estimators.

The rows are the groups' ``row_leaves``, tree by tree; a row's reward is its leaf's reward.

* ``tree`` (AT²PO): :func:`at2po.core.credit.tree_credit` on the forest of the groups' trees;
  one advantage per row and turn.
* ``grpo``: :func:`at2po.core.credit.grpo_advantages` over the rows of each prompt.
* ``tree_grpo``: :func:`at2po.core.credit.tree_grpo_advantages`, the Tree-GRPO trees being the
  subtrees of each first turn (a row's tree id is the first node of its path).
* ``gigpo``: :func:`at2po.core.credit.gigpo_advantages` with one step per (row, turn): the episode
  is the row, the reward sits on its last turn, and the anchor state of a turn is the observation
  it acted on (the prompt for first turns, else the tool result before it). With
  ``invalid_action_penalty`` (T²PO: 0.1), turns whose action the env refused (``Node.invalid``)
  lose that much from their episode score and step return, after the returns are computed.

DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476 Eq. 13) adds to the reward of a
response of L tokens (observations included), with L_max = ``max_response_tokens`` and buffer
L_c: 0 when L ≤ L_max − L_c, ((L_max − L_c) − L) / L_c · penalty up to L_max, −penalty beyond.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from at2po.core.credit import (
    Forest,
    dapo_keep_mask,
    gigpo_advantages,
    grpo_advantages,
    tree_credit,
    tree_grpo_advantages,
)
from at2po.core.tree import TurnTree
from at2po.rollout.rollouts import PromptGroup
from at2po.train.config import CreditConfig


@dataclass(frozen=True)
class Credit:
    """The rows of a step and their advantages.

    Attributes:
        trees: one tree per kept prompt group.
        leaf_rows: the leaf of each row, per tree.
        advantages: (B, J) per row and turn, or (B,) per row.
        metrics: ``reward/*`` and ``turn/adv_*`` statistics.
    """

    trees: list[TurnTree]
    leaf_rows: list[list[int]]
    advantages: torch.Tensor
    metrics: dict[str, float]


def overlong_penalty(
    length_B: torch.Tensor, max_len: int, buffer: int, penalty: float
) -> torch.Tensor:
    """DAPO's soft overlong punishment of responses of ``length_B`` tokens (module docstring)."""
    length_B = length_B.to(torch.float64)
    free = max_len - buffer
    ramp_B = (free - length_B) / buffer * penalty
    return torch.where(
        length_B <= free, 0.0, torch.where(length_B <= max_len, ramp_B, -float(penalty))
    )


def shape_rewards(groups: Sequence[PromptGroup], cfg: CreditConfig, max_len: int) -> float:
    """Add the overlong penalty to every leaf's reward (in place); returns the mean penalty.

    The leaves' ``scores`` keep the unshaped sub-scores.
    """
    if cfg.overlong_buffer == 0:
        return 0.0
    leaves = [(g.tree, leaf) for g in groups for leaf in g.tree.leaves()]
    length_B = torch.tensor([len(tree.row_tokens(leaf)[0]) for tree, leaf in leaves])
    penalty_B = overlong_penalty(length_B, max_len, cfg.overlong_buffer, cfg.overlong_penalty)
    for (tree, leaf), penalty in zip(leaves, penalty_B.tolist(), strict=True):
        tree.nodes[leaf].reward = (tree.nodes[leaf].reward or 0.0) + penalty
    return float(penalty_B.mean())


def informative_groups(groups: Sequence[PromptGroup]) -> list[PromptGroup]:
    """DAPO's dynamic-sampling filter: the groups whose row rewards are not all equal."""
    reward_B, group_B = _row_rewards(groups)
    keep_B = dapo_keep_mask(reward_B, group_B)
    kept = torch.zeros(len(groups), dtype=torch.bool).index_put_((group_B,), keep_B)
    return [g for g, k in zip(groups, kept.tolist(), strict=True) if k]


def assign_credit(groups: Sequence[PromptGroup], cfg: CreditConfig) -> Credit:
    """Advantages of every row of ``groups`` with ``cfg.estimator`` (module docstring)."""
    if not groups:
        raise ValueError("assign_credit() needs at least one prompt group")
    trees = [g.tree for g in groups]
    leaf_rows = [list(g.row_leaves) for g in groups]
    reward_B, group_B = _row_rewards(groups)
    paths = [g.tree.path(leaf)[1:] for g in groups for leaf in g.row_leaves]
    if cfg.estimator == "tree":
        forest = Forest.from_trees(trees, leaf_rows)
        adv = tree_credit(forest, cfg.value_mode, cfg.adv_mode, cfg.leaf_norm).adv_BJ
    elif cfg.estimator == "grpo":
        adv = grpo_advantages(reward_B, group_B, scale_by_std=cfg.grpo_scale_by_std)
    elif cfg.estimator == "tree_grpo":
        first_B = torch.tensor([path[0] for path in paths])
        adv = tree_grpo_advantages(reward_B, group_B, first_B)
    else:
        adv = _gigpo(groups, paths, reward_B, group_B, cfg)
    adv = adv.to(torch.float32)
    metrics = _reward_metrics(groups, reward_B, group_B) | _advantage_metrics(adv, paths)
    return Credit(trees, leaf_rows, adv, metrics)


def _row_rewards(groups: Sequence[PromptGroup]) -> tuple[torch.Tensor, torch.Tensor]:
    """(reward, group index) of every row, as float64 and long tensors."""
    rewards = [g.tree.nodes[leaf].reward for g in groups for leaf in g.row_leaves]
    if any(r is None for r in rewards):
        raise ValueError("a row's leaf has no reward; score every leaf before assigning credit")
    sizes = torch.tensor([len(g.row_leaves) for g in groups])
    group_B = torch.repeat_interleave(torch.arange(len(groups)), sizes)
    return torch.tensor(rewards, dtype=torch.float64), group_B


def _gigpo(
    groups: Sequence[PromptGroup],
    paths: list[list[int]],
    reward_B: torch.Tensor,
    group_B: torch.Tensor,
    cfg: CreditConfig,
) -> torch.Tensor:
    """GiGPO advantages laid out per row and turn (B, J); one step per (row, turn)."""
    trees = [g.tree for g in groups for _ in g.row_leaves]
    turns_B = torch.tensor([len(path) for path in paths])
    row_S = torch.repeat_interleave(torch.arange(len(paths)), turns_B)
    step_S = torch.cat([torch.arange(n) for n in turns_B.tolist()])
    last_S = step_S == turns_B[row_S] - 1
    keys = [
        tuple(tree.nodes[node].obs_ids)
        for tree, path in zip(trees, paths, strict=True)
        for node in path
    ]
    adv_S = gigpo_advantages(
        group_B[row_S],
        row_S,
        step_S,
        keys,
        torch.where(last_S, reward_B[row_S], 0.0),
        penalty_S=torch.tensor(
            [
                cfg.invalid_action_penalty * tree.nodes[node].invalid
                for tree, path in zip(trees, paths, strict=True)
                for node in path
            ],
            dtype=torch.float64,
        ),
        gamma=cfg.gigpo_gamma,
        step_weight=cfg.gigpo_step_weight,
        mode=cfg.gigpo_mode,
        similarity=cfg.gigpo_similarity,
    )
    adv_BJ = torch.zeros(len(paths), int(turns_B.max()), dtype=torch.float64)
    adv_BJ[row_S, step_S] = adv_S
    return adv_BJ


def _reward_metrics(
    groups: Sequence[PromptGroup], reward_B: torch.Tensor, group_B: torch.Tensor
) -> dict[str, float]:
    scores = [g.tree.nodes[leaf].scores for g in groups for leaf in g.row_leaves]
    keys = sorted({k for s in scores for k in s})
    out = {
        "reward/mean": float(reward_B.mean()),
        "reward/std": float(reward_B.std(unbiased=False)),
        "reward/groups_all_equal": 1.0 - len(informative_groups(groups)) / len(groups),
    }
    out.update({f"reward/{k}": sum(s.get(k, 0.0) for s in scores) / len(scores) for k in keys})
    return out


def _advantage_metrics(adv: torch.Tensor, paths: list[list[int]]) -> dict[str, float]:
    """Mean, std and largest magnitude of the advantages of the rows' turns."""
    turns_B = torch.tensor([len(path) for path in paths])
    if adv.dim() == 1:
        values = torch.repeat_interleave(adv, turns_B)
    else:
        present_BJ = torch.arange(adv.shape[1])[None, :] < turns_B[:, None]
        values = adv[present_BJ]
    return {
        "turn/adv_mean": float(values.mean()),
        "turn/adv_std": float(values.std(unbiased=False)),
        "turn/adv_abs_max": float(values.abs().max()),
    }
