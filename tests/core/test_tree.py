"""Turn trees: structure, serialisation, row tokens and leaf sampling."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import turn_trees

from at2po.core.tree import Node, TurnTree, sample_leaves, subtree


def hand_tree() -> TurnTree:
    """root(0) → a(1), b(2), c(3); a → a1(4) → a2(6); b → b1(5), b2(7); c is a leaf.

    Ids follow creation order, so BFS visits 0, 1, 2, 3, 4, 5, 7, 6.
    """
    tree = TurnTree([10, 11])
    tree.add_child(0, act_ids=[1, 2], act_logprobs=[-1.0, -3.0], finish="tool_call")  # a, H=2
    tree.add_child(0, act_ids=[3], act_logprobs=[-0.5], finish="tool_call")  # b
    tree.add_child(0, act_ids=[4], act_logprobs=[-0.1], finish="answer", reward=1.0)  # c
    tree.add_child(1, obs_ids=[90, 91], act_ids=[5], act_logprobs=[-0.2], finish="tool_call")
    tree.add_child(2, obs_ids=[92], act_ids=[6], act_logprobs=[-0.3], finish="answer", reward=0.0)
    tree.add_child(4, obs_ids=[93], act_ids=[7, 8], act_logprobs=[-0.4, -0.6], reward=1.0)
    tree.add_child(2, obs_ids=[92], act_ids=[9], act_logprobs=[-0.7], finish="eos", reward=-1.0)
    return tree


def test_derived_structure():
    tree = hand_tree()
    children = [tree.children(i) for i in range(len(tree))]
    assert children == [[1, 2, 3], [4], [5, 7], [], [6], [], [], []]
    assert tree.bfs() == [0, 1, 2, 3, 4, 5, 7, 6]
    assert tree.leaves() == [3, 5, 7, 6]
    assert tree.expandable() == [0, 1, 2, 4]
    assert tree.path(6) == [0, 1, 4, 6]
    assert [tree.depth(i) for i in range(len(tree))] == [0, 1, 1, 1, 2, 2, 3, 2]
    # siblings: a, b, c have 2 each; b's children 1 each; a1, a2 none; root: 3 children − 1
    assert [tree.sibling_count(i) for i in range(len(tree))] == [2, 2, 2, 2, 0, 1, 0, 1]
    assert not tree.is_leaf(0)
    assert tree.is_leaf(3) and not tree.is_leaf(4)


def test_add_child_entropy_defaults():
    tree = hand_tree()
    assert tree.nodes[1].entropy == pytest.approx(2.0)  # mean of 1.0 and 3.0
    assert tree.nodes[6].entropy == pytest.approx(0.5)  # mean of 0.4 and 0.6
    pending = tree.add_child(1)  # nothing sampled yet: inherits the parent's H
    assert pending.entropy == pytest.approx(2.0)
    assert tree.children(1) == [4, pending.id]  # the children cache was refreshed


def test_root_only_tree():
    tree = TurnTree([1])
    assert tree.leaves() == []
    assert tree.expandable() == [0]
    assert tree.sibling_count(0) == 0
    with pytest.raises(ValueError, match="no finished trajectory"):
        sample_leaves(tree, 3, random.Random(0))


def test_row_tokens():
    ids, mask, logps = hand_tree().row_tokens(6)
    assert ids == [1, 2, 90, 91, 5, 93, 7, 8]
    assert mask == [1, 1, 0, 0, 1, 0, 1, 1]
    assert logps == [-1.0, -3.0, 0.0, 0.0, -0.2, 0.0, -0.4, -0.6]


def test_validation_errors():
    with pytest.raises(ValueError, match="act_logprobs"):
        Node(id=1, parent=0, act_ids=[1, 2], act_logprobs=[-1.0])
    with pytest.raises(ValueError, match="finish"):
        Node(id=1, parent=0, finish="timeout")
    with pytest.raises(ValueError, match="root"):
        TurnTree([1], [Node(id=0, parent=3)])
    with pytest.raises(ValueError, match="ids must be"):
        TurnTree([1], [Node(id=0, parent=None), Node(id=2, parent=0)])
    with pytest.raises(ValueError, match="earlier node"):
        TurnTree([1], [Node(id=0, parent=None), Node(id=1, parent=1)])
    with pytest.raises(IndexError):
        TurnTree([1]).add_child(5)
    with pytest.raises(ValueError, match="not a serialised TurnTree"):
        TurnTree.from_dict({"prompt_ids": [1]})
    with pytest.raises(ValueError, match="not a serialised TurnTree"):
        TurnTree.from_dict({"prompt_ids": [1], "nodes": [{"id": 0, "parent": None, "x": 1}]})


def test_json_round_trip_hand_tree():
    tree = hand_tree()
    back = TurnTree.from_json(tree.to_json())
    assert back == tree
    assert back.nodes[6].act_logprobs == [-0.4, -0.6]
    assert back.leaves() == tree.leaves()
    assert back != TurnTree([10, 11])


@settings(max_examples=50, deadline=None)
@given(turn_trees())
def test_json_round_trip(tree):
    back = TurnTree.from_json(tree.to_json())
    assert back == tree
    assert [back.children(i) for i in range(len(back))] == [
        tree.children(i) for i in range(len(tree))
    ]


def test_subtree_renumbers():
    tree = hand_tree()
    pruned, new_id = subtree(tree, [6, 3])
    # kept: root, a, c, a1, a2 in original order → ids 0..4
    assert new_id == [0, 1, -1, 2, 3, -1, 4, -1]
    assert [n.parent for n in pruned.nodes] == [None, 0, 0, 1, 3]
    assert pruned.leaves() == [2, 4]
    assert pruned.row_tokens(4) == tree.row_tokens(6)


def test_sample_leaves_prunes_childless_ancestors():
    tree = hand_tree()
    # With N=1 exactly one leaf survives and every node off its path is gone.
    for seed in range(10):
        pruned, rows = sample_leaves(tree, 1, random.Random(seed))
        assert len(rows) == 1
        assert len(pruned) == len(pruned.path(rows[0]))
    pruned, rows = sample_leaves(tree, 3, random.Random(0))
    assert len(rows) == 3 and rows == pruned.leaves()
    assert len(set(rows)) == 3


def test_sample_leaves_keeps_all_when_equal():
    tree = hand_tree()
    same, rows = sample_leaves(tree, 4, random.Random(0))
    assert same is tree and rows == [3, 5, 7, 6]


def test_sample_leaves_duplicates_rows_not_nodes():
    tree = hand_tree()
    size = len(tree)
    same, rows = sample_leaves(tree, 11, random.Random(3))
    assert same is tree and len(tree) == size
    counts = Counter(rows)
    assert set(counts) == {3, 5, 7, 6}
    # 11 rows over 4 leaves: each leaf 2 or 3 times (cycling through leaves without replacement)
    assert sorted(counts.values()) == [2, 3, 3, 3]
    # BFS leaf order with duplicates next to their original
    assert [leaf for i, leaf in enumerate(rows) if i == 0 or rows[i - 1] != leaf] == [3, 5, 7, 6]


def test_sample_leaves_rejects_bad_n():
    with pytest.raises(ValueError, match="at least 1"):
        sample_leaves(hand_tree(), 0, random.Random(0))


@settings(max_examples=60, deadline=None)
@given(turn_trees(), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_sample_leaves_exactly_n_rows_and_seeded(tree, n, seed):
    pruned, rows = sample_leaves(tree, n, random.Random(seed))
    assert len(rows) == n
    assert set(rows) == set(pruned.leaves())
    counts = Counter(rows).values()
    assert max(counts) - min(counts) <= 1
    again_tree, again_rows = sample_leaves(tree, n, random.Random(seed))
    assert again_rows == rows and again_tree == pruned
    # every kept trajectory is one of the original trajectories
    originals = {tuple(tree.row_tokens(leaf)[0]) for leaf in tree.leaves()}
    assert {tuple(pruned.row_tokens(leaf)[0]) for leaf in rows} <= originals
