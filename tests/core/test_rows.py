"""Training rows built from turn trees: layout, masks, truncation and per-token advantages."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import turn_trees

from at2po.core.credit import Forest, tree_credit
from at2po.core.rows import broadcast_row_advantages, build_rows, scatter_turn_advantages
from at2po.core.tree import TurnTree, sample_leaves

PAD = 99


def two_row_tree() -> TurnTree:
    """prompt [1, 2]; root → a(1) → a'(3); root → b(2) → b'(4)."""
    tree = TurnTree([1, 2])
    tree.add_child(0, act_ids=[10, 11], act_logprobs=[-0.1, -0.2], finish="tool_call")
    tree.add_child(0, act_ids=[12], act_logprobs=[-0.4], finish="tool_call")
    tree.add_child(1, obs_ids=[50, 51], act_ids=[13], act_logprobs=[-0.3], reward=1.0)
    tree.add_child(2, obs_ids=[52], act_ids=[14, 15], act_logprobs=[-0.5, -0.6], reward=0.0)
    return tree


ADV_BJ = torch.tensor([[0.5, 0.25], [-1.0, -2.0]])


def test_layout_by_hand():
    rows = build_rows([two_row_tree()], [[3, 4]], ADV_BJ, pad_id=PAD)
    # row 0: prompt 1 2 | a: 10 11 | a': obs 50 51, act 13
    # row 1: prompt 1 2 | b: 12    | b': obs 52, act 14 15 | pad
    assert rows.input_ids_BT.tolist() == [[1, 2, 10, 11, 50, 51, 13], [1, 2, 12, 52, 14, 15, PAD]]
    assert rows.attention_mask_BT.tolist() == [[1] * 7, [1] * 6 + [0]]
    assert rows.loss_mask_BT.tolist() == [[0, 0, 1, 1, 0, 0, 1], [0, 0, 1, 0, 1, 1, 0]]
    assert rows.turn_BT.tolist() == [[-1, -1, 0, 0, -1, -1, 1], [-1, -1, 0, -1, 1, 1, -1]]
    torch.testing.assert_close(
        rows.old_logp_BT,
        torch.tensor([[0, 0, -0.1, -0.2, 0, 0, -0.3], [0, 0, -0.4, 0, -0.5, -0.6, 0]]),
    )
    torch.testing.assert_close(
        rows.adv_BT,
        torch.tensor([[0, 0, 0.5, 0.5, 0, 0, 0.25], [0, 0, -1.0, 0, -2.0, -2.0, 0]]),
    )
    assert rows.tree_id_B.tolist() == [0, 0]
    assert rows.prompt_len_B.tolist() == [2, 2]
    assert rows.node_paths == [[1, 3], [2, 4]]
    assert rows.loss_mask_BT.dtype == torch.float32 and rows.input_ids_BT.dtype == torch.long


def test_several_trees_and_duplicate_rows():
    other = TurnTree([7, 7, 7])
    other.add_child(0, act_ids=[20], act_logprobs=[-1.0], reward=1.0)
    adv_BJ = torch.tensor([[0.5, 0.25], [-1.0, -2.0], [3.0, 0.0], [3.0, 0.0]])
    rows = build_rows([two_row_tree(), other], [[3, 4], [1, 1]], adv_BJ, pad_id=PAD)
    assert rows.tree_id_B.tolist() == [0, 0, 1, 1]
    assert rows.prompt_len_B.tolist() == [2, 2, 3, 3]
    assert rows.input_ids_BT[2].tolist() == [7, 7, 7, 20, PAD, PAD, PAD]
    assert rows.adv_BT[3].tolist() == [0, 0, 0, 3.0, 0, 0, 0]
    assert rows.node_paths[2:] == [[1], [1]]


def test_max_len_pads_and_truncates_the_response():
    rows = build_rows([two_row_tree()], [[3, 4]], ADV_BJ, pad_id=PAD, max_len=5)
    assert rows.input_ids_BT.tolist() == [[1, 2, 10, 11, 50], [1, 2, 12, 52, 14]]
    assert rows.turn_BT.tolist() == [[-1, -1, 0, 0, -1], [-1, -1, 0, -1, 1]]
    assert rows.attention_mask_BT.tolist() == [[1] * 5, [1] * 5]
    # b' was cut mid-turn: its kept token keeps the turn's advantage
    assert rows.adv_BT[1].tolist() == [0, 0, -1.0, 0, -2.0]
    wide = build_rows([two_row_tree()], [[3, 4]], ADV_BJ, pad_id=PAD, max_len=9)
    assert wide.input_ids_BT.shape == (2, 9)
    assert wide.input_ids_BT[0, 7:].tolist() == [PAD, PAD]
    with pytest.raises(ValueError, match="prompts are never truncated"):
        build_rows([two_row_tree()], [[3, 4]], ADV_BJ, pad_id=PAD, max_len=1)


def test_per_row_advantages_broadcast_over_the_loss_mask():
    rows = build_rows([two_row_tree()], [[3, 4]], torch.tensor([0.5, -1.0]), pad_id=PAD)
    assert rows.adv_BT.tolist() == [[0, 0, 0.5, 0.5, 0, 0, 0.5], [0, 0, -1.0, 0, -1.0, -1.0, 0]]
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert broadcast_row_advantages(torch.tensor([2.0, -3.0]), mask).tolist() == [
        [0, 2, 2],
        [-3, 0, 0],
    ]


def test_scatter_turn_advantages():
    turn_BT = torch.tensor([[-1, 0, 0, -1, 2], [1, 1, -1, -1, -1]])
    adv_BJ = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert scatter_turn_advantages(adv_BJ, turn_BT).tolist() == [[0, 1, 1, 0, 3], [5, 5, 0, 0, 0]]


def test_errors():
    tree = two_row_tree()
    with pytest.raises(ValueError, match="do not fit 2 rows"):
        build_rows([tree], [[3, 4]], torch.zeros(3), pad_id=PAD)
    with pytest.raises(ValueError, match="cover 1 turns"):
        build_rows([tree], [[3, 4]], torch.zeros(2, 1), pad_id=PAD)
    with pytest.raises(ValueError, match="not a leaf"):
        build_rows([tree], [[1, 4]], ADV_BJ, pad_id=PAD)
    with pytest.raises(ValueError, match="one list per tree"):
        build_rows([tree], [[3], [4]], ADV_BJ, pad_id=PAD)
    with pytest.raises(ValueError, match="no rows"):
        build_rows([tree], [[]], torch.zeros(0), pad_id=PAD)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(turn_trees(), st.integers(1, 8), st.integers(0, 2**16)), min_size=1, max_size=3
    )
)
def test_rows_match_paths_and_credit(batch):
    sampled = [sample_leaves(tree, n, random.Random(seed)) for tree, n, seed in batch]
    trees = [tree for tree, _ in sampled]
    leaf_rows = [leaves for _, leaves in sampled]
    credit = tree_credit(Forest.from_trees(trees, leaf_rows))
    rows = build_rows(trees, leaf_rows, credit.adv_BJ, pad_id=PAD)
    width = rows.input_ids_BT.shape[1]
    b = 0
    for f, (tree, leaves) in enumerate(sampled):
        for leaf in leaves:
            ids, mask, logps = tree.row_tokens(leaf)
            prompt = len(tree.prompt_ids)
            length = prompt + len(ids)
            assert rows.input_ids_BT[b].tolist() == tree.prompt_ids + ids + [PAD] * (width - length)
            assert rows.attention_mask_BT[b].tolist() == [1] * length + [0] * (width - length)
            expected_mask = [0] * prompt + mask + [0] * (width - length)
            assert rows.loss_mask_BT[b].tolist() == expected_mask
            torch.testing.assert_close(
                rows.old_logp_BT[b],
                torch.tensor([0.0] * prompt + logps + [0.0] * (width - length)),
            )
            path = tree.path(leaf)[1:]
            assert rows.node_paths[b] == path
            assert int(rows.tree_id_B[b]) == f
            expected_turns = [-1] * prompt
            for j, node_id in enumerate(path):
                node = tree.nodes[node_id]
                expected_turns += [-1] * len(node.obs_ids) + [j] * len(node.act_ids)
            assert rows.turn_BT[b].tolist() == expected_turns + [-1] * (width - length)
            for j in range(len(path)):
                on_turn = rows.adv_BT[b][rows.turn_BT[b] == j]
                assert bool((on_turn == credit.adv_BJ[b, j].float()).all())
            assert bool((rows.adv_BT[b][rows.turn_BT[b] < 0] == 0).all())
            b += 1
    assert b == len(rows.node_paths) == rows.input_ids_BT.shape[0]


def test_forced_tokens_are_masked_out_of_the_loss_unless_asked():
    tree = TurnTree([1, 2])
    first = tree.add_child(0, act_ids=[5, 6, 7], act_logprobs=[-0.1, -0.2, -0.3])
    first.act_forced = [False, True, False]
    tree.add_child(first.id, obs_ids=[8], act_ids=[9, 10], act_logprobs=[-0.4, -0.5])
    adv = torch.tensor([[1.0, 2.0]])
    rows = build_rows([tree], [[2]], adv, pad_id=0)
    # prompt 1 2 | 5 6* 7 | obs 8 | 9 10   (* forced)
    assert rows.loss_mask_BT.tolist() == [[0, 0, 1, 0, 1, 0, 1, 1]]
    assert rows.adv_BT.tolist() == [[0, 0, 1, 1, 1, 0, 2, 2]]
    assert tree.row_tokens(2)[1] == [1, 0, 1, 0, 1, 1]
    authors = build_rows([tree], [[2]], adv, pad_id=0, train_forced_tokens=True)
    assert authors.loss_mask_BT.tolist() == [[0, 0, 1, 1, 1, 0, 1, 1]]
    # the forced token keeps the model's log-prob of it either way (diagnostics)
    assert authors.old_logp_BT[0, 3] == rows.old_logp_BT[0, 3] == pytest.approx(-0.2)
