"""Credit assignment: turn-tree values and advantages (AT²PO) and the baselines' group estimators.

**Tree credit** (AT²PO arXiv 2601.04767 §4.2; authors' code, reference spec §3). A batch of trees is
flattened into one :class:`Forest` (global node arrays plus the training rows) and solved level by
level from the deepest turns up, so the work is a handful of tensor ops per depth level.

1. Leaf values, per tree over its N rows (``leaf_norm``):
   ``zscore``: V(ℓ) = (r_ℓ − μ) / (σ + ε), μ and σ the mean and *population* std (ddof 0) of the
   tree's N row rewards, ε = 1e-6; a tree whose rewards are all equal gets V = 0 exactly.
   ``none``: V(ℓ) = r_ℓ.
   Rows that duplicate a leaf (:func:`at2po.core.tree.sample_leaves` with fewer leaves than N) count
   in μ and σ, so the normalisation matches the group the loss sees; the duplicate is not a node,
   so it does not change any value below.
2. Node values, for every non-leaf n over its children c (``value_mode``):
   ``entropy_softmax`` V(n) = Σ_c softmax_c(H(c)) · V(c)    (authors' code, ``child_softmax``)
   ``entropy_linear``  V(n) = Σ_c H(c)/Σ_c' H(c') · V(c)    (the paper, §4.2); uniform when
                       Σ_c' H(c') = 0 (every child sampled with probability one)
   ``mean``            V(n) = mean_c V(c)                    (``child_mean``)
   ``leaf_mean``       V(n) = mean of V(ℓ) over the distinct leaves ℓ below n (TreeRL style)
   A node with a single child copies its value, so an un-branched chain carries its leaf value to
   every turn. (The authors give 0 to a non-leaf without valued children; here every leaf must
   have a row, so every non-leaf has valued children.)
3. Node advantages (``adv_mode``), root: A = V(root) in every mode (it has no tokens):
   ``value`` A = V (default, the paper's best); ``diff_parent`` A = V − V(parent);
   ``diff_root`` A = V − V(root); ``diff_root_parent`` A = (V − V(root)) + (V − V(parent));
   ``leaf_grpo`` ignores the tree: row b of tree i gets A_b = (r_b − mean_i r) / (std_i r + ε) with
   the *unbiased* std over tree i's N rows (authors' ``vanilla`` mode with ``adv_estimator=grpo``),
   on every one of its turns.
4. Every turn j of row b gets the advantage of the node at depth j + 1 on its path (``adv_BJ``);
   :mod:`at2po.core.rows` spreads it over that turn's sampled tokens.

**Group estimators** for the chain baselines, on flat per-row tensors: :func:`grpo_advantages`,
:func:`tree_grpo_advantages`, :func:`gigpo_advantages`, and DAPO's :func:`dapo_keep_mask`.
"""

from __future__ import annotations

import difflib
from array import array
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from at2po.core.tree import TurnTree

VALUE_MODES = ("entropy_softmax", "entropy_linear", "mean", "leaf_mean")
ADV_MODES = ("value", "diff_parent", "diff_root", "diff_root_parent", "leaf_grpo")
LEAF_NORMS = ("zscore", "none")
GIGPO_MODES = ("mean_norm", "mean_std_norm")
EPS = 1e-6


# ------------------------------------------------------------------------------------ forest


@dataclass(frozen=True)
class Forest:
    """A batch of turn trees flattened into global node arrays (G nodes, F trees, B rows, J turns).

    Node ``i`` of tree ``f`` has global id ``node_offset_F[f] + i``; rows are listed tree by tree.

    Attributes:
        parent_G: global id of each node's parent, −1 for roots.
        depth_G: turns from the root (roots 0).
        entropy_G: H(n) (float64; roots 0).
        tree_G: tree index of each node.
        is_leaf_G: True on leaves.
        node_offset_F: global id of each tree's root.
        levels: global ids of the nodes at depth D, D−1, …, 1 (deepest first).
        row_leaf_B: global id of the leaf each row ends in.
        row_tree_B: tree index of each row.
        row_reward_B: outcome reward of each row (float64).
        path_BJ: global id of turn j of row b (its node at depth j + 1), −1 past the row's leaf.
    """

    parent_G: torch.Tensor
    depth_G: torch.Tensor
    entropy_G: torch.Tensor
    tree_G: torch.Tensor
    is_leaf_G: torch.Tensor
    node_offset_F: torch.Tensor
    levels: tuple[torch.Tensor, ...]
    row_leaf_B: torch.Tensor
    row_tree_B: torch.Tensor
    row_reward_B: torch.Tensor
    path_BJ: torch.Tensor

    @classmethod
    def from_trees(cls, trees: Sequence[TurnTree], leaf_rows: Sequence[Sequence[int]]) -> Forest:
        """Flatten ``trees``; ``leaf_rows[f]`` lists the leaf id of each row of tree ``f``.

        Every leaf must appear in its tree's rows and carry a reward, as after
        :func:`at2po.core.tree.sample_leaves`.
        """
        if len(trees) != len(leaf_rows):
            raise ValueError(
                f"{len(trees)} trees but leaf rows for {len(leaf_rows)}; give one list per tree"
            )
        if not trees:
            raise ValueError("no trees to flatten; give at least one tree and its rows")
        parents: list[int] = []
        entropies: list[float] = []
        offsets: list[int] = []
        row_leaves: list[int] = []
        row_trees: list[int] = []
        rewards: list[float | None] = []
        for f, (tree, rows) in enumerate(zip(trees, leaf_rows, strict=True)):
            nodes = tree.nodes
            if not rows:
                raise ValueError(f"tree {f} has no rows; sample its leaves first (sample_leaves)")
            if min(rows) < 0 or max(rows) >= len(nodes):
                raise ValueError(f"tree {f}: a row leaf is not a node id (0..{len(nodes) - 1})")
            offset = len(parents)
            offsets.append(offset)
            parents += [-1] + [node.parent + offset for node in nodes[1:]]  # type: ignore[operator]
            entropies += [0.0] + [node.entropy for node in nodes[1:]]
            row_leaves += [leaf + offset for leaf in rows]
            row_trees += [f] * len(rows)
            rewards += [nodes[leaf].reward for leaf in rows]

        parent_G = torch.frombuffer(array("q", parents), dtype=torch.long)  # fast int conversion
        node_offset_F = torch.tensor(offsets, dtype=torch.long)
        sizes_F = torch.tensor([len(t) for t in trees], dtype=torch.long)
        has_parent = parent_G >= 0
        has_child = torch.zeros(len(parents), dtype=torch.bool)
        has_child[parent_G[has_parent]] = True
        is_leaf_G = has_parent & ~has_child
        row_leaf_B = torch.tensor(row_leaves, dtype=torch.long)
        row_tree_B = torch.tensor(row_trees, dtype=torch.long)
        _check_rows(is_leaf_G, node_offset_F, row_leaf_B, row_tree_B)
        row_reward_B = _reward_tensor(rewards, node_offset_F, row_leaf_B, row_tree_B)
        entropy_G = torch.tensor(entropies, dtype=torch.float64)
        if not torch.isfinite(entropy_G).all():
            raise ValueError("a node entropy is NaN or infinite; H(n) must be a finite mean NLL")
        depth_G = _depths(parent_G)
        levels = tuple(
            torch.nonzero(depth_G == d).flatten() for d in range(int(depth_G.max()), 0, -1)
        )
        return cls(
            parent_G=parent_G,
            depth_G=depth_G,
            entropy_G=entropy_G,
            tree_G=torch.repeat_interleave(torch.arange(len(trees)), sizes_F),
            is_leaf_G=is_leaf_G,
            node_offset_F=node_offset_F,
            levels=levels,
            row_leaf_B=row_leaf_B,
            row_tree_B=row_tree_B,
            row_reward_B=row_reward_B,
            path_BJ=_paths(parent_G, depth_G, row_leaf_B),
        )

    def per_tree(self, x_G: torch.Tensor) -> list[torch.Tensor]:
        """Split a per-node tensor into one tensor per tree, indexed by local node id."""
        sizes = torch.bincount(self.tree_G, minlength=len(self.node_offset_F)).tolist()
        return list(torch.split(x_G, sizes))


def _check_rows(
    is_leaf_G: torch.Tensor,
    node_offset_F: torch.Tensor,
    row_leaf_B: torch.Tensor,
    row_tree_B: torch.Tensor,
) -> None:
    """Every row ends in a leaf and every leaf has a row."""
    not_leaf = torch.nonzero(~is_leaf_G[row_leaf_B]).flatten()
    if len(not_leaf):
        raise ValueError(
            f"{_row_name(int(not_leaf[0]), node_offset_F, row_leaf_B, row_tree_B)} "
            "is not a leaf of the tree"
        )
    covered_G = torch.zeros_like(is_leaf_G)
    covered_G[row_leaf_B] = True
    missing = torch.nonzero(is_leaf_G & ~covered_G).flatten()
    if len(missing):
        f = int(torch.searchsorted(node_offset_F, missing[0], right=True)) - 1
        raise ValueError(
            f"tree {f}: leaf {int(missing[0] - node_offset_F[f])} has no row; pass the leaf list "
            "that sample_leaves returned together with the (possibly pruned) tree it returned"
        )


def _reward_tensor(
    rewards: list[float | None],
    node_offset_F: torch.Tensor,
    row_leaf_B: torch.Tensor,
    row_tree_B: torch.Tensor,
) -> torch.Tensor:
    """The rows' rewards as float64, refusing a missing or non-finite one."""
    if None in rewards:
        bad = rewards.index(None)
    else:
        reward_B = torch.tensor(rewards, dtype=torch.float64)
        finite_B = torch.isfinite(reward_B)
        if bool(finite_B.all()):
            return reward_B
        bad = int(torch.nonzero(~finite_B)[0])
    raise ValueError(
        f"{_row_name(bad, node_offset_F, row_leaf_B, row_tree_B)} has reward {rewards[bad]!r}; "
        "score every leaf first"
    )


def _row_name(
    b: int, node_offset_F: torch.Tensor, row_leaf_B: torch.Tensor, row_tree_B: torch.Tensor
) -> str:
    f = int(row_tree_B[b])
    return f"tree {f}: row leaf {int(row_leaf_B[b] - node_offset_F[f])}"


def _depths(parent_G: torch.Tensor) -> torch.Tensor:
    """Depth of every node by pointer jumping: O(log D) gathers instead of a walk per node."""
    depth = (parent_G >= 0).long()
    hop = parent_G.clone()
    while bool((hop >= 0).any()):
        live = hop >= 0
        safe = hop.clamp(min=0)
        depth = depth + torch.where(live, depth[safe], 0)
        hop = torch.where(live, hop[safe], -1)
    return depth


def _paths(parent_G: torch.Tensor, depth_G: torch.Tensor, leaf_B: torch.Tensor) -> torch.Tensor:
    """``path_BJ[b, j]`` = ancestor of ``leaf_B[b]`` at depth j + 1, −1 beyond the leaf.

    Walks all rows up one level per step; a node at depth 0 (a root, where every walk ends) is
    written to a spare last column that is dropped.
    """
    n_turns = int(depth_G[leaf_B].max())
    path_BJ = torch.full((len(leaf_B), n_turns + 1), -1, dtype=torch.long)
    node = leaf_B
    for _ in range(n_turns):
        depth = depth_G[node]
        column = torch.where(depth > 0, depth - 1, n_turns)
        path_BJ.scatter_(1, column[:, None], node[:, None])
        node = parent_G[node].clamp(min=0)
    return path_BJ[:, :n_turns]


# ---------------------------------------------------------------------------------- tree credit


@dataclass(frozen=True)
class TreeCredit:
    """Values and advantages of a :class:`Forest`.

    Attributes:
        value_G: V(n) for every node.
        adv_G: A(n) for every node (``leaf_grpo``: the row advantage on leaves, 0 elsewhere).
        adv_BJ: advantage of turn j of row b, 0 past the row's last turn.
    """

    value_G: torch.Tensor
    adv_G: torch.Tensor
    adv_BJ: torch.Tensor


def tree_credit(
    forest: Forest,
    value_mode: str = "entropy_softmax",
    adv_mode: str = "value",
    leaf_norm: str = "zscore",
    eps: float = EPS,
) -> TreeCredit:
    """Leaf values → node values → node advantages → per-row turn advantages (module docstring)."""
    _check_choice("value_mode", value_mode, VALUE_MODES)
    _check_choice("adv_mode", adv_mode, ADV_MODES)
    value_G = node_values(forest, leaf_values(forest, leaf_norm, eps), value_mode)
    if adv_mode == "leaf_grpo":
        row_adv_B = grpo_advantages(forest.row_reward_B, forest.row_tree_B, eps=eps)
        adv_G = torch.zeros_like(value_G).index_put_((forest.row_leaf_B,), row_adv_B)
        adv_BJ = torch.where(forest.path_BJ >= 0, row_adv_B[:, None], 0.0)
        return TreeCredit(value_G=value_G, adv_G=adv_G, adv_BJ=adv_BJ)
    adv_G = node_advantages(forest, value_G, adv_mode)
    return TreeCredit(value_G=value_G, adv_G=adv_G, adv_BJ=turn_advantages(forest, adv_G))


def leaf_values(forest: Forest, leaf_norm: str = "zscore", eps: float = EPS) -> torch.Tensor:
    """Per-node tensor holding V(ℓ) on leaves (step 1 of the module docstring) and 0 elsewhere."""
    _check_choice("leaf_norm", leaf_norm, LEAF_NORMS)
    reward_B = forest.row_reward_B
    if leaf_norm == "zscore":
        mean_B, std_B, _ = group_stats(reward_B, forest.row_tree_B, unbiased=False)
        spread_B = _group_range(reward_B, forest.row_tree_B)
        reward_B = torch.where(spread_B > 0, (reward_B - mean_B) / (std_B + eps), 0.0)
    return torch.zeros_like(forest.entropy_G).index_put_((forest.row_leaf_B,), reward_B)


def node_values(forest: Forest, leaf_value_G: torch.Tensor, value_mode: str) -> torch.Tensor:
    """Back leaf values up to every non-leaf node, deepest level first (step 2)."""
    _check_choice("value_mode", value_mode, VALUE_MODES)
    n_nodes = len(forest.parent_G)
    value_G = leaf_value_G.clone()
    leaf_count_G = forest.is_leaf_G.to(torch.float64)
    for child in forest.levels:
        parent = forest.parent_G[child]
        if value_mode == "leaf_mean":
            # weighting each child by its number of leaves averages the leaves below the parent
            weight = leaf_count_G[child]
            leaf_count_G.index_add_(0, parent, weight)
        else:
            weight = _child_weights(value_mode, forest.entropy_G[child], parent, n_nodes)
        num = torch.zeros(n_nodes, dtype=torch.float64).index_add_(
            0, parent, weight * value_G[child]
        )
        den = torch.zeros(n_nodes, dtype=torch.float64).index_add_(0, parent, weight)
        value_G[parent] = num[parent] / den[parent]
    return value_G


def _child_weights(
    value_mode: str, entropy_C: torch.Tensor, parent_C: torch.Tensor, n_nodes: int
) -> torch.Tensor:
    """Unnormalised weight of each child in its parent's value (softmax, linear or uniform)."""
    if value_mode == "entropy_softmax":
        peak = torch.full((n_nodes,), -torch.inf, dtype=torch.float64)
        peak.scatter_reduce_(0, parent_C, entropy_C, reduce="amax")
        return torch.exp(entropy_C - peak[parent_C])
    if value_mode == "entropy_linear":
        # H(c) / max over siblings: the same weighted mean as H(c) / Σ H, but with weights in
        # [0, 1], so subnormal entropies (~1e-320) do not lose the value's precision in Σ H·V.
        peak = torch.zeros(n_nodes, dtype=torch.float64)
        peak.scatter_reduce_(0, parent_C, entropy_C, reduce="amax")
        return torch.where(peak[parent_C] == 0, 1.0, entropy_C / peak[parent_C])
    return torch.ones_like(entropy_C)


def node_advantages(forest: Forest, value_G: torch.Tensor, adv_mode: str) -> torch.Tensor:
    """A(n) from V for the tree modes of step 3 (``leaf_grpo`` is per row, see :func:`tree_credit`).

    The root has no tokens; it gets A = V(root) in every mode.
    """
    is_root = forest.parent_G < 0
    parent_value = value_G[forest.parent_G.clamp(min=0)]
    root_value = value_G[forest.node_offset_F[forest.tree_G]]
    if adv_mode == "value":
        adv_G = value_G.clone()
    elif adv_mode == "diff_parent":
        adv_G = value_G - parent_value
    elif adv_mode == "diff_root":
        adv_G = value_G - root_value
    elif adv_mode == "diff_root_parent":
        adv_G = (value_G - root_value) + (value_G - parent_value)
    else:
        raise ValueError(f"node_advantages handles {ADV_MODES[:4]}, not {adv_mode!r}")
    return torch.where(is_root, value_G, adv_G)


def turn_advantages(forest: Forest, adv_G: torch.Tensor) -> torch.Tensor:
    """``adv_BJ[b, j]`` = A of row b's turn j (step 4), 0 past its last turn."""
    path_BJ = forest.path_BJ
    return torch.where(path_BJ >= 0, adv_G[path_BJ.clamp(min=0)], 0.0)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {choices}")


# ------------------------------------------------------------------------------ group statistics


def group_stats(
    x_B: torch.Tensor, group_B: torch.Tensor, unbiased: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, std and size of each row's group, broadcast back to the rows (B,).

    ``group_B`` holds arbitrary integer group ids. The unbiased std of a group of one is NaN (the
    callers decide what a singleton gets).
    """
    _, inverse = torch.unique(group_B, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if len(inverse) else 0
    x = x_B.to(torch.float64)
    count = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, torch.ones_like(x))
    mean = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, x) / count
    centred = x - mean[inverse]
    sq = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, centred * centred)
    var = sq / (count - 1) if unbiased else sq / count
    return mean[inverse], var.sqrt()[inverse], count[inverse]


def _group_range(x_B: torch.Tensor, group_B: torch.Tensor) -> torch.Tensor:
    """max − min of each row's group, broadcast to the rows."""
    _, inverse = torch.unique(group_B, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    x = x_B.to(torch.float64)
    hi = torch.full((n_groups,), -torch.inf, dtype=torch.float64)
    lo = torch.full((n_groups,), torch.inf, dtype=torch.float64)
    hi.scatter_reduce_(0, inverse, x, reduce="amax")
    lo.scatter_reduce_(0, inverse, x, reduce="amin")
    return (hi - lo)[inverse]


# ----------------------------------------------------------------------------- group estimators


def grpo_advantages(
    reward_B: torch.Tensor, group_B: torch.Tensor, eps: float = EPS, scale_by_std: bool = True
) -> torch.Tensor:
    """GRPO outcome advantage per row: A = (r − mean_g r) / (std_g r + ε), unbiased std.

    As verl's ``compute_grpo_outcome_advantage``: a group of one uses mean 0 and std 1, so its row
    gets r / (1 + ε) (r when ``scale_by_std`` is False, Dr.GRPO's mean-only variant).
    """
    mean_B, std_B, count_B = group_stats(reward_B, group_B, unbiased=True)
    single = count_B == 1
    mean_B = torch.where(single, 0.0, mean_B)
    if not scale_by_std:
        return reward_B.to(torch.float64) - mean_B
    std_B = torch.where(single, 1.0, std_B)
    return (reward_B.to(torch.float64) - mean_B) / (std_B + eps)


def tree_grpo_advantages(
    reward_B: torch.Tensor, prompt_B: torch.Tensor, tree_B: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """Tree-GRPO advantage (Ji et al., arXiv 2509.21240): A = A_intra-tree + A_inter-tree.

    Both terms are GRPO z-scores (:func:`grpo_advantages`) of the same outcome reward: across all
    rows of the prompt (inter) and across the rows of the row's own tree (intra), as the authors'
    ``adv_estimator=tree`` (``AMAP-ML/Tree-GRPO`` ``ray_trainer_ts.py``) computes them. Tree ids
    may repeat across prompts: the intra group is the (prompt, tree) pair. With one
    :class:`TurnTree` per prompt, a Tree-GRPO tree is the subtree of one first turn, so
    ``tree_B[b]`` = the first node of row b's path.
    """
    pair_B = torch.unique(torch.stack([prompt_B, tree_B], dim=1), dim=0, return_inverse=True)[1]
    return grpo_advantages(reward_B, prompt_B, eps) + grpo_advantages(reward_B, pair_B, eps)


def dapo_keep_mask(reward_B: torch.Tensor, group_B: torch.Tensor) -> torch.Tensor:
    """DAPO dynamic sampling: True on rows whose group's rewards are not all equal.

    As verl's DAPO trainer (``std > 0 or len == 1``), a group of one is kept.
    """
    _, _, count_B = group_stats(reward_B, group_B, unbiased=False)
    return (_group_range(reward_B, group_B) > 0) | (count_B == 1)


def discounted_returns(
    reward_S: torch.Tensor, episode_S: torch.Tensor, step_S: torch.Tensor, gamma: float
) -> torch.Tensor:
    """R_t = Σ_{k≥t} γ^{k−t} r_k within each episode, steps ordered by ``step_S`` (GiGPO Eq. 5)."""
    _, episode = torch.unique(episode_S, return_inverse=True)
    n_episodes = int(episode.max()) + 1
    order = torch.argsort(episode * (int(step_S.max()) + 1) + step_S, stable=True)
    sorted_episode = episode[order]
    first = torch.searchsorted(sorted_episode, sorted_episode, right=False)
    position = torch.arange(len(order)) - first
    dense_ET = torch.zeros(n_episodes, int(position.max()) + 1, dtype=torch.float64)
    dense_ET[sorted_episode, position] = reward_S.to(torch.float64)[order]
    running = torch.zeros(n_episodes, dtype=torch.float64)
    for t in range(dense_ET.shape[1] - 1, -1, -1):
        running = dense_ET[:, t] + gamma * running
        dense_ET[:, t] = running
    returns = torch.empty(len(order), dtype=torch.float64)
    returns[order] = dense_ET[sorted_episode, position]
    return returns


def anchor_groups(
    group_S: torch.Tensor, anchor_keys: Sequence[Hashable], similarity: float | None = None
) -> torch.Tensor:
    """Step-group id of every step: same prompt group and the same anchor state (GiGPO Eq. 6).

    Exact matching hashes ``anchor_keys`` (strings or token tuples). With ``similarity`` in (0, 1]
    a step joins the first earlier cluster of its prompt group whose first member's key has
    ``difflib.SequenceMatcher`` ratio ≥ ``similarity`` (verl-agent's ``enable_similarity``).
    """
    if len(anchor_keys) != len(group_S):
        raise ValueError(
            f"{len(anchor_keys)} anchor keys for {len(group_S)} steps; give one per step"
        )
    if similarity is not None and not 0.0 < similarity <= 1.0:
        raise ValueError(f"similarity threshold must be in (0, 1], got {similarity}")
    exact: dict[tuple, int] = {}
    representatives: dict[int, list[tuple[Hashable, int]]] = {}
    n_clusters = 0
    out: list[int] = []
    for group, key in zip(group_S.tolist(), anchor_keys, strict=True):
        if similarity is None:
            cluster = exact.setdefault((group, key), len(exact))
        else:
            members = representatives.setdefault(group, [])
            cluster = next((c for rep, c in members if _similar(rep, key, similarity)), -1)
            if cluster < 0:
                cluster, n_clusters = n_clusters, n_clusters + 1
                members.append((key, cluster))
        out.append(cluster)
    return torch.tensor(out, dtype=torch.long)


def _similar(a: Hashable, b: Hashable, threshold: float) -> bool:
    return difflib.SequenceMatcher(None, a, b).ratio() >= threshold  # type: ignore[arg-type]


def gigpo_advantages(
    group_S: torch.Tensor,
    episode_S: torch.Tensor,
    step_S: torch.Tensor,
    anchor_keys: Sequence[Hashable],
    reward_S: torch.Tensor,
    *,
    gamma: float = 0.95,
    step_weight: float = 1.0,
    mode: str = "mean_norm",
    similarity: float | None = None,
    episode_stats: str = "steps",
    penalty_S: torch.Tensor | None = None,
    eps: float = EPS,
) -> torch.Tensor:
    """GiGPO (arXiv 2505.10978 Eq. 8): A = A_episode + w · A_step, one value per step record.

    Inputs, one entry per step: its prompt group, its episode (trajectory), its index in the
    episode, its anchor state key (the observation the step acted on) and its reward.

    * Episode term (Eq. 3): every step carries its episode's return Σ_t r_t, centred on the prompt
      group's mean (``mean_norm``) or z-scored with the unbiased std (``mean_std_norm``). The group
      statistics run over step records (``episode_stats="steps"``, verl-agent's default
      ``compute_mean_std_cross_steps``) or over episodes (``"episodes"``); a group of one uses mean
      0 and std 1, as in verl.
    * Step term (Eq. 7): discounted returns R_t (:func:`discounted_returns`) normalised the same way
      within anchor-state groups (:func:`anchor_groups`); a step whose anchor state no other step
      shares gets 0.
    """
    _check_choice("mode", mode, GIGPO_MODES)
    _check_choice("episode_stats", episode_stats, ("steps", "episodes"))
    reward_S = reward_S.to(torch.float64)
    _, episode = torch.unique(episode_S, return_inverse=True)
    episode_return = torch.zeros(int(episode.max()) + 1, dtype=torch.float64)
    episode_return.index_add_(0, episode, reward_S)
    penalty_S = torch.zeros_like(reward_S) if penalty_S is None else penalty_S.to(torch.float64)
    score_S = episode_return[episode] - penalty_S

    first_E = torch.full_like(episode_return, len(episode), dtype=torch.long)
    first_E.scatter_reduce_(0, episode, torch.arange(len(episode)), reduce="amin")
    if not torch.equal(group_S[first_E][episode], group_S):
        raise ValueError("an episode spans several prompt groups; give each episode one group")
    if episode_stats == "steps":
        mean_S, std_S, count_S = group_stats(score_S, group_S, unbiased=True)
    else:
        mean_E, std_E, count_E = group_stats(score_S[first_E], group_S[first_E], unbiased=True)
        mean_S, std_S, count_S = mean_E[episode], std_E[episode], count_E[episode]
    single = count_S == 1
    mean_S = torch.where(single, 0.0, mean_S)
    std_S = torch.where(single, 1.0, std_S)
    episode_adv = _normalise(score_S, mean_S, std_S, mode, eps)

    return_S = discounted_returns(reward_S, episode_S, step_S, gamma) - penalty_S
    anchor_S = anchor_groups(group_S, anchor_keys, similarity)
    mean_A, std_A, count_A = group_stats(return_S, anchor_S, unbiased=True)
    std_A = torch.where(count_A == 1, 1.0, std_A)
    step_adv = _normalise(return_S, mean_A, std_A, mode, eps)
    return episode_adv + step_weight * step_adv


def _normalise(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mode: str, eps: float
) -> torch.Tensor:
    return x - mean if mode == "mean_norm" else (x - mean) / (std + eps)
