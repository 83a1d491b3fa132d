"""Where a tree grows next: entropy-guided and random expansion, and the ARPO/AEPO branching rules.

AT²PO expansion (arXiv 2601.04767 §4.1; authors' code, reference spec §2.4). The candidates are the
non-leaf nodes of a tree, root included, in breadth-first order (:meth:`TurnTree.expandable`). Each
candidate is scored once per round

    score(n) = H(n) − α · b(n),        α = 0.05,

where H(n) is the node's mean negative log-prob (H(root) = 0) and b(n) its number of siblings
(for the root: its number of children minus one, :meth:`TurnTree.sibling_count`). The top K scores
are picked without replacement, ties in breadth-first order; with fewer than K candidates the sorted
list repeats from the top until K picks are made, so a node can be re-sampled several times in one
round. Picking a node means re-sampling that node's turn as a new sibling (the rollout does this).
The paper writes the penalty as α·|children(parent(n))|; the code (followed here) uses the sibling
count |children(parent(n))| − 1, which ranks the candidates identically except against the root.

Entropy floor (an option beyond the paper, off by default: ``min_entropy`` = 0). A turn the policy
samples almost deterministically (H(n) < ``min_entropy``, e.g. a copied first search) comes back
unchanged when re-sampled, so picking it spends a re-sample on a duplicate. With a floor, the
ranking puts every candidate at or above it (and the root, a fresh chain) before every candidate
below it, each group by H − α·b; picks fall below the floor only when too few candidates reach it.

Random expansion (Tree-GRPO, arXiv 2509.21240; ``expansion_mode=random`` in the authors' code): K
distinct candidates uniformly at random, or K draws with replacement when there are fewer than K.

ARPO/AEPO (arXiv 2507.19849, 2510.14545; the AEPO baseline rollout, reference spec §7) branch
*after* a tool observation instead; :func:`arpo_step_entropy`, :func:`arpo_should_branch` and
:func:`aepo_initial_rollouts` are the pure decisions that rollout needs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch

from at2po.core.tree import ROOT, TurnTree

EXPANSION_MODES = ("entropy", "random")
"""``entropy``: top K by H − α·b (AT²PO); ``random``: uniform picks (Tree-GRPO)."""

SIBLING_PENALTY = 0.05
"""α, hard-coded in the authors' code."""


def expansion_scores(
    tree: TurnTree, alpha: float = SIBLING_PENALTY
) -> tuple[list[int], list[float]]:
    """The expansion candidates of ``tree`` in breadth-first order and their scores H − α·b."""
    candidates = tree.expandable()
    scores = [
        (0.0 if node_id == ROOT else tree.nodes[node_id].entropy)
        - alpha * tree.sibling_count(node_id)
        for node_id in candidates
    ]
    return candidates, scores


def select_by_entropy(
    tree: TurnTree, k: int, alpha: float = SIBLING_PENALTY, min_entropy: float = 0.0
) -> list[int]:
    """Top ``k`` candidates by H − α·b, ties in breadth-first order, repeating when fewer than k;
    with ``min_entropy`` > 0, candidates below the floor rank after all others (module docstring).
    """
    _check_k(k)
    candidates, scores = expansion_scores(tree, alpha)

    def below_floor(node_id: int) -> bool:
        return node_id != ROOT and tree.nodes[node_id].entropy < min_entropy

    order = sorted(range(len(candidates)), key=lambda i: (below_floor(candidates[i]), -scores[i]))
    ranked = [candidates[i] for i in order]
    return [ranked[i % len(ranked)] for i in range(k)]


def select_at_random(tree: TurnTree, k: int, rng: random.Random) -> list[int]:
    """``k`` distinct candidates drawn uniformly; ``k`` draws with replacement when fewer exist."""
    _check_k(k)
    candidates = tree.expandable()
    if len(candidates) >= k:
        return rng.sample(candidates, k)
    return rng.choices(candidates, k=k)


def select_expansion_nodes(
    tree: TurnTree,
    k: int,
    mode: str = "entropy",
    rng: random.Random | None = None,
    alpha: float = SIBLING_PENALTY,
    min_entropy: float = 0.0,
) -> list[int]:
    """The ``k`` nodes whose turns one round re-samples (``mode`` in :data:`EXPANSION_MODES`).

    ``rng`` is required for ``random`` mode; ``entropy`` mode is deterministic. ``min_entropy``
    is the entropy floor of ``entropy`` mode (module docstring).
    """
    if mode == "entropy":
        return select_by_entropy(tree, k, alpha, min_entropy)
    if mode == "random":
        if rng is None:
            raise ValueError("expansion mode 'random' needs a seeded random.Random (rng=...)")
        return select_at_random(tree, k, rng)
    raise ValueError(f"unknown expansion mode {mode!r}; choose one of {EXPANSION_MODES}")


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"the number of nodes to expand must be at least 1, got k={k}")


# --------------------------------------------------------------------------- ARPO / AEPO branching


def arpo_step_entropy(topk_logp_TK: torch.Tensor, vocab_size: int, max_tokens: int = 20) -> float:
    """ARPO/AEPO normalised step entropy: −Σ_t Σ_k p·log p / log|V| over the first ``max_tokens``.

    ``topk_logp_TK`` holds, for each generated position t, the log-probs the engine returned (top-k
    plus the sampled token); entries that are absent are ``-inf`` and contribute 0. Positions are
    summed, not averaged, as in the ARPO/AEPO rollout (``_calc_entropy`` over the flattened list of
    the first ≤ 20 positions, divided by log|V|). No positions gives 0.
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2 to normalise by log|V|, got {vocab_size}")
    logp = topk_logp_TK[:max_tokens].double()
    finite = torch.isfinite(logp)
    plogp = torch.where(finite, logp.exp() * logp, torch.zeros_like(logp))
    return float(-plogp.sum() / math.log(vocab_size))


def arpo_should_branch(
    step_entropy: float,
    initial_entropy: float,
    *,
    entropy_weight: float,
    consecutive_branches: int,
    branch_probability: float,
    u: float,
    consecutive_penalty: float = 0.05,
) -> bool:
    """Whether an ARPO/AEPO chain branches after a tool observation.

        p = clip((u + w·(H_now − H_first)) · max(0, 1 − 0.05·c), 0, 1),   branch iff p ≥ τ

    with u ~ U(0, 1) drawn by the caller, w = ``entropy_weight``, H_first the chain's first step
    entropy, c the number of immediately preceding rounds in which this sample branched, and
    τ = ``branch_probability``. The clip is applied after the consecutive-branch penalty, as in the
    AEPO rollout code (``vllm_rollout_with_tools.py``); the AEPO paper writes
    P = (α + γ·ΔH)·(1 − P̂(l)).
    """
    if not 0.0 <= u <= 1.0:
        raise ValueError(f"u must be a uniform draw in [0, 1], got {u}")
    penalty = max(0.0, 1.0 - consecutive_penalty * consecutive_branches)
    p = (u + entropy_weight * (step_entropy - initial_entropy)) * penalty
    return min(1.0, max(0.0, p)) >= branch_probability


def aepo_initial_rollouts(
    n: int, root_entropy: float, step_entropies: Sequence[float], beta: float = 0.5
) -> int:
    """AEPO entropy pre-monitoring: how many of ``n`` rollouts start as independent chains.

        m = clamp(⌊n · σ(β · (H_root − H̄_step))⌋ + 1, 1, n),   β = 0.5,

    where H̄_step is the mean normalised step entropy of the pre-rollout's tool-call steps, or
    H_root when it made none (AEPO rollout, ``_calculate_initial_rollouts_dynamical``).
    """
    if n < 1:
        raise ValueError(f"n (rollouts per prompt) must be at least 1, got {n}")
    mean_step = sum(step_entropies) / len(step_entropies) if step_entropies else root_entropy
    sigma = 1.0 / (1.0 + math.exp(-beta * (root_entropy - mean_step)))
    return max(1, min(n, int(n * sigma) + 1))
