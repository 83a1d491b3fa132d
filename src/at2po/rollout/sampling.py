"""Vectorised next-token choice for a batch whose rows each have their own sampling settings.

For row b with logits z_b, temperature T_b and a uniform draw u_b from the row's own stream:

* recorded distribution: ``logp_b = log_softmax(z_b / T_b)`` (the whole vocabulary, untruncated);
* draw: inverse-CDF sampling from ``exp(logp_b)`` restricted to the top-k tokens and to the
  smallest set of most likely tokens whose mass reaches top-p (the most likely token is always
  kept), renormalised: the token is the first index whose cumulative mass reaches
  ``(1 - u_b) · total`` (in (0, total], so a token of probability 0 is never drawn);
* greedy rows take ``argmax z_b``;
* entropy: ``H_b = -Σ_v p_bv log p_bv`` of the recorded distribution.

One uniform per row per step makes each row's draws a function of its own seed only, whatever
batch it shares.
"""

from __future__ import annotations

import torch


def tempered_logprobs(logits_BV: torch.Tensor, temperature_B: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits / T)`` per row, in float32."""
    return torch.log_softmax(logits_BV.float() / temperature_B[:, None], dim=-1)


def entropy(logp_BV: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary entropy ``-Σ p log p`` of each row of log-probs (0·log 0 counts as 0)."""
    return torch.special.entr(logp_BV.exp()).sum(dim=-1)


def _truncate_sorted(
    probs_sorted_BV: torch.Tensor, top_k_B: torch.Tensor, top_p_B: torch.Tensor
) -> torch.Tensor:
    """Zero the mass outside top-k and top-p of probabilities sorted in descending order."""
    rank_V = torch.arange(probs_sorted_BV.shape[-1], device=probs_sorted_BV.device)
    mass_before_BV = probs_sorted_BV.cumsum(dim=-1) - probs_sorted_BV
    keep_BV = (mass_before_BV < top_p_B[:, None]) | (rank_V == 0)
    keep_BV &= (top_k_B[:, None] < 0) | (rank_V < top_k_B[:, None])
    return probs_sorted_BV * keep_BV


def _inverse_cdf(probs_BV: torch.Tensor, uniform_B: torch.Tensor) -> torch.Tensor:
    """Index of the first entry whose cumulative mass reaches ``(1 - u) · total`` per row."""
    cdf_BV = probs_BV.double().cumsum(dim=-1)
    target_B1 = (1.0 - uniform_B.double())[:, None] * cdf_BV[:, -1:]
    return torch.searchsorted(cdf_BV, target_B1).squeeze(-1).clamp_(max=probs_BV.shape[-1] - 1)


def choose_tokens(
    logits_BV: torch.Tensor,
    logp_BV: torch.Tensor,
    uniform_B: torch.Tensor,
    greedy_B: torch.Tensor,
    top_k_B: torch.Tensor | None = None,
    top_p_B: torch.Tensor | None = None,
) -> torch.Tensor:
    """The next token of every row (see the module docstring).

    Args:
        logits_BV: raw logits (greedy rows take their argmax).
        logp_BV: tempered log-probs from :func:`tempered_logprobs`.
        uniform_B: one draw in [0, 1) per row from the row's own stream.
        greedy_B: bool, rows that decode greedily.
        top_k_B, top_p_B: per-row truncation (-1 and 1.0 disable it); ``None`` when no row
            truncates, which skips the sort.
    """
    probs_BV = logp_BV.exp()
    if top_k_B is None or top_p_B is None:
        sampled_B = _inverse_cdf(probs_BV, uniform_B)
    else:
        probs_sorted_BV, order_BV = probs_BV.sort(dim=-1, descending=True)
        kept_BV = _truncate_sorted(probs_sorted_BV, top_k_B, top_p_B)
        rank_B = _inverse_cdf(kept_BV, uniform_B)
        sampled_B = order_BV.gather(1, rank_B[:, None]).squeeze(1)
    return torch.where(greedy_B, logits_BV.argmax(dim=-1), sampled_B)
