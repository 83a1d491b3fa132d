"""Hypothesis strategies for random turn trees, and a helper that re-creates a tree reordered."""

from __future__ import annotations

import random

from hypothesis import strategies as st

from at2po.core.tree import TurnTree

token_lists = st.lists(st.integers(0, 99), max_size=3)


@st.composite
def turn_trees(draw: st.DrawFn, max_nodes: int = 12, integer_rewards: bool = False) -> TurnTree:
    """A random tree of 1..max_nodes turns; every leaf carries a reward, every node an entropy ≥ 0.

    Parents are drawn among the earlier nodes, so shapes range from one chain to a bushy root.
    """
    tree = TurnTree(draw(st.lists(st.integers(0, 99), min_size=1, max_size=4)))
    for node_id in range(1, draw(st.integers(1, max_nodes)) + 1):
        act = draw(token_lists)
        tree.add_child(
            parent=draw(st.integers(0, node_id - 1)),
            obs_ids=draw(token_lists),
            act_ids=act,
            act_logprobs=[draw(st.floats(-5.0, 0.0)) for _ in act],
            entropy=draw(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 3.0)),
            finish="tool_call",
        )
    rewards = st.integers(-1, 1).map(float) if integer_rewards else st.floats(-2.0, 2.0)
    for leaf in tree.leaves():
        tree.nodes[leaf].reward = draw(rewards)
        tree.nodes[leaf].finish = "answer"
    return tree


def reorder(tree: TurnTree, rng: random.Random) -> tuple[TurnTree, list[int]]:
    """The same tree with its nodes created in another order (children shuffled, then BFS).

    Returns the new tree and, for each old node id, its new id.
    """
    order, frontier = [0], [0]
    while frontier:
        kids = [c for n in frontier for c in tree.children(n)]
        rng.shuffle(kids)
        order += kids
        frontier = kids
    new_id = [0] * len(tree)
    for position, old in enumerate(order):
        new_id[old] = position
    out = TurnTree(tree.prompt_ids)
    for old in order[1:]:
        node = tree.nodes[old]
        out.add_child(
            parent=new_id[node.parent],  # type: ignore[index]
            obs_ids=node.obs_ids,
            act_ids=node.act_ids,
            act_logprobs=node.act_logprobs,
            entropy=node.entropy,
            finish=node.finish,
            reward=node.reward,
        )
    return out, new_id
