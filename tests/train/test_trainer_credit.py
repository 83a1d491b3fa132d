"""Credit of rollout groups by hand: every estimator, DAPO's filter and overlong shaping."""

from __future__ import annotations

import math

import pytest
import torch

from at2po.core.tree import TurnTree
from at2po.rollout.rollouts import PromptGroup
from at2po.tasks.datasets import QAExample
from at2po.train.config import CreditConfig
from at2po.train.credit import (
    assign_credit,
    informative_groups,
    overlong_penalty,
    shape_rewards,
)

EXAMPLE = QAExample("q", "Who?", ("x",), "toy")
S = math.sqrt(0.5)  # GRPO advantage of rewards {1, 0}: ±0.5 / std(unbiased) = ±√½


def group_a() -> PromptGroup:
    """Root → node 1 (answer, reward 1); root → node 2 (search) → node 3 (answer, reward 0)."""
    tree = TurnTree([1, 2])
    tree.add_child(0, act_ids=[5, 6], act_logprobs=[-1.0, -1.0], finish="answer", reward=1.0)
    tree.add_child(0, act_ids=[7], act_logprobs=[-0.5], finish="tool_call")
    tree.add_child(2, obs_ids=[9, 9], act_ids=[8], act_logprobs=[-2.0], finish="answer", reward=0.0)
    tree.nodes[1].scores = {"em": 1.0}
    tree.nodes[3].scores = {"em": 0.0}
    return PromptGroup(EXAMPLE, tree, (1, 3))


def group_b() -> PromptGroup:
    """Two one-turn chains, both reward 0."""
    tree = TurnTree([1, 3])
    for _ in range(2):
        tree.add_child(0, act_ids=[4], act_logprobs=[-1.0], finish="answer", reward=0.0)
    return PromptGroup(EXAMPLE, tree, (1, 2))


def test_grpo_is_the_group_z_score():
    credit = assign_credit([group_a(), group_b()], CreditConfig(estimator="grpo"))
    assert credit.advantages.tolist() == pytest.approx([S, -S, 0.0, 0.0], abs=1e-5)
    assert credit.leaf_rows == [[1, 3], [1, 2]]
    assert credit.metrics["reward/mean"] == pytest.approx(0.25)
    assert credit.metrics["reward/groups_all_equal"] == 0.5
    assert credit.metrics["reward/em"] == pytest.approx(0.25)


def test_tree_values_pass_down_single_child_chains():
    credit = assign_credit([group_a()], CreditConfig(estimator="tree"))
    # leaf z-scores ±0.5 / (0.5 + 1e-6); node 2 has one child and copies its value
    v = 0.5 / (0.5 + 1e-6)
    assert credit.advantages.flatten().tolist() == pytest.approx([v, 0.0, -v, -v], abs=1e-6)


def test_tree_grpo_adds_intra_and_inter_tree_scores():
    credit = assign_credit([group_a()], CreditConfig(estimator="tree_grpo"))
    # the first-turn subtrees hold one row each: a group of one gets r / (1 + ε)
    assert credit.advantages.tolist() == pytest.approx([1 + S, -S], abs=1e-5)


def test_gigpo_episode_plus_anchor_step_advantage():
    credit = assign_credit([group_a()], CreditConfig(estimator="gigpo", gigpo_gamma=0.5))
    # steps: (row 0, turn 0) anchor = prompt, return 1; (row 1, turn 0) anchor = prompt, return
    # γ·0 = 0; (row 1, turn 1) anchor = its observation [9, 9], return 0.
    # episode term (mean over step records, 1/3): 2/3, -1/3, -1/3
    # step term: the two prompt-anchored steps centre on 1/2; the lone anchor gets 0
    expected = [2 / 3 + 0.5, 0.0, -1 / 3 - 0.5, -1 / 3]
    assert credit.advantages.flatten().tolist() == pytest.approx(expected, abs=1e-6)


def test_dynamic_sampling_keeps_groups_whose_rewards_differ():
    a, b = group_a(), group_b()
    assert informative_groups([a, b]) == [a]
    assert informative_groups([b]) == []


def test_overlong_penalty_by_hand():
    length_B = torch.tensor([10, 80, 90, 100, 101])
    penalty = overlong_penalty(length_B, max_len=100, buffer=20, penalty=2.0)
    assert penalty.tolist() == pytest.approx([0.0, 0.0, -1.0, -2.0, -2.0])


def test_shape_rewards_changes_leaf_rewards_and_keeps_scores():
    group = group_a()  # response lengths: leaf 1 → 2 tokens, leaf 3 → 1 + 2 + 1 = 4 tokens
    mean = shape_rewards([group], CreditConfig(overlong_buffer=2, overlong_penalty=1.0), max_len=4)
    # free length 2: leaf 1 unpenalised, leaf 3 at the limit gets (2 − 4) / 2 = −1
    assert [group.tree.nodes[i].reward for i in (1, 3)] == [1.0, -1.0]
    assert mean == pytest.approx(-0.5)
    assert group.tree.nodes[1].scores == {"em": 1.0}
    assert shape_rewards([group_b()], CreditConfig(), max_len=4) == 0.0


def test_advantage_metrics_cover_each_turn_of_each_row():
    credit = assign_credit([group_a()], CreditConfig(estimator="grpo"))
    # turns: row 0 has one (+S), row 1 two (−S, −S)
    assert credit.metrics["turn/adv_mean"] == pytest.approx(-S / 3, abs=1e-5)
    assert credit.metrics["turn/adv_abs_max"] == pytest.approx(S, abs=1e-5)
