"""T²PO's uncertainty signal, thinking-intervention trigger and turn-resampling test (pure math).

Sources: T²PO (arXiv 2605.02178) as summarised in the reference spec
(``shared/research/t2po-and-textgames.md`` Part 2, §2.1–2.3); DeepConf for the top-j confidence.
Every function works on a batch of rows at once (one row = one sequence being generated).

* Entropy over the full vocabulary: ``H_t = −Σ_v p_t(v) log p_t(v)``.
* Top-j confidence: ``C_t = −(1/j) Σ_{i≤j} log p_t^(i)``, the mean negative log-prob of the j most
  likely tokens: large when p_t is sharp (j ≥ 2; with j = 1 the meaning flips).
* Online min–max normalisation per trajectory: ``H̃_t = (H_t − H_min)/(H_max − H_min)`` with the
  running extremes over the trajectory's sampled tokens up to and including t (all turns; forced
  and observation tokens excluded); a range below 1e-12 gives 0.5. Likewise C̃.
* Fusion: ``M_t = α·H̃_t + (1 − α)·(1 − C̃_t)``, α = 0.4; in [0, 1], higher = more uncertain.
* Stagnation trigger (TTI): with ``Δ_t = |M_t − M_{t−1}|`` over the turn's thinking tokens, fire at
  the first t with ``n_think ≥ L_min`` and ``(1/(N+1)) Σ_{i=0..N} Δ_{t−i} < ε`` (all N+1 deltas
  defined), or at the hard cap ``n_think ≥ L_max``. Token t is kept; forcing starts at t + 1.
* Turn score (TDS): ``Φ^k = exp(mean_{t∈turn k} log max(M_t, floor))`` over the turn's sampled
  tokens, floor 1e-6; progress ``Γ^k = |Φ^k − Φ^{k−1}|``; regenerate while ``Γ^k < η`` and fewer
  than ``B_max`` redraws were made.
"""

from __future__ import annotations

import math

import torch

ALPHA = 0.4
"""α of the fusion (T²PO)."""

TOP_J = 20
"""j of the top-j confidence (DeepConf's definition; the paper's j is not published)."""

DEGENERATE_RANGE = 1e-12
"""A min–max range below this normalises to 0.5 (always the case at a trajectory's first token)."""

SCORE_FLOOR = 1e-6
"""Floor of M_t inside the turn score's logarithm (M_t = 0 happens at a new extreme)."""

FRESH_BOUNDS = (math.inf, -math.inf, math.inf, -math.inf)
"""(H_min, H_max, C_min, C_max) of a trajectory that has sampled nothing yet."""


def top_j_weights(top_j_B: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, J) weights 1/j on each row's first j columns, 0 beyond (J = the largest j, at most V).

    j above the vocabulary size uses the whole vocabulary.
    """
    width = min(int(top_j_B.max()), vocab_size)
    j_B = top_j_B.clamp(max=width)
    in_top_BJ = torch.arange(width, device=top_j_B.device)[None, :] < j_B[:, None]
    return in_top_BJ / j_B[:, None]


def entropy_and_confidence(
    logp_BV: torch.Tensor, top_weight_BJ: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-vocabulary entropy H and top-j confidence C of each row of log-probs.

    ``top_weight_BJ`` comes from :func:`top_j_weights` (each row's own j ≥ 2).
    """
    entropy_B = torch.special.entr(logp_BV.exp()).sum(dim=-1)
    top_BJ = logp_BV.topk(top_weight_BJ.shape[1], dim=-1).values
    confidence_B = -(top_BJ * top_weight_BJ).sum(dim=-1)
    return entropy_B, confidence_B


def fused_uncertainty(
    entropy_B: torch.Tensor,
    confidence_B: torch.Tensor,
    bounds_B4: torch.Tensor,
    alpha_B: torch.Tensor,
    sampled_B: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One online step of M_t for every row.

    Args:
        entropy_B, confidence_B: H_t and C_t of this position.
        bounds_B4: running (H_min, H_max, C_min, C_max) of each trajectory before this token
            (:data:`FRESH_BOUNDS` for a new one).
        alpha_B: α per row.
        sampled_B: bool, rows whose token was sampled; forced rows neither update their bounds
            nor get an M (NaN).

    Returns:
        (M_B, new bounds_B4).
    """
    value_B2 = torch.stack([entropy_B, confidence_B], dim=1).to(bounds_B4.dtype)
    low_B2 = torch.minimum(bounds_B4[:, 0::2], value_B2)
    high_B2 = torch.maximum(bounds_B4[:, 1::2], value_B2)
    updated_B4 = torch.stack([low_B2, high_B2], dim=2).flatten(1)
    new_bounds_B4 = torch.where(sampled_B[:, None], updated_B4, bounds_B4)
    low_B2, high_B2 = new_bounds_B4[:, 0::2], new_bounds_B4[:, 1::2]
    spread_B2 = high_B2 - low_B2
    degenerate_B2 = spread_B2 < DEGENERATE_RANGE
    scaled_B2 = torch.where(
        degenerate_B2, 0.5, (value_B2 - low_B2) / torch.where(degenerate_B2, 1.0, spread_B2)
    )
    m_B = alpha_B * scaled_B2[:, 0] + (1.0 - alpha_B) * (1.0 - scaled_B2[:, 1])
    return torch.where(sampled_B, m_B, torch.nan), new_bounds_B4


def online_uncertainty(
    entropy_T: torch.Tensor,
    confidence_T: torch.Tensor,
    alpha: float = ALPHA,
    bounds: tuple[float, float, float, float] = FRESH_BOUNDS,
) -> torch.Tensor:
    """M_t of one trajectory's sampled tokens in order (:func:`fused_uncertainty` step by step)."""
    bounds_14 = torch.tensor([bounds], dtype=torch.float64)
    alpha_1 = torch.tensor([alpha], dtype=torch.float64)
    sampled_1 = torch.ones(1, dtype=torch.bool)
    out = []
    for h, c in zip(entropy_T.to(torch.float64), confidence_T.to(torch.float64), strict=True):
        m_1, bounds_14 = fused_uncertainty(h[None], c[None], bounds_14, alpha_1, sampled_1)
        out.append(m_1)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def push_delta(
    window_BW: torch.Tensor, count_B: torch.Tensor, delta_B: torch.Tensor, push_B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append Δ_t to each pushing row's window of the most recent deltas (oldest dropped)."""
    shifted_BW = torch.cat([window_BW[:, 1:], delta_B[:, None].to(window_BW.dtype)], dim=1)
    return torch.where(push_B[:, None], shifted_BW, window_BW), count_B + push_B.long()


def recent_weights(span_B: torch.Tensor, width: int) -> torch.Tensor:
    """(B, W) weights 1/span on each row's last ``span_B`` columns of a W-wide window, else 0."""
    in_window_BW = torch.arange(width, device=span_B.device)[None, :] >= width - span_B[:, None]
    return in_window_BW / span_B[:, None]


def stagnated(
    window_BW: torch.Tensor,
    count_B: torch.Tensor,
    n_think_B: torch.Tensor,
    min_think_B: torch.Tensor,
    span_B: torch.Tensor,
    eps_B: torch.Tensor,
    recent_BW: torch.Tensor,
) -> torch.Tensor:
    """Rows whose last ``span_B`` (= N + 1) deltas average below ε after ``min_think_B`` tokens.

    ``recent_BW`` is :func:`recent_weights` of ``span_B`` (the mean as one weighted sum).
    """
    mean_B = (window_BW * recent_BW).sum(dim=1)
    return (count_B >= span_B) & (n_think_B >= min_think_B) & (mean_B < eps_B)


def stagnation_trigger(
    uncertainty_T: torch.Tensor, min_think: int, window: int, eps: float
) -> int | None:
    """1-based index t* of the token after which the paper's rule intervenes, or ``None``.

    ``uncertainty_T`` holds one turn's M_t over its thinking tokens; ``window`` is N (the mean runs
    over N + 1 deltas). Steps through the same per-row state the engine keeps.
    """
    span = window + 1
    window_1W = torch.zeros(1, span, dtype=torch.float64)
    count_1 = torch.zeros(1, dtype=torch.long)
    one = torch.ones(1, dtype=torch.bool)
    recent_1W = recent_weights(torch.tensor([span]), span)
    for t in range(1, len(uncertainty_T)):
        delta_1 = (uncertainty_T[t] - uncertainty_T[t - 1]).abs()[None].to(torch.float64)
        window_1W, count_1 = push_delta(window_1W, count_1, delta_1, one)
        fired = stagnated(
            window_1W,
            count_1,
            torch.tensor([t + 1]),
            torch.tensor([min_think]),
            torch.tensor([span]),
            torch.tensor([eps], dtype=torch.float64),
            recent_1W,
        )
        if bool(fired):
            return t + 1
    return None


def turn_score(
    uncertainty_T: torch.Tensor, sampled_T: torch.Tensor | None = None, floor: float = SCORE_FLOOR
) -> float:
    """Φ = exp(mean log max(M_t, floor)) over the turn's sampled tokens (NaN when it has none)."""
    values = uncertainty_T.to(torch.float64)
    if sampled_T is not None:
        values = values[sampled_T]
    if values.numel() == 0:
        return math.nan
    return float(values.clamp(min=floor).log().mean().exp())


def turn_progress(score: float, previous_score: float) -> float:
    """Γ^k = |Φ^k − Φ^{k−1}| against the previous accepted turn."""
    return abs(score - previous_score)


def needs_redraw(progress: float, eta: float, redraws: int, max_redraws: int) -> bool:
    """TDS: draw the turn again while Γ < η (Γ = 0 included) and fewer than B_max redraws ran."""
    return progress < eta and redraws < max_redraws
