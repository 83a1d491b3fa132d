"""Expansion selection (entropy and random) and the ARPO/AEPO branching decisions."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import turn_trees

from at2po.core.expansion import (
    SIBLING_PENALTY,
    aepo_initial_rollouts,
    arpo_should_branch,
    arpo_step_entropy,
    expansion_scores,
    select_at_random,
    select_by_entropy,
    select_expansion_nodes,
)
from at2po.core.tree import TurnTree


def scored_tree() -> TurnTree:
    """root(0) → a(1) H=1, b(2) H=0.6, c(3) leaf; a → a1(4) → leaf(5); b → leaf(6), b2(7) → leaf(8).

    Candidates (non-leaf, BFS): 0, 1, 2, 4, 7. Scores H − 0.05·siblings:
      root: 0 − 0.05·(3 − 1) = −0.10      a: 1.0 − 0.05·2 = 0.90       b: 0.6 − 0.05·2 = 0.50
      a1:   0.90 − 0.05·0    =  0.90 (a tie with a, which comes first in BFS)
      b2:   0.7 − 0.05·1     =  0.65
    Ranked: a(1), a1(4), b2(7), b(2), root(0).
    """
    tree = TurnTree([1])
    tree.add_child(0, entropy=1.0)
    tree.add_child(0, entropy=0.6)
    tree.add_child(0, entropy=0.3, reward=1.0)
    tree.add_child(1, entropy=1.0 - SIBLING_PENALTY * 2)
    tree.add_child(4, entropy=0.1, reward=0.0)
    tree.add_child(2, entropy=0.2, reward=1.0)
    tree.add_child(2, entropy=0.7)
    tree.add_child(7, entropy=0.4, reward=0.0)
    return tree


def test_scores_by_hand():
    candidates, scores = expansion_scores(scored_tree())
    assert candidates == [0, 1, 2, 4, 7]
    assert scores == pytest.approx([-0.10, 0.90, 0.50, 0.90, 0.65])


def test_entropy_floor_ranks_near_deterministic_turns_last():
    """Floor 0.65: a (H 1.0), a1 (0.9) and b2 (0.7) reach it, b (0.6) does not; the root is a fresh
    chain and always eligible. Eligible by score: a, a1, b2, root; then b."""
    tree = scored_tree()
    assert select_by_entropy(tree, 5, min_entropy=0.65) == [1, 4, 7, 0, 2]
    assert select_by_entropy(tree, 5, min_entropy=0.0) == [1, 4, 7, 2, 0]
    # a floor above every turn leaves the root first, then the usual order
    assert select_by_entropy(tree, 3, min_entropy=5.0) == [0, 1, 4]
    assert select_expansion_nodes(tree, 2, "entropy", min_entropy=0.95) == [1, 0]


def test_top_k_without_replacement():
    tree = scored_tree()
    assert select_by_entropy(tree, 1) == [1]
    assert select_by_entropy(tree, 3) == [1, 4, 7]
    assert select_by_entropy(tree, 5) == [1, 4, 7, 2, 0]


def test_fewer_candidates_than_k_wraps_around():
    assert select_by_entropy(scored_tree(), 7) == [1, 4, 7, 2, 0, 1, 4]


def test_ties_follow_bfs_not_id_order():
    """root → x(1), z(4); x → y(2), leaf(3); y → leaf(5); z → leaf(6). BFS: 0, 1, 4, 2, 3, 6, 5.

    y and z both have H = 0.7 and one sibling, so both score 0.65; z comes first in BFS.
    """
    tree = TurnTree([1])
    tree.add_child(0, entropy=0.1)
    tree.add_child(1, entropy=0.7)
    tree.add_child(1, entropy=0.2, reward=0.0)
    tree.add_child(0, entropy=0.7)
    tree.add_child(2, entropy=0.3, reward=1.0)
    tree.add_child(4, entropy=0.3, reward=1.0)
    assert select_by_entropy(tree, 2) == [4, 2]


def test_root_rule():
    # every chain answered at once: the root (H = 0, b = children − 1) is the only candidate
    tree = TurnTree([1])
    for reward in (1.0, 0.0, 0.0):
        tree.add_child(0, entropy=2.0, reward=reward)
    assert expansion_scores(tree) == ([0], [pytest.approx(-0.10)])
    assert select_by_entropy(tree, 4) == [0, 0, 0, 0]
    # a root with one child has no penalty; the root's own entropy field is never used
    tree = TurnTree([1])
    tree.nodes[0].entropy = 5.0
    tree.add_child(0, entropy=0.2)
    tree.add_child(1, entropy=0.1, reward=1.0)
    assert expansion_scores(tree) == ([0, 1], [0.0, pytest.approx(0.2)])


def test_alpha_changes_ranking():
    tree = scored_tree()
    # α = 0 ranks by entropy alone: a 1.0, a1 0.9, b2 0.7, b 0.6, root 0
    assert select_by_entropy(tree, 5, alpha=0.0) == [1, 4, 7, 2, 0]
    # α = 1: root −2, a −1, b −1.4, a1 0.9, b2 −0.3
    assert select_by_entropy(tree, 5, alpha=1.0) == [4, 7, 1, 2, 0]


@settings(max_examples=60, deadline=None)
@given(turn_trees(), st.integers(1, 12))
def test_entropy_selection_matches_reference(tree, k):
    bfs_pos = {node: i for i, node in enumerate(tree.bfs())}
    candidates = [n for n in tree.bfs() if not tree.is_leaf(n)]

    def score(n: int) -> float:
        h = 0.0 if n == 0 else tree.nodes[n].entropy
        parent = tree.nodes[n].parent
        group = tree.children(0 if parent is None else parent)
        return h - 0.05 * max(0, len(group) - 1)

    ranked = sorted(candidates, key=lambda n: (-score(n), bfs_pos[n]))
    expected = [ranked[i % len(ranked)] for i in range(k)]
    assert select_by_entropy(tree, k) == expected


def test_random_selection():
    tree = scored_tree()
    candidates = set(tree.expandable())
    picks = select_at_random(tree, 3, random.Random(7))
    assert len(picks) == 3 and len(set(picks)) == 3 and set(picks) <= candidates
    assert select_at_random(tree, 3, random.Random(7)) == picks
    many = select_at_random(tree, 12, random.Random(7))
    assert len(many) == 12 and set(many) <= candidates and len(set(many)) < 12
    assert select_at_random(tree, 12, random.Random(7)) == many


def test_random_selection_covers_every_candidate():
    tree = scored_tree()
    seen = set()
    for seed in range(200):
        seen.update(select_at_random(tree, 2, random.Random(seed)))
    assert seen == set(tree.expandable())


def test_dispatch_and_errors():
    tree = scored_tree()
    assert select_expansion_nodes(tree, 3) == [1, 4, 7]
    assert select_expansion_nodes(tree, 3, "random", random.Random(1)) == select_at_random(
        tree, 3, random.Random(1)
    )
    with pytest.raises(ValueError, match="seeded"):
        select_expansion_nodes(tree, 3, "random")
    with pytest.raises(ValueError, match="unknown expansion mode"):
        select_expansion_nodes(tree, 3, "greedy")
    with pytest.raises(ValueError, match="at least 1"):
        select_by_entropy(tree, 0)


# --------------------------------------------------------------------------------- ARPO / AEPO


def test_step_entropy_by_hand():
    half = math.log(0.5)
    logp_TK = torch.tensor([[half, half], [0.0, -math.inf]])
    # position 0: −2·(0.5·ln 0.5) = ln 2; position 1: −1·ln 1 = 0; over ln|V| = ln 4 = 2 ln 2
    assert arpo_step_entropy(logp_TK, vocab_size=4) == pytest.approx(0.5)


def test_step_entropy_counts_first_twenty_positions():
    half = math.log(0.5)
    logp_TK = torch.full((25, 2), half)
    # 20 positions × ln 2 each, over ln 2
    assert arpo_step_entropy(logp_TK, vocab_size=2) == pytest.approx(20.0)
    assert arpo_step_entropy(logp_TK, vocab_size=2, max_tokens=3) == pytest.approx(3.0)
    assert arpo_step_entropy(torch.empty(0, 10), vocab_size=100) == 0.0
    with pytest.raises(ValueError, match="vocab_size"):
        arpo_step_entropy(logp_TK, vocab_size=1)


def test_should_branch_by_hand():
    common = {"entropy_weight": 0.2, "branch_probability": 0.5}
    # p = 0.6 + 0.2·(0.9 − 0.4) = 0.7 ≥ 0.5
    assert arpo_should_branch(0.9, 0.4, consecutive_branches=0, u=0.6, **common)
    # after 10 consecutive branches: 0.7 · (1 − 0.5) = 0.35 < 0.5
    assert not arpo_should_branch(0.9, 0.4, consecutive_branches=10, u=0.6, **common)
    # entropy fell: 0.6 + 0.2·(−1) = 0.4 < 0.5
    assert not arpo_should_branch(0.0, 1.0, consecutive_branches=0, u=0.6, **common)
    # penalty never goes negative: 30 rounds → factor 0 → p = 0 ≥ 0 with threshold 0
    assert arpo_should_branch(
        0.0, 0.0, entropy_weight=0.2, consecutive_branches=30, branch_probability=0.0, u=0.9
    )


def test_should_branch_clips_after_the_penalty():
    # (1 + 1·1)·(1 − 0.05·10) = 1.0 → clip → 1.0 ≥ 0.9; clipping first would give 0.5 < 0.9
    assert arpo_should_branch(
        1.0, 0.0, entropy_weight=1.0, consecutive_branches=10, branch_probability=0.9, u=1.0
    )
    with pytest.raises(ValueError, match="uniform draw"):
        arpo_should_branch(
            0.0, 0.0, entropy_weight=0.2, consecutive_branches=0, branch_probability=0.5, u=1.5
        )


def test_aepo_initial_rollouts_by_hand():
    # equal entropies: σ(0) = 0.5 → ⌊16·0.5⌋ + 1 = 9
    assert aepo_initial_rollouts(16, 0.3, [0.2, 0.4]) == 9
    # H_root − H̄ = 2: σ(1) = 0.7311 → ⌊11.70⌋ + 1 = 12
    assert aepo_initial_rollouts(16, 2.5, [0.5]) == 12
    # H_root − H̄ = −2: σ(−1) = 0.2689 → ⌊4.30⌋ + 1 = 5
    assert aepo_initial_rollouts(16, 0.5, [2.5]) == 5
    # clamped to n
    assert aepo_initial_rollouts(16, 100.0, [0.0]) == 16
    # no tool-call steps: H̄ = H_root
    assert aepo_initial_rollouts(16, 0.7, []) == 9
    assert aepo_initial_rollouts(1, -50.0, [0.0]) == 1
    with pytest.raises(ValueError, match="at least 1"):
        aepo_initial_rollouts(0, 0.0, [])
