"""Policy losses: hand-worked values, loop-based references, properties and edge cases."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.core.losses import (
    POLICY_LOSSES,
    PolicyLossConfig,
    aggregate,
    entropy_balanced_advantage,
    kl_estimate,
    policy_loss,
    policy_loss_config,
    turn_update_entropy,
)
from at2po.core.segments import TurnSegments

AGG_MODES = [
    "token-mean",
    "token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
]
F64 = torch.float64


def t64(rows):
    return torch.tensor(rows, dtype=F64)


def grad_of(loss, logp):
    (g,) = torch.autograd.grad(loss, logp)
    return g


def random_batch(seed, batch, length, mask, noise):
    """logp, old logp (logp + noise·N(0,1)), advantages, all float64."""
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(batch, length, generator=gen, dtype=F64) * 3
    old = logp + noise * torch.randn(batch, length, generator=gen, dtype=F64)
    adv = torch.randn(batch, length, generator=gen, dtype=F64)
    mask_BT = torch.as_tensor(mask, dtype=F64)
    return logp.requires_grad_(), old, adv, mask_BT


# ---------------------------------------------------------------------------------------------
# Independent loop-based references


def loop_turns(mask_row):
    """Lists of token positions, one per maximal run of 1s."""
    turns, current = [], []
    for t, m in enumerate(mask_row):
        if m:
            current.append(t)
        elif current:
            turns.append(current)
            current = []
    if current:
        turns.append(current)
    return turns


def loop_turn_loss(logp, old, adv, mask, clip_low, clip_high, cap=10.0):
    """ATPO loss written per row and per turn with scalar ops, seq-mean-token-mean."""
    row_losses = []
    for b in range(logp.shape[0]):
        turns = loop_turns(mask[b].tolist())
        if not turns:
            continue
        token_losses = []
        for turn in turns:
            ell = sum(float(logp[b, t].detach() - old[b, t]) for t in turn) / len(turn)
            for t in turn:
                log_s = torch.clamp(ell + logp[b, t] - logp[b, t].detach(), max=cap)
                s = torch.exp(log_s)
                a = float(adv[b, t])
                unclipped = -a * s
                clipped = -a * torch.clamp(s, 1 - clip_low, 1 + clip_high)
                token_losses.append(torch.maximum(unclipped, clipped))
        row_losses.append(torch.stack(token_losses).mean())
    return torch.stack(row_losses).mean() if row_losses else logp.sum() * 0


def loop_aggregate(loss, mask, mode, norm_len=None):
    rows = []
    for b in range(loss.shape[0]):
        vals = [float(loss[b, t]) for t in range(loss.shape[1]) if mask[b, t]]
        rows.append(vals)
    tokens = [v for r in rows for v in r]
    nonempty = [r for r in rows if r]
    if mode == "token-sum":
        return sum(tokens)
    if mode == "token-mean":
        return sum(tokens) / len(tokens) if tokens else 0.0
    if not nonempty:
        return 0.0
    if mode == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in nonempty) / len(nonempty)
    total = sum(sum(r) for r in nonempty) / len(nonempty)
    if mode == "seq-mean-token-sum":
        return total
    return total / (norm_len if norm_len is not None else loss.shape[1])


def loop_turn_entropy(log_ratio, mask):
    hs = []
    for b in range(log_ratio.shape[0]):
        turns = loop_turns(mask[b].tolist())
        kls = [sum(float(log_ratio[b, t]) for t in turn) for turn in turns]
        total = sum(kls)
        if total == 0:
            continue
        if len(kls) == 1:
            hs.append(0.0)
            continue
        z = [math.exp(k / total) for k in kls]
        p = [v / sum(z) for v in z]
        hs.append(-sum(q * math.log(q) for q in p if q > 0) / math.log(len(kls)))  # 0·log 0 = 0
    return sum(hs) / len(hs) if hs else 0.0


def autograd_reference_loss(logp, old, adv, mask, cfg):
    """The policy loss as the formulas read, differentiated by autograd: ratio groups found with
    Python loops, r = exp(min(sg[ℓ] + log π − sg[log π], cap)), gradient-preserving bounds written
    b·r/sg[r], dual clip, and the aggregation as per-row Python sums. Returns the loss and the
    per-token ratio, low/high/dual clip masks (trained tokens only)."""
    batch, length = logp.shape
    on = mask != 0
    level = torch.zeros(batch, length, dtype=F64)
    for b in range(batch):
        trained = [t for t in range(length) if on[b, t]]
        if cfg.ratio == "token":
            groups = [[t] for t in trained]
        elif cfg.ratio == "turn":
            groups = loop_turns(on[b].tolist())
        else:
            groups = [trained] if trained else []
        for group in groups:
            ell = sum(float(logp[b, t].detach() - old[b, t]) for t in group) / len(group)
            for t in group:
                level[b, t] = ell
    log_r = torch.clamp(level + logp - logp.detach(), max=cfg.log_ratio_cap)
    r = torch.exp(log_r)
    low, high = 1 - cfg.clip_low, 1 + cfg.clip_high
    r_value = r.detach()
    upper = high * r / r_value if cfg.clip_grad in ("upper", "both") else torch.full_like(r, high)
    lower = low * r / r_value if cfg.clip_grad == "both" else torch.full_like(r, low)
    clipped = torch.where(r_value > high, upper, torch.where(r_value < low, lower, r))
    a = torch.where(on, adv, 0.0)
    loss = torch.maximum(-a * r, -a * clipped)
    dual = torch.zeros_like(on)
    if cfg.dual_clip is not None:
        floor = -a * cfg.dual_clip
        dual = (a < 0) & (loss.detach() > floor)
        loss = torch.where(a < 0, torch.minimum(loss, floor), loss)
    rows = [loss[b][on[b]] for b in range(batch)]
    full = [row for row in rows if row.numel()]
    tokens = sum(row.numel() for row in rows)
    if not full:
        total = logp.sum() * 0
    elif cfg.agg == "token-sum":
        total = sum(row.sum() for row in full)
    elif cfg.agg == "token-mean":
        total = sum(row.sum() for row in full) / tokens
    elif cfg.agg == "seq-mean-token-mean":
        total = sum(row.mean() for row in full) / len(full)
    elif cfg.agg == "seq-mean-token-sum":
        total = sum(row.sum() for row in full) / len(full)
    else:
        total = sum(row.sum() for row in full) / len(full) / length
    clip_low = on & (a < 0) & (r_value < low)
    clip_high = on & (a > 0) & (r_value > high)
    return total, r_value, clip_low, clip_high, on & dual


# ---------------------------------------------------------------------------------------------
# Hand-worked values


def test_token_ppo_hand_example():
    # r = [1.5, 0.5, 1.0], A = [1, -1, 2], ε = 0.2:
    #   t0: A>0, r>1.2 → max(-1.5, -1.2) = -1.2 (clipped, no gradient)
    #   t1: A<0, r<0.8 → max(0.5, 0.8) = 0.8 (clipped, no gradient)
    #   t2: r = 1   → -2, gradient d(-A r)/dlogp = -A r = -2
    # token-mean = (-1.2 + 0.8 - 2) / 3 = -0.8; gradient of t2 = -2 / 3.
    old = t64([[0.0, 0.0, -1.0, -1.0]])
    logp = (old + t64([[math.log(1.5), math.log(0.5), 0.0, 7.0]])).requires_grad_()
    adv = t64([[1.0, -1.0, 2.0, 5.0]])
    mask = t64([[1, 1, 1, 0]])
    loss, m = policy_loss(logp, old, adv, mask, "token")
    assert loss.item() == pytest.approx(-0.8)
    assert grad_of(loss, logp)[0].tolist() == pytest.approx([0.0, 0.0, -2 / 3, 0.0])
    assert m["policy/clipfrac_high"].item() == pytest.approx(1 / 3)
    assert m["policy/clipfrac_low"].item() == pytest.approx(1 / 3)
    assert m["policy/ratio_mean"].item() == pytest.approx(1.0)
    assert m["policy/ratio_min"].item() == pytest.approx(0.5)
    assert m["policy/ratio_max"].item() == pytest.approx(1.5)
    # approx KL = mean of -(logp - old) = -(ln 1.5 + ln 0.5 + 0) / 3
    assert m["policy/approx_kl"].item() == pytest.approx(-(math.log(0.75)) / 3)
    assert m["turn/turns_per_row"].item() == 1.0


def test_dual_clip_hand_example():
    # A = -1, r = 5: PPO gives max(5, 1.2) = 5; dual clip c = 3 caps it at -A·c = 3, no gradient.
    # A = -1, r = 2: max(2, 1.2) = 2 < 3, untouched, gradient -A r = 2.
    old = t64([[0.0, 0.0]])
    logp = (old + t64([[math.log(5.0), math.log(2.0)]])).requires_grad_()
    adv = t64([[-1.0, -1.0]])
    cfg = policy_loss_config("token", dual_clip=3.0, agg="token-sum")
    loss, m = policy_loss(logp, old, adv, t64([[1, 1]]), cfg)
    assert loss.item() == pytest.approx(3.0 + 2.0)
    assert grad_of(loss, logp)[0].tolist() == pytest.approx([0.0, 2.0])
    assert m["policy/clipfrac_dual"].item() == pytest.approx(0.5)


def test_turn_loss_hand_example():
    # Row: turn 0 = tokens 0-1 (ρ = 0.002, 0.004 → ℓ = 0.003), token 2 is an observation,
    #      turn 1 = tokens 3-4 (ρ = -0.010, 0.000 → ℓ = -0.005).
    # ε = (3e-3, 4e-3): bounds [0.997, 1.004].
    #   turn 0, A = +1: s = e^0.003 = 1.0030045 inside → L = -1.0030045, grad -A·s per token
    #   turn 1, A = -1: s = e^-0.005 = 0.9950125 < 0.997 → L = max(0.9950125, 0.997) = 0.997,
    #     clipped: the whole turn gets no gradient.
    # seq-mean-token-mean over 4 tokens: (2·(-1.0030045) + 2·0.997) / 4.
    old = t64([[-1.0, -2.0, -3.0, -1.5, -0.5]])
    logp = (old + t64([[0.002, 0.004, 9.0, -0.010, 0.0]])).requires_grad_()
    adv = t64([[1.0, 1.0, 0.0, -1.0, -1.0]])
    mask = t64([[1, 1, 0, 1, 1]])
    loss, m = policy_loss(logp, old, adv, mask, "turn")
    s0 = math.exp(0.003)
    assert loss.item() == pytest.approx((2 * -s0 + 2 * 0.997) / 4, rel=1e-12)
    assert grad_of(loss, logp)[0].tolist() == pytest.approx([-s0 / 4, -s0 / 4, 0, 0, 0], rel=1e-12)
    assert m["policy/clipfrac_low"].item() == pytest.approx(0.5)
    assert m["policy/clipfrac_high"].item() == 0.0
    assert m["policy/ratio_min"].item() == pytest.approx(math.exp(-0.005))
    assert m["policy/ratio_max"].item() == pytest.approx(s0)
    assert m["turn/turns_per_row"].item() == 2.0


def test_sequence_loss_hand_example():
    # Row 0: ρ = [3e-4, -1e-4, 4e-4] → ℓ = 2e-4, s = e^2e-4 ∈ [0.9997, 1.0004]; A = 1 → L = -s.
    # Row 1: ρ = 1e-3 everywhere → s = e^1e-3 > 1.0004; A = 1 → clipped at -1.0004, no gradient.
    # seq-mean-token-mean = (-s + -1.0004) / 2; row-0 gradient per token = -s / 3 / 2.
    old = t64([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    logp = (old + t64([[3e-4, -1e-4, 4e-4], [1e-3, 1e-3, 1e-3]])).requires_grad_()
    adv = torch.ones(2, 3, dtype=F64)
    loss, m = policy_loss(logp, old, adv, torch.ones(2, 3), "sequence")
    s = math.exp(2e-4)
    assert loss.item() == pytest.approx((-s - 1.0004) / 2, rel=1e-12)
    expected = [-s / 6] * 3 + [0.0] * 3
    assert grad_of(loss, logp).flatten().tolist() == pytest.approx(expected, rel=1e-12)
    assert m["policy/clipfrac_high"].item() == pytest.approx(0.5)


def test_aepo_hand_example():
    # Entropies [1, 2, 3] → mean 2, unbiased std 1 → ẑ = [-1, 0, 1]; β = 0.2 → A·[0.8, 1, 1.2].
    # A = 1 everywhere, r = [1, 1, 1.5]: t2 is above 1.2 and clipped, but the upper bound keeps the
    # gradient: value -1.2·1.2 = -1.44, gradient -Ã·1.2 = -1.44. Unclipped tokens: -Ã r.
    # token-mean: (-0.8 - 1 - 1.44) / 3; gradients [-0.8, -1, -1.44] / 3.
    old = t64([[0.0, 0.0, 0.0]])
    logp = (old + t64([[0.0, 0.0, math.log(1.5)]])).requires_grad_()
    adv = torch.ones(1, 3, dtype=F64)
    entropy = t64([[1.0, 2.0, 3.0]])
    loss, m = policy_loss(logp, old, adv, torch.ones(1, 3), "aepo", entropy_BT=entropy)
    assert loss.item() == pytest.approx((-0.8 - 1.0 - 1.44) / 3)
    assert grad_of(loss, logp)[0].tolist() == pytest.approx([-0.8 / 3, -1 / 3, -1.44 / 3])
    assert m["policy/clipfrac_high"].item() == pytest.approx(1 / 3)
    assert m["loss/entropy"].item() == pytest.approx(2.0)


def test_gradient_preserving_bounds():
    # A = -1, r = 0.5 < 0.8: hard clip → value 0.8, gradient 0; GPPO ("both") → value 0.8,
    # gradient -A·0.8 = 0.8; GPPO-half keeps only the upper bound's gradient → 0.
    old = t64([[0.0]])
    logp = (old + math.log(0.5)).requires_grad_()
    adv = t64([[-1.0]])
    for name, grad in [("token", 0.0), ("gppo_half", 0.0), ("gppo", 0.8)]:
        loss, _ = policy_loss(logp, old, adv, torch.ones(1, 1), name)
        assert loss.item() == pytest.approx(0.8)
        assert grad_of(loss, logp).item() == pytest.approx(grad)


def test_entropy_balanced_advantage_edge_cases():
    adv = t64([[2.0, 2.0, 7.0]])
    mask = t64([[1, 1, 0]])
    # equal entropies: std 0 → 1, ẑ = 0, advantages unchanged
    same = entropy_balanced_advantage(adv, t64([[0.5, 0.5, 9.0]]), mask, 0.2)
    assert same[:, :2].tolist() == [[2.0, 2.0]]
    # a single token: its std is undefined → 1, ẑ = 0
    single = entropy_balanced_advantage(adv, t64([[4.0, 1.0, 1.0]]), t64([[1, 0, 0]]), 0.2)
    assert single[0, 0].item() == 2.0


def test_kl_estimators_closed_forms():
    logp = t64([[-1.0, -2.0, -0.5, -40.0]])
    ref = t64([[0.0, -2.0, -1.0, -10.0]])
    d = [-1.0, 0.0, 0.5, -30.0]
    assert kl_estimate(logp, ref, "k1")[0].tolist() == pytest.approx(d)
    assert kl_estimate(logp, ref, "k2")[0].tolist() == pytest.approx([x * x / 2 for x in d])
    # k3 = e^{-d} + d - 1, with -d clamped to ±20 and the result to ±10:
    k3 = [math.exp(1) - 2, 0.0, math.exp(-0.5) - 0.5, 10.0]
    assert kl_estimate(logp, ref, "k3")[0].tolist() == pytest.approx(k3)
    assert kl_estimate(logp, ref, "low_var_kl")[0].tolist() == pytest.approx(k3)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 8))
def test_k1_and_k3_are_unbiased_for_the_kl(seed, vocab):
    # Expectation under π of k1 and k3, taken exactly over a small vocabulary, equals
    # KL(π‖π_ref) = Σ π log(π/π_ref). Logits stay within ±1 so that k3's ±10 clamp never binds.
    gen = torch.Generator().manual_seed(seed)
    logits = torch.rand(2, vocab, generator=gen, dtype=F64) * 2 - 1
    logp, ref = torch.log_softmax(logits, dim=1).split(1)
    p = logp.exp()
    kl = float((p * (logp - ref)).sum())
    for est in ("k1", "k3"):
        assert float((p * kl_estimate(logp, ref, est)).sum()) == pytest.approx(kl, abs=1e-10)


def test_kl_and_entropy_terms_enter_the_total():
    logp = t64([[-1.0, -2.0]]).requires_grad_()
    old = logp.detach().clone()
    ref = t64([[-1.5, -2.0]])
    entropy = t64([[0.3, 0.5]]).requires_grad_()
    cfg = policy_loss_config("token", kl_coef=0.1, kl_estimator="k2", entropy_coef=0.01)
    adv = torch.zeros(1, 2, dtype=F64)  # policy term 0, so the total is the two regularisers
    mask = torch.ones(1, 2)
    loss, m = policy_loss(logp, old, adv, mask, cfg, ref_logp_BT=ref, entropy_BT=entropy)
    kl = (0.5 * 0.5**2 + 0.0) / 2
    assert m["loss/kl"].item() == pytest.approx(kl)
    assert m["loss/entropy"].item() == pytest.approx(0.4)
    assert loss.item() == pytest.approx(0.1 * kl - 0.01 * 0.4)
    g_logp, g_ent = torch.autograd.grad(loss, [logp, entropy])
    # d/dlogp of 0.1 · mean(d²/2) = 0.1 · d / 2 per token
    assert g_logp[0].tolist() == pytest.approx([0.1 * 0.5 / 2, 0.0])
    assert g_ent[0].tolist() == pytest.approx([-0.01 / 2, -0.01 / 2])


def test_turn_update_entropy_hand_example():
    # Row 0: turns KL = [0.05+0.05, 0.3] = [0.1, 0.3], sum 0.4 → relative [0.25, 0.75],
    #   p = softmax → [1/(1+e^0.5), e^0.5/(1+e^0.5)], h = H(p) / ln 2.
    # Row 1: one turn → h = 0. Row 2: KL sum 0 → skipped. H_turn = (h0 + 0) / 2.
    log_ratio = t64([[0.05, 0.05, 0.0, 0.3], [0.2, 0.0, 0.0, 0.0], [0.1, 0.0, -0.1, 0.0]])
    mask = t64([[1, 1, 0, 1], [1, 0, 0, 0], [1, 0, 1, 0]])
    p0 = 1 / (1 + math.exp(0.5))
    h0 = -(p0 * math.log(p0) + (1 - p0) * math.log(1 - p0)) / math.log(2)
    seg = TurnSegments.from_mask(mask)
    got = turn_update_entropy(seg.sum(log_ratio), seg.valid_BK)
    assert got.item() == pytest.approx(h0 / 2)


# ---------------------------------------------------------------------------------------------
# Properties on random batches

batch_shapes = st.tuples(st.integers(1, 5), st.integers(1, 10))


@st.composite
def random_masks(draw):
    batch, length = draw(batch_shapes)
    row = st.lists(st.integers(0, 1), min_size=length, max_size=length)
    return draw(st.lists(row, min_size=batch, max_size=batch))


@settings(max_examples=60, deadline=None)
@given(random_masks(), st.integers(0, 2**31 - 1), st.sampled_from([0.002, 0.01, 1.0]))
def test_turn_loss_matches_loop_reference_and_closed_form_gradient(mask, seed, noise):
    logp, old, adv, mask_BT = random_batch(seed, len(mask), len(mask[0]), mask, noise)
    loss, _ = policy_loss(logp, old, adv, mask_BT, "turn")
    ref = loop_turn_loss(logp, old, adv, mask_BT, 3e-3, 4e-3)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-12)
    grad = grad_of(loss, logp)
    if ref.requires_grad:
        assert torch.allclose(grad, grad_of(ref, logp), rtol=1e-9, atol=1e-12)
    # closed form: ∂loss/∂logp_t = -A_t·s_t / (n_row · rows) on unclipped tokens, 0 elsewhere
    rows = sum(1 for r in mask if any(r))
    expected = torch.zeros_like(grad)
    for b, r in enumerate(mask):
        n = sum(r)
        for turn in loop_turns(r):
            ell = sum(float(logp[b, t].detach() - old[b, t]) for t in turn) / len(turn)
            s = math.exp(min(ell, 10.0))
            for t in turn:
                a = float(adv[b, t])
                clipped = (a > 0 and s > 1.004) or (a < 0 and s < 0.997)
                expected[b, t] = 0.0 if clipped else -a * s / (n * rows)
    assert torch.allclose(grad, expected, rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(batch_shapes, st.data(), st.integers(0, 2**31 - 1), st.sampled_from([0.002, 0.05]))
def test_one_turn_rows_give_the_sequence_loss(shape, data, seed, noise):
    batch, length = shape
    mask = []
    for _ in range(batch):
        start = data.draw(st.integers(0, length - 1))
        stop = data.draw(st.integers(start, length))
        mask.append([1 if start <= t < stop else 0 for t in range(length)])
    logp, old, adv, mask_BT = random_batch(seed, batch, length, mask, noise)
    turn_cfg = POLICY_LOSSES["turn"]
    seq_cfg = replace(turn_cfg, ratio="sequence")
    loss_turn, _ = policy_loss(logp, old, adv, mask_BT, turn_cfg)
    loss_seq, _ = policy_loss(logp, old, adv, mask_BT, seq_cfg)
    assert loss_turn.item() == pytest.approx(loss_seq.item(), rel=1e-12, abs=1e-15)
    assert torch.allclose(grad_of(loss_turn, logp), grad_of(loss_seq, logp), rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    random_masks(),
    st.integers(0, 2**31 - 1),
    st.sampled_from([0.002, 0.3]),
    st.sampled_from(AGG_MODES),
)
def test_single_token_turns_give_the_token_loss(mask, seed, noise, agg):
    mask = [[m if t % 2 == 0 else 0 for t, m in enumerate(row)] for row in mask]  # no 1s adjacent
    logp, old, adv, mask_BT = random_batch(seed, len(mask), len(mask[0]), mask, noise)
    turn_cfg = replace(POLICY_LOSSES["turn"], agg=agg)
    token_cfg = replace(turn_cfg, ratio="token")
    loss_turn, m_turn = policy_loss(logp, old, adv, mask_BT, turn_cfg)
    loss_tok, m_tok = policy_loss(logp, old, adv, mask_BT, token_cfg)
    assert loss_turn.item() == pytest.approx(loss_tok.item(), rel=1e-12, abs=1e-15)
    assert torch.allclose(grad_of(loss_turn, logp), grad_of(loss_tok, logp), rtol=1e-12)
    assert m_turn["policy/clipfrac_low"] == m_tok["policy/clipfrac_low"]
    assert m_turn["policy/clipfrac_high"] == m_tok["policy/clipfrac_high"]


@settings(max_examples=60, deadline=None)
@given(random_masks(), st.integers(0, 2**31 - 1), st.sampled_from(["token", "gppo", "turn"]))
def test_clip_fractions_count_tokens_whose_clipped_branch_is_larger(mask, seed, name):
    # Independent definition (PPO implementations): a token is clipped when
    # -A·clip(r) > -A·r; "low" are those with A < 0, "high" those with A > 0.
    logp, old, adv, mask_BT = random_batch(seed, len(mask), len(mask[0]), mask, 0.3)
    cfg = policy_loss_config(name)
    _, m = policy_loss(logp, old, adv, mask_BT, cfg)
    ratio = torch.exp(logp.detach() - old)
    if name == "turn":
        seg = TurnSegments.from_mask(mask_BT)
        ratio = torch.exp(seg.broadcast(seg.mean((logp.detach() - old) * mask_BT)))
    clipped_ratio = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
    clipped = (-adv * clipped_ratio > -adv * ratio) & (mask_BT > 0)
    tokens = max(1, int(mask_BT.sum()))
    low = int((clipped & (adv < 0)).sum()) / tokens
    high = int((clipped & (adv > 0)).sum()) / tokens
    assert m["policy/clipfrac_low"].item() == pytest.approx(low)
    assert m["policy/clipfrac_high"].item() == pytest.approx(high)


@settings(max_examples=80, deadline=None)
@given(
    random_masks(),
    st.integers(0, 2**31 - 1),
    st.sampled_from(AGG_MODES),
    st.sampled_from([None, 7]),
)
def test_aggregate_matches_loop_reference(mask, seed, mode, norm_len):
    gen = torch.Generator().manual_seed(seed)
    mask_BT = torch.tensor(mask)
    loss_BT = torch.randn(mask_BT.shape, generator=gen, dtype=F64)
    got = aggregate(loss_BT, mask_BT, mode, norm_len=norm_len)
    assert got.item() == pytest.approx(loop_aggregate(loss_BT, mask_BT, mode, norm_len), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(random_masks(), st.integers(0, 2**31 - 1))
def test_turn_entropy_matches_loop_reference(mask, seed):
    gen = torch.Generator().manual_seed(seed)
    mask_BT = torch.tensor(mask)
    log_ratio = torch.randn(mask_BT.shape, generator=gen, dtype=F64) * (mask_BT != 0)
    seg = TurnSegments.from_mask(mask_BT)
    got = turn_update_entropy(seg.sum(log_ratio), seg.valid_BK)
    assert got.item() == pytest.approx(loop_turn_entropy(log_ratio, mask_BT), abs=1e-9)
    assert 0.0 <= got.item() <= 1.0 + 1e-12


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
@pytest.mark.parametrize("agg", AGG_MODES)
def test_empty_mask_gives_finite_zero_loss_and_zero_gradient(name, agg):
    # Garbage (NaN, inf) outside the mask must not leak into the loss or the gradient.
    logp = torch.full((3, 4), float("nan"), dtype=F64).requires_grad_()
    old = torch.full((3, 4), float("inf"), dtype=F64)
    adv = torch.full((3, 4), float("nan"), dtype=F64)
    ref = torch.full((3, 4), -float("inf"), dtype=F64)
    entropy = torch.full((3, 4), float("nan"), dtype=F64)
    cfg = policy_loss_config(name, agg=agg, kl_coef=0.1, entropy_coef=0.01)
    loss, m = policy_loss(
        logp, old, adv, torch.zeros(3, 4), cfg, ref_logp_BT=ref, entropy_BT=entropy
    )
    assert loss.item() == 0.0
    assert grad_of(loss, logp).abs().sum().item() == 0.0
    assert all(math.isfinite(v.item()) for v in m.values())
    assert m["policy/ratio_mean"].item() == 1.0


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
@pytest.mark.parametrize("agg", AGG_MODES)
def test_empty_rows_and_padding_garbage_change_nothing(name, agg):
    logp, old, adv, mask = random_batch(7, 3, 6, [[1, 1, 0, 1, 0, 0]] * 3, 0.1)
    entropy = torch.rand(3, 6, dtype=F64, generator=torch.Generator().manual_seed(1))
    cfg = policy_loss_config(name, agg=agg)
    base, _ = policy_loss(logp, old, adv, mask, cfg, entropy_BT=entropy)
    grad = grad_of(base, logp)
    # append a row without tokens full of garbage, and fill padding with garbage
    nan_row = torch.full((1, 6), float("nan"), dtype=F64)
    logp2 = torch.cat([logp.detach(), nan_row]).requires_grad_()
    old2 = torch.cat([old, nan_row])
    old2[:3, 5] = float("inf")
    adv2 = torch.cat([adv, nan_row])
    ent2 = torch.cat([entropy, nan_row])
    mask2 = torch.cat([mask, torch.zeros(1, 6, dtype=F64)])
    loss2, _ = policy_loss(logp2, old2, adv2, mask2, cfg, entropy_BT=ent2)
    assert loss2.item() == pytest.approx(base.item(), rel=1e-12)
    grad2 = grad_of(loss2, logp2)
    assert torch.allclose(grad2[:3], grad, rtol=1e-12)
    assert grad2[3].abs().sum().item() == 0.0


@pytest.mark.parametrize(
    ("agg", "norm"), [("token-mean", "tokens"), ("seq-mean-token-mean", "rows")]
)
def test_micro_batches_sum_to_the_mini_batch_loss(agg, norm):
    mask = [[1, 1, 0, 1], [1, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]]
    logp, old, adv, mask_BT = random_batch(3, 4, 4, mask, 0.01)
    cfg = policy_loss_config("turn", agg=agg)
    full, _ = policy_loss(logp, old, adv, mask_BT, cfg)
    kwargs = {"num_tokens": 10} if norm == "tokens" else {"num_rows": 4}
    parts = [
        policy_loss(logp[s], old[s], adv[s], mask_BT[s], cfg, **kwargs)[0]
        for s in (slice(0, 1), slice(1, 4))
    ]
    assert sum(p.item() for p in parts) == pytest.approx(full.item(), rel=1e-12)


def test_explicit_turn_ids_override_mask_runs():
    # Two runs that share turn id 0 get one ratio: ℓ = mean(0.01, 0.03) = 0.02 for both.
    old = t64([[0.0, 0.0, 0.0]])
    logp = (old + t64([[0.01, 0.0, 0.03]])).requires_grad_()
    cfg = policy_loss_config("turn", clip_low=0.5, clip_high=0.5)
    mask = t64([[1, 0, 1]])
    _, m_runs = policy_loss(logp, old, torch.ones(1, 3, dtype=F64), mask, cfg)
    _, m_ids = policy_loss(
        logp, old, torch.ones(1, 3, dtype=F64), mask, cfg, turn_BT=torch.tensor([[0, -1, 0]])
    )
    assert m_runs["policy/ratio_min"].item() == pytest.approx(math.exp(0.01))
    assert m_ids["policy/ratio_min"].item() == pytest.approx(math.exp(0.02))
    assert m_ids["policy/ratio_max"].item() == pytest.approx(math.exp(0.02))
    assert m_ids["turn/turns_per_row"].item() == 1.0


def test_log_ratio_cap_only_from_above():
    # ℓ = 12 > 10: the turn ratio is e^10 and gets no gradient; ℓ = -30 is not capped.
    old = t64([[0.0, 0.0]])
    logp = (old + t64([[12.0, -30.0]])).requires_grad_()
    cfg = policy_loss_config("turn", agg="token-sum")
    adv = t64([[-1.0, -1.0]])
    loss, m = policy_loss(logp, old, adv, t64([[1, 0]]), cfg)
    assert m["policy/ratio_max"].item() == pytest.approx(math.exp(10.0))
    assert grad_of(loss, logp).abs().sum().item() == 0.0
    _, m2 = policy_loss(logp, old, adv, t64([[0, 1]]), cfg)
    assert m2["policy/ratio_min"].item() == pytest.approx(math.exp(-30.0))


@settings(max_examples=150, deadline=None)
@given(
    random_masks(),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["token", "turn", "sequence"]),
    st.sampled_from(["hard", "upper", "both"]),
    st.sampled_from([None, 1.5]),
    st.sampled_from(AGG_MODES),
    st.sampled_from([(0.2, 0.28), (3e-3, 4e-3)]),
    st.sampled_from([(0.002, 10.0), (0.3, 10.0), (1.0, 0.2)]),
)
def test_closed_form_gradient_matches_autograd_reference(
    mask, seed, ratio, clip_grad, dual_clip, agg, clip, noise_and_cap
):
    # Every level × clip variant × dual clip × aggregation, against autograd through the formulas;
    # a cap of 0.2 with noise 1 makes the cap bind on some tokens, turns and rows.
    noise, cap = noise_and_cap
    logp, old, adv, mask_BT = random_batch(seed, len(mask), len(mask[0]), mask, noise)
    cfg = PolicyLossConfig(
        ratio=ratio,
        clip_low=clip[0],
        clip_high=clip[1],
        clip_grad=clip_grad,
        dual_clip=dual_clip,
        log_ratio_cap=cap,
        agg=agg,
    )
    loss, m = policy_loss(logp, old, adv, mask_BT, cfg)
    ref, r, clip_low, clip_high, dual = autograd_reference_loss(logp, old, adv, mask_BT, cfg)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-12)
    ref_grad = grad_of(ref, logp) if ref.requires_grad else torch.zeros_like(logp)
    assert torch.allclose(grad_of(loss, logp), ref_grad, rtol=1e-9, atol=1e-12)
    on = mask_BT != 0
    tokens = max(1, int(on.sum()))
    assert m["policy/clipfrac_low"].item() == pytest.approx(int(clip_low.sum()) / tokens)
    assert m["policy/clipfrac_high"].item() == pytest.approx(int(clip_high.sum()) / tokens)
    assert m["policy/clipfrac_dual"].item() == pytest.approx(int(dual.sum()) / tokens)
    if on.any():
        assert m["policy/ratio_min"].item() == pytest.approx(r[on].min().item(), rel=1e-12)
        assert m["policy/ratio_max"].item() == pytest.approx(r[on].max().item(), rel=1e-12)
        assert m["policy/ratio_mean"].item() == pytest.approx(r[on].mean().item(), rel=1e-12)
        approx_kl = -(logp.detach() - old)[on].mean().item()
        assert m["policy/approx_kl"].item() == pytest.approx(approx_kl, rel=1e-9, abs=1e-15)


@settings(max_examples=40, deadline=None)
@given(random_masks(), st.integers(0, 2**31 - 1), st.sampled_from(["turn", "token", "gppo"]))
def test_explicit_ids_equal_to_the_mask_runs_change_nothing(mask, seed, name):
    logp, old, adv, mask_BT = random_batch(seed, len(mask), len(mask[0]), mask, 0.01)
    ids = TurnSegments.from_mask(mask_BT).turn_BT
    garbage_ids = torch.where(mask_BT != 0, ids, 7)  # ids on untrained tokens are ignored
    loss, m = policy_loss(logp, old, adv, mask_BT, name)
    loss_ids, m_ids = policy_loss(logp, old, adv, mask_BT, name, turn_BT=garbage_ids)
    assert loss_ids.item() == loss.item()
    assert torch.equal(grad_of(loss_ids, logp), grad_of(loss, logp))
    assert {k: v.item() for k, v in m_ids.items()} == {k: v.item() for k, v in m.items()}


def test_gradient_takes_the_dtype_of_logp_and_survives_a_second_backward():
    logp, old, adv, mask = random_batch(5, 3, 8, [[1, 1, 0, 1, 1, 1, 0, 0]] * 3, 0.01)
    logp32 = logp.detach().float().requires_grad_()
    loss, _ = policy_loss(logp32, old, adv, mask, "turn")  # float64 old / adv: float64 loss
    assert loss.dtype == F64
    loss.backward(retain_graph=True)
    first = logp32.grad.clone()
    assert first.dtype == torch.float32
    loss.backward()
    assert torch.equal(logp32.grad, 2 * first)
    for name in ["turn", "token", "sequence"]:  # float32 log-probs, float64 advantages
        loss, _ = policy_loss(logp32, old.float(), adv, mask, name)
        assert loss.dtype == F64


def test_no_graph_without_gradient():
    logp, old, adv, mask = random_batch(6, 2, 5, [[1, 1, 0, 1, 1]] * 2, 0.01)
    with_grad, _ = policy_loss(logp, old, adv, mask, "turn")
    with torch.no_grad():
        no_grad, _ = policy_loss(logp, old, adv, mask, "turn")
    detached, _ = policy_loss(logp.detach(), old, adv, mask, "turn")
    assert no_grad.grad_fn is None and detached.grad_fn is None
    assert no_grad.item() == detached.item() == with_grad.item()


# ---------------------------------------------------------------------------------------------
# Errors


def test_unknown_loss_name_suggests_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'turn'"):
        policy_loss_config("trun")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("clip_low", 1.0, "clip_low"),
        ("clip_high", -0.1, "clip_high"),
        ("dual_clip", 1.0, "dual_clip"),
        ("agg", "mean", "agg must be one of"),
        ("ratio", "step", "ratio must be one of"),
        ("kl_estimator", "k4", "kl_estimator"),
        ("norm_len", 0, "norm_len"),
        ("log_ratio_cap", 0.0, "log_ratio_cap"),
    ],
)
def test_bad_config_values_are_rejected(field, value, message):
    with pytest.raises(ValueError, match=message):
        PolicyLossConfig(**{field: value})


def test_missing_inputs_are_reported():
    logp = torch.zeros(2, 3, requires_grad=True)
    args = (logp, torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="ref_logp_BT"):
        policy_loss(*args, policy_loss_config("token", kl_coef=0.1))
    with pytest.raises(ValueError, match="entropy_BT"):
        policy_loss(*args, "aepo")
    with pytest.raises(ValueError, match="entropy_BT"):
        policy_loss(*args, policy_loss_config("token", entropy_coef=0.1))
    with pytest.raises(ValueError, match="adv_BT has shape"):
        policy_loss(logp, torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="floating-point"):
        policy_loss(torch.zeros(2, 3, dtype=torch.long), *args[1:])
    with pytest.raises(ValueError, match="mode must be one of"):
        aggregate(torch.zeros(2, 3), torch.ones(2, 3), "sum")
