"""Tree credit (values, advantages) and the baselines' group estimators."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import reorder, turn_trees

from at2po.core.credit import (
    ADV_MODES,
    VALUE_MODES,
    Forest,
    anchor_groups,
    dapo_keep_mask,
    discounted_returns,
    gigpo_advantages,
    grpo_advantages,
    leaf_values,
    tree_credit,
    tree_grpo_advantages,
)
from at2po.core.tree import TurnTree, sample_leaves

EPS = 1e-6


def close(actual: torch.Tensor, expected, tol: float = 1e-6) -> None:
    torch.testing.assert_close(
        actual.double(), torch.as_tensor(expected, dtype=torch.float64), rtol=0, atol=tol
    )


# ---------------------------------------------------------------- the tiny example (spec §3.7)


def tiny_tree() -> TurnTree:
    """root(0) → a(1) H=1, b(2) H=1, b2(3) H=2; a → a'(4) r=1; b → b'(5) r=0; b2 → b2'(6) r=1.

    (b2 is the expansion that re-sampled b's turn.) Rows in BFS leaf order: a', b', b2'.
    """
    tree = TurnTree([1, 2])
    tree.add_child(0, act_ids=[10], act_logprobs=[-1.0], entropy=1.0, finish="tool_call")
    tree.add_child(0, act_ids=[11], act_logprobs=[-1.0], entropy=1.0, finish="tool_call")
    tree.add_child(0, act_ids=[12], act_logprobs=[-2.0], entropy=2.0, finish="tool_call")
    tree.add_child(1, obs_ids=[50], act_ids=[13], act_logprobs=[-0.1], finish="answer", reward=1.0)
    tree.add_child(2, obs_ids=[51], act_ids=[14], act_logprobs=[-0.2], finish="answer", reward=0.0)
    tree.add_child(3, obs_ids=[52], act_ids=[15], act_logprobs=[-0.3], finish="answer", reward=1.0)
    return tree


# Leaf z-scores: rewards (1, 0, 1), μ = 2/3, population σ = √(2/9) = √2/3 ≈ 0.471405
SIGMA = math.sqrt(2) / 3
ZP = (1 / 3) / (SIGMA + EPS)  # ≈ +0.707105 (1/√2 without ε)
ZM = (-2 / 3) / (SIGMA + EPS)  # ≈ −1.414211 (−√2 without ε)
# Root value per value mode (a, b, b2 each copy their single leaf: V = ZP, ZM, ZP):
E = math.e
ROOT_VALUE = {
    # softmax weights e¹, e¹, e² over (2e + e²): (ZP + ZM + e·ZP) / (2 + e) ≈ 0.257510
    "entropy_softmax": (ZP + ZM + E * ZP) / (2 + E),
    # linear weights 1/4, 1/4, 2/4: (3·ZP + ZM) / 4 ≈ 0.176776
    "entropy_linear": (3 * ZP + ZM) / 4,
    # child mean and leaf mean: (2·ZP + ZM) / 3 = 0 (z-scores sum to zero)
    "mean": 0.0,
    "leaf_mean": 0.0,
}
LITERAL_ROOT = {
    "entropy_softmax": 0.25751,
    "entropy_linear": 0.17678,
    "mean": 0.0,
    "leaf_mean": 0.0,
}


def test_tiny_example_closed_forms_match_literals():
    assert pytest.approx(0.707105, abs=1e-6) == ZP
    assert pytest.approx(-1.414211, abs=1e-6) == ZM
    for mode, value in ROOT_VALUE.items():
        assert value == pytest.approx(LITERAL_ROOT[mode], abs=1e-5)


def expected_advantages(adv_mode: str, vr: float) -> list[float]:
    """Per node (root, a, b, b2, a', b', b2') from V = (vr, ZP, ZM, ZP, ZP, ZM, ZP)."""
    value = [vr, ZP, ZM, ZP, ZP, ZM, ZP]
    parent = [None, 0, 0, 0, 1, 2, 3]
    out = [vr]  # the root gets A = V(root) in every mode
    for n in range(1, 7):
        v, vp = value[n], value[parent[n]]  # type: ignore[index]
        out.append(
            {
                "value": v,
                "diff_parent": v - vp,
                "diff_root": v - vr,
                "diff_root_parent": (v - vr) + (v - vp),
            }[adv_mode]
        )
    return out


@pytest.mark.parametrize("value_mode", VALUE_MODES)
@pytest.mark.parametrize("adv_mode", ADV_MODES[:4])
def test_tiny_example_every_mode(value_mode, adv_mode):
    tree = tiny_tree()
    forest = Forest.from_trees([tree], [tree.leaves()])
    credit = tree_credit(forest, value_mode=value_mode, adv_mode=adv_mode)
    vr = ROOT_VALUE[value_mode]
    close(credit.value_G, [vr, ZP, ZM, ZP, ZP, ZM, ZP])
    adv = expected_advantages(adv_mode, vr)
    close(credit.adv_G, adv)
    # rows a' (path a, a'), b' (b, b'), b2' (b2, b2')
    close(credit.adv_BJ, [[adv[1], adv[4]], [adv[2], adv[5]], [adv[3], adv[6]]])


def test_tiny_example_value_mode_passes_leaf_values_down_chains():
    # spec §3.7: tokens of a and a' get 0.707, b and b' −1.414, b2 and b2' 0.707
    tree = tiny_tree()
    credit = tree_credit(Forest.from_trees([tree], [tree.leaves()]))
    close(credit.adv_BJ, [[0.70711, 0.70711], [-1.41421, -1.41421], [0.70711, 0.70711]], 1e-5)


@pytest.mark.parametrize("value_mode", VALUE_MODES)
def test_tiny_example_leaf_grpo(value_mode):
    # rewards (1, 0, 1): mean 2/3, unbiased std √(1/3) ≈ 0.57735 → A = +1/√3, −2/√3, +1/√3
    tree = tiny_tree()
    credit = tree_credit(Forest.from_trees([tree], [tree.leaves()]), value_mode, "leaf_grpo")
    std = math.sqrt(1 / 3)
    plus, minus = (1 / 3) / (std + EPS), (-2 / 3) / (std + EPS)
    assert plus == pytest.approx(0.57735, abs=1e-5) and minus == pytest.approx(-1.15470, abs=1e-5)
    close(credit.adv_BJ, [[plus, plus], [minus, minus], [plus, plus]])
    close(credit.adv_G, [0, 0, 0, 0, plus, minus, plus])
    close(credit.value_G[1:], [ZP, ZM, ZP, ZP, ZM, ZP])  # values still computed, for logging


def test_tiny_example_without_leaf_norm():
    tree = tiny_tree()
    forest = Forest.from_trees([tree], [tree.leaves()])
    credit = tree_credit(forest, "entropy_linear", leaf_norm="none")
    # raw rewards: root = (1·1 + 1·0 + 2·1) / 4 = 0.75
    close(credit.value_G, [0.75, 1, 0, 1, 1, 0, 1])


# ---------------------------------------------- uneven branching: child mean vs leaf mean, dupes


def uneven_tree(h_p: float = 0.0, h_q: float = 0.0) -> TurnTree:
    """root → p(1), q(2); p → p1(3) r=1, p2(4) r=1; q → q1(5) r=0."""
    tree = TurnTree([1])
    tree.add_child(0, entropy=h_p)
    tree.add_child(0, entropy=h_q)
    tree.add_child(1, entropy=0.5, reward=1.0)
    tree.add_child(1, entropy=0.5, reward=1.0)
    tree.add_child(2, entropy=0.5, reward=0.0)
    return tree


def root_value(tree: TurnTree, rows: list[int], value_mode: str, leaf_norm: str) -> float:
    credit = tree_credit(Forest.from_trees([tree], [rows]), value_mode, leaf_norm=leaf_norm)
    return float(credit.value_G[0])


def test_child_mean_versus_leaf_mean():
    tree = uneven_tree()
    # V(p) = 1, V(q) = 0; child mean (1 + 0)/2; leaf mean (1 + 1 + 0)/3
    assert root_value(tree, [3, 4, 5], "mean", "none") == pytest.approx(0.5)
    assert root_value(tree, [3, 4, 5], "leaf_mean", "none") == pytest.approx(2 / 3)
    # all child entropies 0: softmax is uniform, linear falls back to uniform (ΣH = 0)
    assert root_value(tree, [3, 4, 5], "entropy_softmax", "none") == pytest.approx(0.5)
    assert root_value(tree, [3, 4, 5], "entropy_linear", "none") == pytest.approx(0.5)


def test_entropy_weights():
    tree = uneven_tree(h_p=math.log(3), h_q=0.0)
    # softmax: e^{ln 3} = 3 vs e⁰ = 1 → 3/4·1 + 1/4·0
    assert root_value(tree, [3, 4, 5], "entropy_softmax", "none") == pytest.approx(0.75)
    # linear: ln 3 / ln 3 = 1 vs 0 → V(p)
    assert root_value(tree, [3, 4, 5], "entropy_linear", "none") == pytest.approx(1.0)


def test_entropy_linear_with_subnormal_entropies_stays_a_weighted_mean():
    """Found by hypothesis in CI: child weights H(c) ≈ 5e-324 rounded H·V to the same subnormal,
    so V(p) came out 1.0 for two children whose (z-scored) value is 0.7071."""
    tree = TurnTree([1])
    tree.add_child(0, entropy=0.5)
    tree.add_child(0, entropy=0.5)
    tree.add_child(1, entropy=5e-324, reward=1.0)
    tree.add_child(1, entropy=5e-324, reward=1.0)
    tree.add_child(2, entropy=0.5, reward=0.0)
    forest = Forest.from_trees([tree], [[3, 4, 5]])
    child_value = float(leaf_values(forest, "zscore")[3])
    assert child_value == pytest.approx(1 / math.sqrt(2), abs=1e-5)
    credit = tree_credit(forest, "entropy_linear", leaf_norm="zscore")
    assert float(credit.value_G[1]) == pytest.approx(child_value, abs=1e-12)


def test_duplicate_rows_change_the_normalisation_not_the_backup():
    tree = uneven_tree()
    # rows p1, p2, q1, q1: rewards (1, 1, 0, 0), μ = ½, σ = ½ → z = ±½/(½ + ε) ≈ ±1
    one = 0.5 / (0.5 + EPS)
    forest = Forest.from_trees([tree], [[3, 4, 5, 5]])
    close(leaf_values(forest), [0, 0, 0, one, one, -one])
    # child mean: (1 + (−1))/2 = 0; leaf mean over the three distinct leaves: (1 + 1 − 1)/3
    assert root_value(tree, [3, 4, 5, 5], "mean", "zscore") == pytest.approx(0.0, abs=1e-9)
    assert root_value(tree, [3, 4, 5, 5], "leaf_mean", "zscore") == pytest.approx(one / 3)
    # without normalisation the duplicate changes nothing
    for mode in VALUE_MODES:
        with_dupe = tree_credit(Forest.from_trees([tree], [[3, 4, 5, 5]]), mode, leaf_norm="none")
        without = tree_credit(Forest.from_trees([tree], [[3, 4, 5]]), mode, leaf_norm="none")
        close(with_dupe.value_G, without.value_G)
    assert len(with_dupe.adv_BJ) == 4
    close(with_dupe.adv_BJ[2], with_dupe.adv_BJ[3])


def test_equal_rewards_give_exactly_zero():
    tree = TurnTree([1])
    for _ in range(3):
        tree.add_child(0, entropy=1.0, reward=0.1)
    forest = Forest.from_trees([tree], [tree.leaves()])
    assert leaf_values(forest).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_deep_unbranched_chain_carries_its_leaf_value():
    tree = TurnTree([1])
    node = 0
    for depth in range(8):
        node = tree.add_child(node, entropy=0.1 * depth).id
    tree.nodes[node].reward = 0.3
    other = tree.add_child(0, entropy=0.0, reward=-0.2)
    credit = tree_credit(Forest.from_trees([tree], [[node, other.id]]), leaf_norm="none")
    assert credit.adv_BJ.shape == (2, 8)
    close(credit.adv_BJ[0], [0.3] * 8)
    close(credit.adv_BJ[1], [-0.2] + [0.0] * 7)


def test_forest_errors():
    tree = tiny_tree()
    with pytest.raises(ValueError, match="sample_leaves"):
        Forest.from_trees([tree], [[4, 5]])
    with pytest.raises(ValueError, match="not a leaf"):
        Forest.from_trees([tree], [[4, 5, 6, 1]])
    with pytest.raises(ValueError, match="tree 1: leaf 5 has no row"):
        Forest.from_trees([tree, tiny_tree()], [[4, 5, 6], [4, 6]])
    with pytest.raises(ValueError, match="tree 1: row leaf 2 is not a leaf"):
        Forest.from_trees([tree, tiny_tree()], [[4, 5, 6], [4, 5, 6, 2]])
    with pytest.raises(ValueError, match="not a node id"):
        Forest.from_trees([tree], [[4, 5, 6, 7]])
    with pytest.raises(ValueError, match="one list per tree"):
        Forest.from_trees([tree], [])
    with pytest.raises(ValueError, match="no trees"):
        Forest.from_trees([], [])
    with pytest.raises(ValueError, match="no rows"):
        Forest.from_trees([tree], [[]])
    tree.nodes[6].reward = None
    with pytest.raises(ValueError, match="row leaf 6 has reward None; score every leaf"):
        Forest.from_trees([tree], [[4, 5, 6]])
    tree.nodes[6].reward = float("inf")
    with pytest.raises(ValueError, match="row leaf 6 has reward inf"):
        Forest.from_trees([tree], [[4, 5, 6]])
    tree = tiny_tree()
    tree.nodes[2].entropy = float("nan")
    with pytest.raises(ValueError, match="finite"):
        Forest.from_trees([tree], [[4, 5, 6]])
    forest = Forest.from_trees([tiny_tree()], [[4, 5, 6]])
    with pytest.raises(ValueError, match="unknown value_mode"):
        tree_credit(forest, value_mode="child_softmax")
    with pytest.raises(ValueError, match="unknown adv_mode"):
        tree_credit(forest, adv_mode="node_value")
    with pytest.raises(ValueError, match="unknown leaf_norm"):
        tree_credit(forest, leaf_norm="whiten")


# ------------------------------------------------------------- properties against a reference


def reference_credit(
    tree: TurnTree, rows: list[int], value_mode: str, adv_mode: str, leaf_norm: str
) -> tuple[list[float], list[float]]:
    """Straightforward recursion over the tree, per the module docstring of at2po.core.credit."""
    rewards = [tree.nodes[leaf].reward for leaf in rows]
    mu = math.fsum(rewards) / len(rewards)
    sigma = math.sqrt(math.fsum((r - mu) ** 2 for r in rewards) / len(rewards))

    def norm(r: float) -> float:
        if leaf_norm == "none":
            return r
        return 0.0 if max(rewards) == min(rewards) else (r - mu) / (sigma + EPS)

    def leaves_under(n: int) -> list[int]:
        return [n] if tree.is_leaf(n) else [x for c in tree.children(n) for x in leaves_under(c)]

    values = [0.0] * len(tree)

    def value(n: int) -> float:
        if tree.is_leaf(n):
            v = norm(tree.nodes[n].reward)
        elif value_mode == "leaf_mean":
            for c in tree.children(n):
                value(c)
            v = statistics.fmean(norm(tree.nodes[x].reward) for x in leaves_under(n))
        else:
            kids = tree.children(n)
            vs = [value(c) for c in kids]
            hs = [tree.nodes[c].entropy for c in kids]
            if value_mode == "entropy_softmax":
                ws = [math.exp(h) for h in hs]
            elif value_mode == "entropy_linear":
                ws = hs if sum(hs) > 0 else [1.0] * len(hs)
            else:
                ws = [1.0] * len(hs)
            v = sum(w * x for w, x in zip(ws, vs, strict=True)) / sum(ws)
        values[n] = v
        return v

    value(0)
    advs = [values[0]]
    for n in range(1, len(tree)):
        v, vp, vr = values[n], values[tree.nodes[n].parent], values[0]  # type: ignore[index]
        advs.append(
            {
                "value": v,
                "diff_parent": v - vp,
                "diff_root": v - vr,
                "diff_root_parent": (v - vr) + (v - vp),
            }[adv_mode]
        )
    return values, advs


sampled_trees = st.tuples(turn_trees(), st.integers(1, 16), st.integers(0, 2**16)).map(
    lambda t: sample_leaves(t[0], t[1], random.Random(t[2]))
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(sampled_trees, min_size=1, max_size=4),
    st.sampled_from(VALUE_MODES),
    st.sampled_from(ADV_MODES[:4]),
    st.sampled_from(["zscore", "none"]),
)
def test_forest_matches_recursive_reference(batch, value_mode, adv_mode, leaf_norm):
    trees = [tree for tree, _ in batch]
    rows = [leaves for _, leaves in batch]
    forest = Forest.from_trees(trees, rows)
    credit = tree_credit(forest, value_mode, adv_mode, leaf_norm)
    values = forest.per_tree(credit.value_G)
    advs = forest.per_tree(credit.adv_G)
    b = 0
    for f, (tree, leaves) in enumerate(batch):
        ref_values, ref_advs = reference_credit(tree, leaves, value_mode, adv_mode, leaf_norm)
        close(values[f], ref_values, 1e-9)
        close(advs[f], ref_advs, 1e-9)
        for leaf in leaves:
            path = tree.path(leaf)[1:]
            turns = credit.adv_BJ[b]
            close(turns[: len(path)], [ref_advs[n] for n in path], 1e-9)
            assert bool((turns[len(path) :] == 0).all())
            b += 1


@settings(max_examples=60, deadline=None)
@given(sampled_trees, st.sampled_from(VALUE_MODES), st.sampled_from(["zscore", "none"]))
def test_values_lie_between_leaf_extremes(tree_rows, value_mode, leaf_norm):
    tree, rows = tree_rows
    forest = Forest.from_trees([tree], [rows])
    leaf_v = leaf_values(forest, leaf_norm)[forest.row_leaf_B]
    values = tree_credit(forest, value_mode, leaf_norm=leaf_norm).value_G
    assert bool((values >= leaf_v.min() - 1e-9).all())
    assert bool((values <= leaf_v.max() + 1e-9).all())


@settings(max_examples=60, deadline=None)
@given(turn_trees(), st.sampled_from(VALUE_MODES), st.integers(0, 2**16))
def test_child_order_does_not_matter(tree, value_mode, seed):
    shuffled, new_id = reorder(tree, random.Random(seed))
    before = tree_credit(Forest.from_trees([tree], [tree.leaves()]), value_mode).value_G
    forest = Forest.from_trees([shuffled], [[new_id[leaf] for leaf in tree.leaves()]])
    after = tree_credit(forest, value_mode).value_G
    close(after[torch.tensor(new_id)], before, 1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(sampled_trees, min_size=1, max_size=4))
def test_zscored_rows_sum_to_zero_per_tree(batch):
    forest = Forest.from_trees([t for t, _ in batch], [rows for _, rows in batch])
    row_values = leaf_values(forest)[forest.row_leaf_B]
    sums = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, forest.row_tree_B, row_values)
    close(sums, [0.0] * len(batch), 1e-6)


@settings(max_examples=40, deadline=None)
@given(st.lists(sampled_trees, min_size=1, max_size=4))
def test_leaf_grpo_is_grpo_over_each_trees_rows(batch):
    forest = Forest.from_trees([t for t, _ in batch], [rows for _, rows in batch])
    credit = tree_credit(forest, adv_mode="leaf_grpo")
    per_row = grpo_advantages(forest.row_reward_B, forest.row_tree_B)
    on_turn = forest.path_BJ >= 0
    close(credit.adv_BJ[on_turn], per_row[:, None].expand_as(on_turn)[on_turn])
    assert bool((credit.adv_BJ[~on_turn] == 0).all())


# ------------------------------------------------------------------------------------- GRPO


def test_grpo_by_hand():
    reward = torch.tensor([1.0, 0.0, 1.0, 5.0])
    group = torch.tensor([7, 7, 7, 3])
    std = math.sqrt(1 / 3)  # unbiased std of (1, 0, 1)
    close(
        grpo_advantages(reward, group),
        [(1 / 3) / (std + EPS), (-2 / 3) / (std + EPS), (1 / 3) / (std + EPS), 5 / (1 + EPS)],
    )
    # mean-only (Dr.GRPO); the singleton keeps its reward (mean 0), as in verl
    close(grpo_advantages(reward, group, scale_by_std=False), [1 / 3, -2 / 3, 1 / 3, 5.0])


def verl_style_grpo(rewards: list[float], groups: list[int]) -> list[float]:
    """A loop in the style of verl's compute_grpo_outcome_advantage."""
    by_group: dict[int, list[float]] = {}
    for r, g in zip(rewards, groups, strict=True):
        by_group.setdefault(g, []).append(r)
    stats = {
        g: (0.0, 1.0) if len(v) == 1 else (statistics.fmean(v), statistics.stdev(v))
        for g, v in by_group.items()
    }
    return [(r - stats[g][0]) / (stats[g][1] + EPS) for r, g in zip(rewards, groups, strict=True)]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-3, 3), st.integers(0, 4)), min_size=1, max_size=20),
)
def test_grpo_matches_loop(pairs):
    rewards = [r for r, _ in pairs]
    groups = [g for _, g in pairs]
    close(
        grpo_advantages(torch.tensor(rewards, dtype=torch.float64), torch.tensor(groups)),
        verl_style_grpo(rewards, groups),
        1e-9,
    )


def test_tree_grpo_by_hand():
    reward = torch.tensor([1.0, 0.0, 1.0, 1.0])
    prompt = torch.tensor([0, 0, 0, 0])
    tree = torch.tensor([0, 0, 1, 1])
    # inter (prompt): mean 0.75, unbiased std 0.5 → (0.5, −1.5, 0.5, 0.5)
    # intra: tree 0 (1, 0): mean 0.5, std √0.5 → ±0.7071; tree 1 (1, 1): std 0 → (0, 0)
    inter = [0.25 / (0.5 + EPS), -0.75 / (0.5 + EPS), 0.25 / (0.5 + EPS), 0.25 / (0.5 + EPS)]
    half = 0.5 / (math.sqrt(0.5) + EPS)
    expected = [inter[0] + half, inter[1] - half, inter[2], inter[3]]
    close(tree_grpo_advantages(reward, prompt, tree), expected)
    # tree ids are local to their prompt: the same pattern twice gives the same numbers twice
    both = tree_grpo_advantages(reward.repeat(2), torch.tensor([0] * 4 + [1] * 4), tree.repeat(2))
    close(both, expected * 2)


def test_dapo_keep_mask():
    reward = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 0.5, 0.5])
    group = torch.tensor([0, 0, 1, 1, 2, 3, 3])
    # group 0 all equal → drop; 1 mixed → keep; 2 single → keep (as verl); 3 all equal → drop
    assert dapo_keep_mask(reward, group).tolist() == [False, False, True, True, True, False, False]


# ------------------------------------------------------------------------------------ GiGPO


def test_discounted_returns_by_hand():
    # one episode, steps given out of order: rewards by step (1, 2, 3), γ = 0.5
    # R2 = 3, R1 = 2 + 0.5·3 = 3.5, R0 = 1 + 0.5·3.5 = 2.75
    reward = torch.tensor([3.0, 1.0, 2.0, 4.0])
    episode = torch.tensor([9, 9, 9, 4])
    step = torch.tensor([2, 0, 1, 0])
    close(discounted_returns(reward, episode, step, 0.5), [3.0, 2.75, 3.5, 4.0])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.floats(-1, 1), min_size=1, max_size=6), min_size=1, max_size=5),
    st.floats(0, 1),
    st.integers(0, 2**16),
)
def test_discounted_returns_match_loop(episodes, gamma, seed):
    records = [(e, t, r) for e, rs in enumerate(episodes) for t, r in enumerate(rs)]
    random.Random(seed).shuffle(records)
    expected = {}
    for e, rs in enumerate(episodes):
        running = 0.0
        for t in range(len(rs) - 1, -1, -1):
            running = rs[t] + gamma * running
            expected[(e, t)] = running
    got = discounted_returns(
        torch.tensor([r for _, _, r in records], dtype=torch.float64),
        torch.tensor([e for e, _, _ in records]),
        torch.tensor([t for _, t, _ in records]),
        gamma,
    )
    close(got, [expected[(e, t)] for e, t, _ in records], 1e-9)


def gigpo_example():
    """One prompt group, episodes A (2 steps) and B (3 steps), γ = 0.5.

    A: anchors s0, s1, rewards 0, 1 → returns R = 0.5, 1;   episode return 1
    B: anchors s0, s2, s1, rewards 0, 0, 0 → returns 0, 0, 0; episode return 0
    Records are listed B first to check that nothing depends on the order.
    """
    return dict(
        group_S=torch.tensor([5, 5, 5, 5, 5]),
        episode_S=torch.tensor([1, 1, 1, 0, 0]),
        step_S=torch.tensor([0, 1, 2, 0, 1]),
        anchor_keys=["s0", "s2", "s1", "s0", "s1"],
        reward_S=torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0]),
        gamma=0.5,
    )


def test_gigpo_mean_norm_by_hand():
    # episode term over step records (1, 1, 0, 0, 0 → mean 0.4): A +0.6, B −0.4
    # step term: s0 {A: 0.5, B: 0} mean 0.25 → ±0.25; s1 {A: 1, B: 0} → ±0.5; s2 {B} alone → 0
    # records (B0, B1, B2, A0, A1)
    got = gigpo_advantages(**gigpo_example())
    close(got, [-0.4 - 0.25, -0.4 + 0.0, -0.4 - 0.5, 0.6 + 0.25, 0.6 + 0.5])
    # episode statistics over episodes (1, 0 → mean 0.5) and a step weight of 2
    got = gigpo_advantages(**gigpo_example(), episode_stats="episodes", step_weight=2.0)
    close(got, [-0.5 - 0.5, -0.5, -0.5 - 1.0, 0.5 + 0.5, 0.5 + 1.0])


def test_gigpo_mean_std_norm_by_hand():
    # episode term: (1, 1, 0, 0, 0), mean 0.4, unbiased var (0.36·2 + 0.16·3)/4 = 0.3
    sd = math.sqrt(0.3)
    ep_a, ep_b = 0.6 / (sd + EPS), -0.4 / (sd + EPS)
    # step term: s0 (0.5, 0): std √0.125 → ±0.25/√0.125; s1 (1, 0): std √0.5 → ±0.5/√0.5
    s0 = 0.25 / (math.sqrt(0.125) + EPS)
    s1 = 0.5 / (math.sqrt(0.5) + EPS)
    got = gigpo_advantages(**gigpo_example(), mode="mean_std_norm")
    close(got, [ep_b - s0, ep_b, ep_b - s1, ep_a + s0, ep_a + s1])


def test_anchor_groups():
    group = torch.tensor([0, 0, 1, 0, 0])
    keys = ["the cat sat", "the cat sat.", "the cat sat", (1, 2, 3), (1, 2, 3)]
    # exact: same key in another prompt group is another anchor state
    assert anchor_groups(group, keys).tolist() == [0, 1, 2, 3, 3]
    # similar (ratio 22/23 ≈ 0.957 ≥ 0.9): the first two join; tuples compare element-wise
    assert anchor_groups(group, keys, similarity=0.9).tolist() == [0, 0, 1, 2, 2]
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        anchor_groups(group, keys, similarity=0.0)
    with pytest.raises(ValueError, match="one per step"):
        anchor_groups(group, keys[:2])


def test_gigpo_errors():
    example = gigpo_example()
    with pytest.raises(ValueError, match="unknown mode"):
        gigpo_advantages(**example, mode="std_norm")
    example["group_S"] = torch.tensor([5, 6, 5, 5, 5])
    with pytest.raises(ValueError, match="several prompt groups"):
        gigpo_advantages(**example)


def t2po_gigpo_example() -> dict:
    """Spec T7: A visits s0, s1, s2 with rewards 0, 0, 1; B visits s0, s3 with 0, 0; γ = 0.95."""
    return dict(
        group_S=torch.tensor([0, 0, 0, 0, 0]),
        episode_S=torch.tensor([0, 0, 0, 1, 1]),
        step_S=torch.tensor([0, 1, 2, 0, 1]),
        anchor_keys=["s0", "s1", "s2", "s0", "s3"],
        reward_S=torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]),
        gamma=0.95,
    )


def test_gigpo_t7_spec_values():
    # returns A = (0.9025, 0.95, 1), B = (0, 0); A^E = ±(.4, −.6); s0 shared: ±0.45125
    close(gigpo_advantages(**t2po_gigpo_example()), [0.85125, 0.4, 0.4, -1.05125, -0.6])
    close(
        gigpo_advantages(**t2po_gigpo_example(), mode="mean_std_norm"),
        [1.437401, 0.730295, 0.730295, -1.802549, -1.095443],
    )
    close(
        gigpo_advantages(**t2po_gigpo_example(), episode_stats="episodes"),
        [0.95125, 0.5, 0.5, -0.95125, -0.5],
    )


def test_gigpo_invalid_action_penalty_after_returns():
    # A1 is invalid (penalty 0.1): scores (1, 0.9, 1, 0, 0), mean 0.58 → A^E (.42, .32, .42, −.58,
    # −.58); A1's return 0.95 − 0.1 = 0.85 but it is alone in s1 (0); s0 keeps ±0.45125 because
    # the penalty comes after the discounted sums (A0's return stays 0.9025)
    penalty = torch.tensor([0.0, 0.1, 0.0, 0.0, 0.0])
    got = gigpo_advantages(**t2po_gigpo_example(), penalty_S=penalty)
    close(got, [0.87125, 0.32, 0.42, -1.03125, -0.58])
