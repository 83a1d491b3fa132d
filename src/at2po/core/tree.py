"""Turn trees: the data model every rollout produces and every credit estimator reads.

A rollout for one prompt is a tree whose nodes are turns (DESIGN §3). Node 0 is the root and holds
no tokens of its own (the prompt lives on the tree). A non-root node holds the observation tokens
that arrived before its turn (``obs_ids``, loss mask 0) followed by the tokens the policy sampled in
that turn (``act_ids``, loss mask 1). A leaf is a finished trajectory and the path root→leaf is one
training row. Children, leaves, paths and sibling counts are derived from the ``parent`` links.

Sampling exactly N rows per tree (:func:`sample_leaves`):

* more leaves than N: N leaves are drawn uniformly without replacement; every other leaf is
  removed together with the ancestors it leaves childless (never the root), so values are computed
  over the retained tree only;
* fewer leaves than N: every leaf is kept once and the missing rows repeat leaves drawn uniformly
  without replacement (cycling when more than one extra copy per leaf is needed). Duplicates are
  extra *rows* only: the tree is not changed, so a duplicate leaves every node value as it was and
  weighs in the loss as one more row of the same trajectory. (The authors' code instead appends
  copies of the last leaf as extra children, which over-weights that trajectory in the parent's
  value; see docs/algorithms.md.)
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

FINISH_REASONS = ("tool_call", "answer", "eos", "length", "error")
"""Why a turn ended: a tool call, a final answer, end of sequence, the token budget, or a fault."""

ROOT = 0


@dataclass
class Node:
    """One turn of a trajectory.

    Attributes:
        id: index of the node in its tree (0 is the root).
        parent: id of the parent node, ``None`` for the root.
        obs_ids: tokens inserted before this turn (tool output, warnings); never trained on.
        act_ids: tokens the policy sampled in this turn, stop strings and EOS included.
        act_logprobs: behaviour log-probs of ``act_ids`` (same length).
        entropy: H(n), mean negative log-prob of ``act_ids`` (0 for the root).
        finish: why the turn ended, one of :data:`FINISH_REASONS` (``None`` for the root or while
            the turn is still being generated).
        reward: outcome reward of a finished trajectory (leaves only).
        scores: named sub-scores of that reward, for logging (leaves only; e.g. ``em``, ``f1``).
        picks: the expansion score H − α·b this node had each time expansion picked it for
            re-sampling (empty when never picked; a picked root means a fresh first turn).
        act_forced: True at each act token that T²PO's thinking intervention forced instead of
            sampling (empty: none forced). Forced tokens get loss mask 0 unless training on them
            is asked for (:func:`at2po.core.rows.build_rows`).
        act_uncertainty: T²PO's M_t of each act token, ``None`` on forced ones (empty when the
            rollout did not compute it).
        turn_score: Φ, the floored geometric mean of the turn's M_t (``None`` when not computed).
        redraws: draws of this turn that T²PO's turn resampling discarded before keeping this one.
        intervention: why the thinking intervention fired in this turn (``stagnation``/``cap``),
            or ``None``.
        invalid: the environment refused this turn's action (invalid-action penalty).
    """

    id: int
    parent: int | None
    obs_ids: list[int] = field(default_factory=list)
    act_ids: list[int] = field(default_factory=list)
    act_logprobs: list[float] = field(default_factory=list)
    entropy: float = 0.0
    finish: str | None = None
    reward: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    picks: list[float] = field(default_factory=list)
    act_forced: list[bool] = field(default_factory=list)
    act_uncertainty: list[float | None] = field(default_factory=list)
    turn_score: float | None = None
    redraws: int = 0
    intervention: str | None = None
    invalid: bool = False

    def __post_init__(self) -> None:
        if len(self.act_ids) != len(self.act_logprobs):
            raise ValueError(
                f"node {self.id}: {len(self.act_ids)} act_ids but "
                f"{len(self.act_logprobs)} act_logprobs; they must match one to one"
            )
        for name in ("act_forced", "act_uncertainty"):
            if getattr(self, name) and len(getattr(self, name)) != len(self.act_ids):
                raise ValueError(
                    f"node {self.id}: {len(getattr(self, name))} {name} for "
                    f"{len(self.act_ids)} act_ids; give one per act token or none"
                )
        if self.finish is not None and self.finish not in FINISH_REASONS:
            raise ValueError(
                f"node {self.id}: finish={self.finish!r} is not one of {FINISH_REASONS}"
            )

    def forced_positions(self) -> list[int]:
        """Indices of the act tokens the thinking intervention forced."""
        return [i for i, forced in enumerate(self.act_forced) if forced]


class TurnTree:
    """A prompt and the turns sampled from it; node 0 is the root.

    Nodes are only ever appended, so ids are stable while a rollout grows the tree.
    """

    def __init__(self, prompt_ids: Sequence[int], nodes: Iterable[Node] | None = None) -> None:
        self.prompt_ids: list[int] = list(prompt_ids)
        self.nodes: list[Node] = list(nodes) if nodes is not None else [Node(id=ROOT, parent=None)]
        self._children: list[list[int]] | None = None
        self._validate()

    def _validate(self) -> None:
        if not self.nodes or self.nodes[0].parent is not None:
            raise ValueError("a TurnTree needs node 0 as its root (parent=None)")
        for i, node in enumerate(self.nodes):
            if node.id != i:
                raise ValueError(f"node at position {i} has id {node.id}; ids must be 0..n-1")
            if i and (node.parent is None or not 0 <= node.parent < i):
                raise ValueError(
                    f"node {i} has parent {node.parent}; a parent must be an earlier node"
                )

    # ------------------------------------------------------------------ growth
    def add_child(
        self,
        parent: int,
        obs_ids: Sequence[int] = (),
        act_ids: Sequence[int] = (),
        act_logprobs: Sequence[float] = (),
        entropy: float | None = None,
        finish: str | None = None,
        reward: float | None = None,
    ) -> Node:
        """Append a new node under ``parent`` and return it.

        ``entropy`` defaults to the mean negative log-prob of ``act_logprobs`` (or the parent's
        entropy when the node has not sampled anything yet, as the reference rollout does).
        """
        if not 0 <= parent < len(self.nodes):
            raise IndexError(
                f"parent {parent} is not a node of this tree ({len(self.nodes)} nodes)"
            )
        if entropy is None:
            entropy = (
                -sum(act_logprobs) / len(act_logprobs)
                if act_logprobs
                else self.nodes[parent].entropy
            )
        node = Node(
            id=len(self.nodes),
            parent=parent,
            obs_ids=list(obs_ids),
            act_ids=list(act_ids),
            act_logprobs=[float(x) for x in act_logprobs],
            entropy=float(entropy),
            finish=finish,
            reward=reward,
        )
        self.nodes.append(node)
        self._children = None
        return node

    # ---------------------------------------------------------------- structure
    def __len__(self) -> int:
        return len(self.nodes)

    def children(self, node_id: int) -> list[int]:
        """Ids of the children of ``node_id``, in creation order."""
        if self._children is None:
            kids: list[list[int]] = [[] for _ in self.nodes]
            for node in self.nodes[1:]:
                kids[node.parent].append(node.id)  # type: ignore[index]
            self._children = kids
        return self._children[node_id]

    def is_leaf(self, node_id: int) -> bool:
        """A leaf is a non-root node without children (the root is never a leaf)."""
        return node_id != ROOT and not self.children(node_id)

    def bfs(self, start: int = ROOT) -> list[int]:
        """Ids of the subtree of ``start``, breadth-first (children in creation order)."""
        order, queue = [], deque([start])
        while queue:
            node_id = queue.popleft()
            order.append(node_id)
            queue.extend(self.children(node_id))
        return order

    def leaves(self) -> list[int]:
        """Leaf ids in breadth-first order."""
        return [i for i in self.bfs() if self.is_leaf(i)]

    def expandable(self) -> list[int]:
        """Expansion candidates: every non-leaf node, root included, in breadth-first order."""
        return [i for i in self.bfs() if not self.is_leaf(i)]

    def path(self, node_id: int) -> list[int]:
        """Ids from the root to ``node_id``, both included."""
        out = [node_id]
        while self.nodes[out[-1]].parent is not None:
            out.append(self.nodes[out[-1]].parent)  # type: ignore[arg-type]
        return out[::-1]

    def sibling_count(self, node_id: int) -> int:
        """b(n): number of siblings of n; for the root, number of its children minus one."""
        parent = self.nodes[node_id].parent
        group = self.children(ROOT if parent is None else parent)
        return max(0, len(group) - 1)

    def depth(self, node_id: int) -> int:
        """Number of turns from the root to ``node_id`` (root 0, first turns 1)."""
        return len(self.path(node_id)) - 1

    def row_tokens(self, leaf_id: int) -> tuple[list[int], list[int], list[float]]:
        """Response tokens of the row ending at ``leaf_id``: (ids, loss mask, behaviour log-probs).

        Observation tokens get mask 0 and log-prob 0; sampled tokens mask 1 and their log-prob;
        forced tokens (T²PO) mask 0 and the model's log-prob of them.
        """
        ids: list[int] = []
        mask: list[int] = []
        logps: list[float] = []
        for node_id in self.path(leaf_id)[1:]:
            node = self.nodes[node_id]
            ids += node.obs_ids + node.act_ids
            mask += [0] * len(node.obs_ids) + [int(not f) for f in _forced_flags(node)]
            logps += [0.0] * len(node.obs_ids) + node.act_logprobs
        return ids, mask, logps

    # ----------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        return {"prompt_ids": self.prompt_ids, "nodes": [asdict(n) for n in self.nodes]}

    @classmethod
    def from_dict(cls, data: dict) -> TurnTree:
        try:
            nodes = [Node(**n) for n in data["nodes"]]
            return cls(data["prompt_ids"], nodes)
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a serialised TurnTree: {err}") from err

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> TurnTree:
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TurnTree) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        n_leaves = len(self.leaves())
        return (
            f"TurnTree(prompt={len(self.prompt_ids)} tokens, nodes={len(self)}, leaves={n_leaves})"
        )


def _forced_flags(node: Node) -> list[bool]:
    """Whether each act token of ``node`` was forced (all False when none was recorded)."""
    return node.act_forced or [False] * len(node.act_ids)


def subtree(tree: TurnTree, keep_leaves: Iterable[int]) -> tuple[TurnTree, list[int]]:
    """The tree restricted to the paths of ``keep_leaves``, renumbered in the original order.

    Returns the new tree and, for each old node id, its new id (−1 where the node was dropped).
    """
    keep = {ROOT}
    for leaf in keep_leaves:
        keep.update(tree.path(leaf))
    new_id = [-1] * len(tree)
    nodes: list[Node] = []
    for node in tree.nodes:
        if node.id in keep:
            new_id[node.id] = len(nodes)
            parent = None if node.parent is None else new_id[node.parent]
            nodes.append(
                replace(
                    node,
                    id=len(nodes),
                    parent=parent,
                    obs_ids=list(node.obs_ids),
                    act_ids=list(node.act_ids),
                    act_logprobs=list(node.act_logprobs),
                    scores=dict(node.scores),
                    picks=list(node.picks),
                    act_forced=list(node.act_forced),
                    act_uncertainty=list(node.act_uncertainty),
                )
            )
    return TurnTree(tree.prompt_ids, nodes), new_id


def sample_leaves(tree: TurnTree, n: int, rng: random.Random) -> tuple[TurnTree, list[int]]:
    """Keep exactly ``n`` rows for ``tree`` (see the module docstring for the rules).

    Returns the (possibly pruned) tree and the leaf id of each of the ``n`` rows, in breadth-first
    leaf order with duplicates next to their original.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    leaves = tree.leaves()
    if not leaves:
        raise ValueError("the tree has no finished trajectory (no leaf) to sample rows from")
    if len(leaves) > n:
        chosen = set(rng.sample(leaves, n))
        pruned, _ = subtree(tree, [leaf for leaf in leaves if leaf in chosen])
        return pruned, pruned.leaves()
    copies = {leaf: 1 for leaf in leaves}
    extra = n - len(leaves)
    while extra > 0:
        for leaf in rng.sample(leaves, min(extra, len(leaves))):
            copies[leaf] += 1
        extra -= min(extra, len(leaves))
    return tree, [leaf for leaf in leaves for _ in range(copies[leaf])]
