"""Clipped policy-gradient losses at token, turn and sequence level, with their aggregation, KL and
entropy terms and diagnostics.

Notation (per row i, token t): ρ_t = log π_θ(y_t) − log π_old(y_t), mask m_t ∈ {0, 1},
advantage A_t, sg[·] = stop-gradient. Every loss is the PPO clipped surrogate

    L_t = max(−A_t · r_t, −A_t · clip(r_t, 1 − ε_low, 1 + ε_high))                            (1)

optionally dual-clipped for A_t < 0 as L_t ← min(L_t, −A_t · c) (Ye et al. 2019), and reduced to a
scalar by :func:`aggregate`. The losses differ in the ratio r_t (all are built in log space and
capped from above, log r ≤ ``log_ratio_cap``, before the exponential):

* ``token`` (PPO / GRPO / DAPO): r_t = exp(ρ_t).
* ``turn`` (ATPO, AT²PO §4.3 Eq. 4–5; authors' ``gspo_turn``): with ℓ_k the mean of ρ over the
  tokens of turn k ∋ t (log of the geometric mean of the turn's token ratios),
  r_t = exp(sg[ℓ_k] + log π_θ(y_t) − sg[log π_θ(y_t)]) — value exp(ℓ_k) for every token of the
  turn, gradient r_t · ∇log π_θ(y_t) (the GSPO-token construction applied per turn).
* ``sequence`` (GSPO, Zheng et al. 2025; AT²PO App. A Eq. 8–9): as ``turn`` with one ℓ per row
  (mean ρ over all trained tokens of the row).

Clip variants (``clip_grad``): ``hard`` is (1); ``upper`` replaces the upper bound by
(1 + ε_high) · r/sg[r] — the same value, but a clipped token keeps the gradient −A(1 + ε_high)∇log r
(AEPO's entropy-balanced clipping = GPPO-half); ``both`` does the same for the lower bound (GPPO,
Klear-Reasoner).

AEPO's entropy-balanced advantage (``entropy_adv_beta`` = β > 0): A_t ← A_t · (1 + β · ẑ_t), ẑ the
token entropy standardised over the trained tokens of the batch (unbiased std; std 0 → 1), detached.

KL to a reference policy (Schulman, "Approximating KL divergence", 2020), with
d = log π_θ − log π_ref: k1 = d, k2 = d²/2, k3 = ``low_var_kl`` = exp(−d) + d − 1 (d clamped to
±20, result clamped to ±10, as verl). The total loss is
policy + kl_coef · agg(KL) − entropy_coef · agg(H).

Gradient: a branch of (1) that carries gradient — −A·r itself or a gradient-preserving bound
−A·b·r/sg[r] — equals its own derivative in log r, so there ∂L_t/∂log r_t = L_t; a binding hard
bound, dual clip or log-ratio cap makes it 0 (at an exact tie the gradient is kept). At every level
∂log r_t/∂log π_θ(y_t) = 1 (the sg construction), so the policy term's gradient is w_t · L_t on the
tokens that keep it, w_t being the token's aggregation weight. :func:`policy_loss` computes it in
closed form next to the loss, without an autograd graph, and its backward pass is one multiply.
Only ``logp_BT`` receives a gradient from the policy term.

Masking: per-turn sums skip the tokens outside every turn, the token ratio is built from ρ set to 0
off the mask, and the per-token loss, gradient and clip masks are set to 0 (False) there, so padding
that holds garbage (inf, NaN) never reaches the loss, the gradient or the metrics, and a batch or a
row without trained tokens contributes a finite 0 with zero gradient.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Literal, get_args

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from at2po.core.segments import TurnSegments

__all__ = [
    "POLICY_LOSSES",
    "AggMode",
    "PolicyLossConfig",
    "aggregate",
    "entropy_balanced_advantage",
    "kl_estimate",
    "policy_loss",
    "policy_loss_config",
    "turn_update_entropy",
]

AggMode = Literal[
    "token-mean",
    "token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
]
RatioLevel = Literal["token", "turn", "sequence"]
ClipGrad = Literal["hard", "upper", "both"]
KLEstimator = Literal["k1", "k2", "k3", "low_var_kl"]


def _check_choice(field: str, value: object, options: object) -> None:
    allowed = get_args(options)
    if value not in allowed:
        raise ValueError(f"{field} must be one of {list(allowed)}; got {value!r}")


@dataclass(frozen=True)
class PolicyLossConfig:
    """Everything that selects and shapes a policy loss. Start from a preset in
    :data:`POLICY_LOSSES` (or :func:`policy_loss_config`) and override fields.

    Attributes:
        ratio: importance-ratio granularity: ``token`` (PPO), ``turn`` (ATPO), ``sequence`` (GSPO).
        clip_low: ε_low; the ratio is clipped from below at 1 − ε_low. Must lie in [0, 1).
        clip_high: ε_high; the ratio is clipped from above at 1 + ε_high.
        clip_grad: ``hard`` (PPO), ``upper`` (the upper bound keeps the gradient: AEPO/GPPO-half) or
            ``both`` (both bounds keep it: GPPO).
        dual_clip: c > 1 caps the loss of a negative-advantage token at −A·c; ``None`` disables it.
        log_ratio_cap: upper cap on log r before exp (10 in the authors' turn/sequence losses, 20 in
            verl's token loss); there is no lower cap.
        entropy_adv_beta: β of AEPO's entropy-balanced advantage A·(1 + β·ẑ); 0 disables it. Needs
            per-token entropy.
        agg: how per-token losses become a scalar; see :func:`aggregate`.
        norm_len: divisor of ``seq-mean-token-sum-norm`` (a fixed length such as the maximum
            response length); ``None`` uses the padded row length T of the batch, as verl does.
        kl_coef: weight of the KL-to-reference penalty added to the loss; non-zero needs reference
            log-probs.
        kl_estimator: ``k1``, ``k2`` or ``k3`` (= ``low_var_kl``).
        entropy_coef: weight of the entropy bonus subtracted from the loss; non-zero needs per-token
            entropy that carries gradient.
    """

    ratio: RatioLevel = "token"
    clip_low: float = 0.2
    clip_high: float = 0.2
    clip_grad: ClipGrad = "hard"
    dual_clip: float | None = None
    log_ratio_cap: float = 20.0
    entropy_adv_beta: float = 0.0
    agg: AggMode = "token-mean"
    norm_len: int | None = None
    kl_coef: float = 0.0
    kl_estimator: KLEstimator = "low_var_kl"
    entropy_coef: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("ratio", self.ratio, RatioLevel)
        _check_choice("clip_grad", self.clip_grad, ClipGrad)
        _check_choice("agg", self.agg, AggMode)
        _check_choice("kl_estimator", self.kl_estimator, KLEstimator)
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(f"clip_low must lie in [0, 1); got {self.clip_low}")
        if self.clip_high < 0.0:
            raise ValueError(f"clip_high must be ≥ 0; got {self.clip_high}")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (or None to disable); got {self.dual_clip}")
        if self.norm_len is not None and self.norm_len <= 0:
            raise ValueError(f"norm_len must be a positive length (or None); got {self.norm_len}")
        if not self.log_ratio_cap > 0.0:
            raise ValueError(f"log_ratio_cap must be > 0; got {self.log_ratio_cap}")


POLICY_LOSSES: MappingProxyType[str, PolicyLossConfig] = MappingProxyType(
    {
        # PPO with token ratios (GRPO / DAPO base); the algorithm presets add dual-clip, KL, ε.
        "token": PolicyLossConfig(),
        # ATPO as the authors ran it: turn ratio, ε = 3e-3 / 4e-3, per-row token mean.
        "turn": PolicyLossConfig(
            ratio="turn",
            clip_low=3e-3,
            clip_high=4e-3,
            log_ratio_cap=10.0,
            agg="seq-mean-token-mean",
        ),
        # GSPO as in AT²PO's baseline: sequence ratio, ε = 3e-4 / 4e-4, per-row token mean.
        "sequence": PolicyLossConfig(
            ratio="sequence",
            clip_low=3e-4,
            clip_high=4e-4,
            log_ratio_cap=10.0,
            agg="seq-mean-token-mean",
        ),
        # AEPO: entropy-balanced clipping and advantage on top of dual-clip PPO.
        "aepo": PolicyLossConfig(clip_grad="upper", dual_clip=3.0, entropy_adv_beta=0.2),
        # GPPO: both bounds gradient-preserving, dual-clip.
        "gppo": PolicyLossConfig(clip_grad="both", dual_clip=3.0),
        # GPPO-half: upper bound gradient-preserving only (AEPO's clipping without its advantage).
        "gppo_half": PolicyLossConfig(clip_grad="upper", dual_clip=3.0),
    }
)
"""Named loss presets; the trainer selects one by name and overrides fields."""


def policy_loss_config(name: str, **overrides: object) -> PolicyLossConfig:
    """The preset ``name`` from :data:`POLICY_LOSSES` with ``overrides`` applied."""
    if name not in POLICY_LOSSES:
        close = difflib.get_close_matches(name, list(POLICY_LOSSES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown policy loss {name!r}; choose one of {sorted(POLICY_LOSSES)}.{hint}"
        )
    return replace(POLICY_LOSSES[name], **overrides)


def aggregate(
    loss_BT: Tensor,
    mask_BT: Tensor,
    mode: AggMode = "token-mean",
    *,
    norm_len: int | None = None,
    num_tokens: float | Tensor | None = None,
    num_rows: float | Tensor | None = None,
) -> Tensor:
    """Reduce per-token losses to a scalar over the tokens where ``mask_BT`` is non-zero.

    With S_i = Σ_t m_t L_t and n_i = Σ_t m_t for row i, N = Σ_i n_i and R = #rows with n_i > 0:

    * ``token-mean``: Σ_i S_i / N (every token weighs the same; GRPO/DAPO in verl).
    * ``token-sum``: Σ_i S_i.
    * ``seq-mean-token-mean``: (1/R) Σ_i S_i / n_i (every row weighs the same; AT²PO, GSPO).
    * ``seq-mean-token-sum``: (1/R) Σ_i S_i.
    * ``seq-mean-token-sum-norm``: (1/R) Σ_i S_i / ``norm_len`` (Dr. GRPO; ``None`` → T).

    These match verl's ``agg_loss`` (0.9) with ``dp_size = 1``. When the batch is one micro-batch
    of a larger mini-batch, pass the mini-batch's ``num_tokens`` (N) or ``num_rows`` (R) so that the
    sum of the micro-batch losses is the mini-batch loss (verl's ``batch_num_tokens`` /
    ``global_batch_size``). Empty rows are left out, and an empty batch gives 0 rather than NaN.
    """
    _check_choice("mode", mode, AggMode)
    on_BT = mask_BT != 0
    masked_BT = torch.where(on_BT, loss_BT, loss_BT.new_zeros(()))
    weight = _token_weight(
        on_BT.sum(dim=1), mode, loss_BT.shape[-1], norm_len, num_tokens, num_rows, loss_BT.dtype
    )
    return _weighted_sum(masked_BT, weight)


def _token_weight(
    count_B: Tensor,
    mode: AggMode,
    length: int,
    norm_len: int | None,
    num_tokens: float | Tensor | None,
    num_rows: float | Tensor | None,
    dtype: torch.dtype,
) -> Tensor:
    """The weight of each trained token in :func:`aggregate` for rows of ``count_B`` trained
    tokens: 1 or 1/N for the token modes (a 0-d tensor), and per row (shape (B, 1)) 1/(n_i R),
    1/R or 1/(R · norm_len) for the sequence modes."""
    count_B1 = count_B.to(dtype).unsqueeze(1)
    one = count_B1.new_ones(())
    if mode == "token-sum":
        return one
    if mode == "token-mean":
        return one / (count_B1.sum().clamp(min=1) if num_tokens is None else num_tokens)
    rows = (count_B1 > 0).sum().clamp(min=1) if num_rows is None else num_rows
    ones_B1 = torch.ones_like(count_B1)
    if mode == "seq-mean-token-mean":
        return ones_B1 / (count_B1.clamp(min=1) * rows)
    if mode == "seq-mean-token-sum":
        return ones_B1 / rows
    return ones_B1 / (rows * (length if norm_len is None else norm_len))


def _weighted_sum(masked_BT: Tensor, weight: Tensor) -> Tensor:
    """Σ_t w_t L_t for per-token losses that are 0 off the mask and a weight from
    :func:`_token_weight` (one sum over the batch for a 0-d weight, as verl sums)."""
    if weight.dim() == 0:
        return masked_BT.sum() * weight
    return (masked_BT.sum(dim=1, keepdim=True) * weight).sum()


def kl_estimate(logp_BT: Tensor, ref_logp_BT: Tensor, estimator: KLEstimator) -> Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from samples of π_θ, d = log π_θ − log π_ref.

    ``k1`` = d; ``k2`` = d²/2; ``k3`` (= ``low_var_kl``) = exp(−d) + d − 1, with d clamped to ±20
    and the estimate to ±10 (as verl). k1 and k3 are unbiased for the KL value, k2 is not.
    """
    _check_choice("estimator", estimator, KLEstimator)
    diff_BT = logp_BT - ref_logp_BT
    if estimator == "k1":
        return diff_BT
    if estimator == "k2":
        return 0.5 * diff_BT.square()
    neg_BT = (-diff_BT).clamp(-20.0, 20.0)
    return (neg_BT.exp() - neg_BT - 1.0).clamp(-10.0, 10.0)


def entropy_balanced_advantage(
    adv_BT: Tensor, entropy_BT: Tensor, mask_BT: Tensor, beta: float
) -> Tensor:
    """AEPO's entropy-aware advantage A · (1 + β · ẑ) (AEPO, arXiv 2510.14545; authors' verl fork).

    ẑ_t = (H_t − mean H) / std H over the trained tokens of the batch, detached; std is the unbiased
    one, replaced by 1 when it is 0 or there are fewer than two tokens.
    """
    on_BT = mask_BT != 0
    h_BT = torch.where(on_BT, entropy_BT.detach(), entropy_BT.new_zeros(()))
    count = on_BT.sum()
    mean = h_BT.sum() / count.clamp(min=1)
    sq_dev = torch.where(on_BT, (h_BT - mean).square(), h_BT.new_zeros(())).sum()
    std = (sq_dev / (count - 1).clamp(min=1)).sqrt()
    std = torch.where((std > 0) & (count > 1), std, torch.ones_like(std))
    return adv_BT * (1.0 + beta * (h_BT - mean) / std)


def turn_update_entropy(turn_kl_BK: Tensor, valid_BK: Tensor) -> Tensor:
    """Turn entropy H_turn, how evenly an update spreads over the turns (AT²PO App. A Eq. 13; the
    authors' ``turn_kl_entropy`` metric).

    ``turn_kl_BK`` holds KL_ij = Σ_{t∈j} ρ_t for row i and turn j (e.g. ``segments.sum(ρ)``) and
    ``valid_BK`` marks the turns that exist. With KL_i = Σ_j KL_ij, p_ij = softmax_j(KL_ij / KL_i)
    and h_i = −Σ_j p_ij log p_ij / log N_i (0 when N_i = 1), H_turn is the mean of h_i over the rows
    whose KL_i ≠ 0 (0 when there is none). Values lie in [0, 1]; 1 means every turn moved alike.
    """
    with torch.no_grad():
        kl_BK = turn_kl_BK.detach()
        kl_B = kl_BK.sum(dim=1)
        used_B = kl_B != 0
        rel_BK = kl_BK / torch.where(used_B, kl_B, 1.0).unsqueeze(1)
        logits_BK = torch.where(valid_BK, rel_BK, -math.inf)
        logits_BK = torch.where(used_B.unsqueeze(1), logits_BK, 0.0)
        logp_BK = torch.log_softmax(logits_BK, dim=1)
        plogp_BK = torch.where(valid_BK, logp_BK.exp() * logp_BK, 0.0)
        n_B = valid_BK.sum(dim=1)
        norm_B = torch.log(n_B.clamp(min=2).to(kl_B.dtype))
        h_B = torch.where(used_B & (n_B > 1), -plogp_BK.sum(dim=1) / norm_B, 0.0)
        return h_B.sum() / used_B.sum().clamp(min=1)


def policy_loss(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv_BT: Tensor,
    mask_BT: Tensor,
    config: PolicyLossConfig | str = "turn",
    *,
    turn_BT: Tensor | None = None,
    ref_logp_BT: Tensor | None = None,
    entropy_BT: Tensor | None = None,
    num_tokens: float | Tensor | None = None,
    num_rows: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped policy loss selected by ``config`` (a :class:`PolicyLossConfig` or a preset
    name), plus the optional KL penalty and entropy bonus; the module docstring has the formulas.

    Args:
        logp_BT: log π_θ of the sampled tokens (carries the gradient).
        old_logp_BT: log π_old of the same tokens (behaviour / pre-update policy).
        adv_BT: per-token advantages (constant within a turn for turn credit).
        mask_BT: non-zero on the tokens to train (policy tokens), 0 on observations and padding.
        config: loss settings or the name of a preset in :data:`POLICY_LOSSES`.
        turn_BT: turn id per token (−1 off-policy); derived from the mask when ``None``.
        ref_logp_BT: log π_ref, needed when ``kl_coef ≠ 0``; reported as ``loss/kl`` when given.
        entropy_BT: per-token entropy, needed for the entropy bonus or AEPO's advantage; reported as
            ``loss/entropy`` when given.
        num_tokens, num_rows: mini-batch normalisers for micro-batching; see :func:`aggregate`.

    Returns:
        ``(loss, metrics)``: the scalar to minimise and detached 0-d tensors under stable keys
        ``loss/*``, ``policy/*`` and ``turn/*``. Ratio statistics are over trained tokens (1 when
        there is none); ``policy/clipfrac_*`` are fractions of trained tokens whose clipped branch
        is active (``low``: A < 0 and r < 1 − ε_low; ``high``: A > 0 and r > 1 + ε_high; ``dual``:
        A < 0 and the dual clip binds).
    """
    cfg = policy_loss_config(config) if isinstance(config, str) else config
    _check_inputs(logp_BT, old_logp_BT=old_logp_BT, adv_BT=adv_BT, mask_BT=mask_BT)
    if cfg.entropy_adv_beta != 0.0 and entropy_BT is None:
        raise ValueError(
            "entropy_adv_beta ≠ 0 needs per-token entropy: pass entropy_BT, or set "
            "entropy_adv_beta=0 to turn AEPO's entropy-balanced advantage off"
        )
    on_BT = mask_BT.bool()
    segments = TurnSegments.from_mask(on_BT, turn_BT)
    count_B = segments.lengths_BK.sum(dim=1)
    needs_grad = logp_BT.requires_grad and torch.is_grad_enabled()

    with torch.no_grad():
        if cfg.entropy_adv_beta != 0.0:
            adv_BT = entropy_balanced_advantage(adv_BT, entropy_BT, mask_BT, cfg.entropy_adv_beta)
        turn_kl_BK = segments.sum(logp_BT.detach() - old_logp_BT)  # off-mask garbage is dropped
        ratio, capped, ratio_count = _ratio(logp_BT, old_logp_BT, on_BT, turn_kl_BK, segments, cfg)
        ratio_stats = _ratio_stats(ratio, ratio_count)

        def to_tokens(level: Tensor) -> Tensor:  # a new (B, T) tensor
            if cfg.ratio == "turn":
                return segments.broadcast(level)
            return level.expand_as(adv_BT).contiguous()

        ratio_BT = to_tokens(ratio.to(torch.promote_types(ratio.dtype, adv_BT.dtype)))
        loss_BT, cut_BT, clip_counts = _clipped_surrogate(ratio_BT, adv_BT, on_BT, cfg)
        weight = _token_weight(
            count_B, cfg.agg, mask_BT.shape[-1], cfg.norm_len, num_tokens, num_rows, loss_BT.dtype
        )
        pg_loss = _weighted_sum(loss_BT, weight)
        if needs_grad:  # the gradient overwrites the per-token loss, no longer needed
            if bool(capped.any()):  # rare: where the cap binds the gradient is 0 too
                capped_BT = to_tokens(capped)
                cut_BT = capped_BT if cut_BT is None else cut_BT | capped_BT
            kept_BT = loss_BT if cut_BT is None else loss_BT.masked_fill_(cut_BT, 0.0)
            grad_BT = kept_BT.mul_(weight)
    if needs_grad:
        pg_loss = _KnownGradient.apply(logp_BT, pg_loss, grad_BT)
    total = pg_loss
    metrics: dict[str, Tensor] = {"loss/policy": pg_loss.detach()}

    if cfg.kl_coef != 0.0 and ref_logp_BT is None:
        raise ValueError("kl_coef ≠ 0 needs reference log-probs: pass ref_logp_BT or set kl_coef=0")
    if ref_logp_BT is not None:
        _check_inputs(logp_BT, ref_logp_BT=ref_logp_BT)
        kl_BT = kl_estimate(
            torch.where(on_BT, logp_BT, 0.0), torch.where(on_BT, ref_logp_BT, 0.0), cfg.kl_estimator
        )
        kl = aggregate(
            kl_BT, mask_BT, cfg.agg, norm_len=cfg.norm_len, num_tokens=num_tokens, num_rows=num_rows
        )
        total = total + cfg.kl_coef * kl
        metrics["loss/kl"] = kl.detach()

    if cfg.entropy_coef != 0.0 and entropy_BT is None:
        raise ValueError("entropy_coef ≠ 0 needs per-token entropy: pass entropy_BT")
    if entropy_BT is not None:
        _check_inputs(logp_BT, entropy_BT=entropy_BT)
        ent = aggregate(
            entropy_BT,
            mask_BT,
            cfg.agg,
            norm_len=cfg.norm_len,
            num_tokens=num_tokens,
            num_rows=num_rows,
        )
        total = total - cfg.entropy_coef * ent
        metrics["loss/entropy"] = ent.detach()

    metrics["loss/total"] = total.detach()
    metrics.update(_diagnostics(ratio_stats, count_B, segments, turn_kl_BK, clip_counts))
    return total, metrics


class _KnownGradient(torch.autograd.Function):
    """``value`` as a function of ``logp_BT`` whose gradient ``grad_BT`` was computed in closed form
    along with it, so that the backward pass is a single multiply."""

    @staticmethod
    def forward(ctx, logp_BT: Tensor, value: Tensor, grad_BT: Tensor) -> Tensor:
        ctx.save_for_backward(grad_BT)
        ctx.logp_dtype = logp_BT.dtype
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:
        (grad_BT,) = ctx.saved_tensors
        return (grad_out * grad_BT).to(ctx.logp_dtype), None, None


def _ratio(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    on_BT: Tensor,
    turn_kl_BK: Tensor,
    segments: TurnSegments,
    cfg: PolicyLossConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """The ratio r at the configured level (per token, turn or row), capped from above at
    exp(``log_ratio_cap``); where the cap binds (log r > cap: no gradient); and the number of
    trained tokens each ratio stands for (the mask for token ratios).

    Turn and sequence ratios come from ``turn_kl_BK`` (Σ ρ per turn). Off the mask the token ratio
    is 1 (ρ is zeroed there, whatever the inputs hold).
    """
    cap = cfg.log_ratio_cap
    if cfg.ratio == "token":
        ratio_BT = logp_BT.detach() - old_logp_BT
        torch.where(on_BT, ratio_BT, ratio_BT.new_zeros(()), out=ratio_BT)
        capped_BT = ratio_BT > cap
        return ratio_BT.clamp_(max=cap).exp_(), capped_BT, on_BT
    if cfg.ratio == "turn":
        count = segments.lengths_BK
        level = turn_kl_BK / count.clamp(min=1)
    else:
        count = segments.lengths_BK.sum(dim=1, keepdim=True)
        level = turn_kl_BK.sum(dim=1, keepdim=True) / count.clamp(min=1)
    return level.clamp(max=cap).exp(), level > cap, count


def _ratio_stats(ratio: Tensor, ratio_count: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Σ of the ratio over trained tokens, and its min and max over them (±inf when there is none);
    ``ratio_count`` holds the number of trained tokens behind each value of ``ratio``."""
    present = ratio_count != 0
    total = (ratio * ratio_count).sum()
    if not ratio.numel():
        return total, ratio.new_full((), math.inf), ratio.new_full((), -math.inf)
    lowest = torch.where(present, ratio, math.inf).amin()
    return total, lowest, torch.where(present, ratio, -math.inf).amax()


def _clipped_surrogate(
    ratio_BT: Tensor, adv_BT: Tensor, on_BT: Tensor, cfg: PolicyLossConfig
) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor, Tensor | None]]:
    """Per-token loss (1) with the dual clip, 0 off the mask; the tokens whose gradient the clip
    cuts (``None`` when none can be); and the numbers of tokens where the low, high and dual clips
    bind (``None`` for dual without dual clip). ``ratio_BT`` is overwritten (it becomes the loss);
    whatever ``adv_BT`` holds off the mask is masked out of every result.

    With P = A·r and P̄ = A·clip(r, 1 − ε_low, 1 + ε_high), (1) is −min(P, P̄); a bound binds
    where P > P̄ (A < 0 and r < 1 − ε_low: low; A > 0 and r > 1 + ε_high: high). A hard bound cuts
    the gradient there, a gradient-preserving one keeps it (``clip_grad``), and a binding dual clip
    always cuts it.
    """
    adv_clipped_BT = ratio_BT.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high).mul_(adv_BT)
    adv_ratio_BT = ratio_BT.mul_(adv_BT)
    bound_BT = adv_ratio_BT > adv_clipped_BT
    bound_BT &= on_BT
    loss_BT = torch.minimum(adv_ratio_BT, adv_clipped_BT, out=adv_ratio_BT).neg_()
    del adv_clipped_BT  # large; no longer needed
    torch.where(on_BT, loss_BT, loss_BT.new_zeros(()), out=loss_BT)
    neg_BT = adv_BT < 0
    neg_BT &= on_BT
    low_BT = bound_BT & neg_BT
    num_bound, num_low = torch.count_nonzero(bound_BT), torch.count_nonzero(low_BT)
    cut_BT = {"hard": bound_BT, "upper": low_BT, "both": None}[cfg.clip_grad]
    if cfg.dual_clip is None:
        return loss_BT, cut_BT, (num_low, num_bound - num_low, None)
    floor_BT = adv_BT * -cfg.dual_clip
    dual_BT = neg_BT & (loss_BT > floor_BT)
    torch.where(dual_BT, floor_BT, loss_BT, out=loss_BT)
    cut_BT = dual_BT if cut_BT is None else cut_BT | dual_BT
    return loss_BT, cut_BT, (num_low, num_bound - num_low, torch.count_nonzero(dual_BT))


def _diagnostics(
    ratio_stats: tuple[Tensor, Tensor, Tensor],
    count_B: Tensor,
    segments: TurnSegments,
    turn_kl_BK: Tensor,
    clip_counts: tuple[Tensor, Tensor, Tensor | None],
) -> dict[str, Tensor]:
    """Clip fractions, ratio mean/min/max over trained tokens (1 when there is none), approx KL,
    turns per non-empty row and the turn entropy; all detached."""
    with torch.no_grad():
        count = count_B.sum()
        tokens = count.clamp(min=1)
        has_tokens = count > 0
        ratio_sum, lowest, highest = ratio_stats
        one = ratio_sum.new_ones(())
        num_low, num_high, num_dual = clip_counts
        rows_B = count_B > 0
        n_turns_B = segments.num_turns_B.to(one.dtype)
        return {
            "policy/clipfrac_low": num_low / tokens,
            "policy/clipfrac_high": num_high / tokens,
            "policy/clipfrac_dual": one.new_zeros(()) if num_dual is None else num_dual / tokens,
            "policy/approx_kl": -turn_kl_BK.sum() / tokens,
            "policy/ratio_mean": torch.where(has_tokens, ratio_sum / tokens, one),
            "policy/ratio_min": torch.where(has_tokens, lowest, one),
            "policy/ratio_max": torch.where(has_tokens, highest, one),
            "turn/turns_per_row": (n_turns_B * rows_B).sum() / rows_B.sum().clamp(min=1),
            "turn/turn_entropy": turn_update_entropy(turn_kl_BK, segments.valid_BK),
        }


def _check_inputs(logp_BT: Tensor, **others: Tensor) -> None:
    if logp_BT.dim() != 2:
        raise ValueError(f"logp_BT must be 2-D (batch, tokens); got shape {tuple(logp_BT.shape)}")
    if not logp_BT.dtype.is_floating_point:
        raise ValueError(f"logp_BT must be a floating-point tensor; got dtype {logp_BT.dtype}")
    for name, tensor in others.items():
        if tensor.shape != logp_BT.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but logp_BT has shape "
                f"{tuple(logp_BT.shape)}; every per-token input must be (batch, tokens)"
            )
