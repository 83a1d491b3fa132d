"""Agreement with verl's own ``core_algos`` on random inputs (run with ``make test-verl``).

verl pins numpy < 2 and transformers < 5.11, so it lives in its own environment (``.venv-verl``);
in the main environment this module is skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

from verl.trainer.ppo import core_algos
from verl.workers.config import ActorConfig

from at2po.core.credit import grpo_advantages
from at2po.core.losses import aggregate, kl_estimate, policy_loss, policy_loss_config

pytestmark = pytest.mark.verl

AGG_MODES = [
    "token-mean",
    "token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
]
TOL = 1e-6
NO_DUAL_CLIP = 1e9  # verl's vanilla loss always dual-clips; a huge c never binds
SEEDS = range(5)


def random_batch(seed, batch=16, length=64, noise=0.3):
    """float32 inputs like a trainer's: masks with several turns per row and some empty rows."""
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(batch, length, generator=gen) * 4
    old = logp + noise * torch.randn(batch, length, generator=gen)
    adv = torch.randn(batch, length, generator=gen)
    mask = (torch.rand(batch, length, generator=gen) < 0.7).float()
    mask[0] = 0.0
    return logp, old, adv, mask


def actor_config(clip_low, clip_high, clip_c=3.0, agg="token-mean", scale=None):
    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio=clip_low,
        clip_ratio_low=clip_low,
        clip_ratio_high=clip_high,
        clip_ratio_c=clip_c,
        loss_agg_mode=agg,
        loss_scale_factor=scale,
    )


def loss_and_grad(fn, logp):
    leaf = logp.clone().requires_grad_()
    loss, metrics = fn(leaf)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.item(), grad, metrics


@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_advantages_match(seed):
    gen = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 5, (40,), generator=gen)
    rewards = torch.randint(-1, 2, (40,), generator=gen).float()
    rewards[groups == 0] = 1.0  # a group with identical rewards
    groups[7] = 99  # a group of one
    length = 6
    mask = (torch.rand(40, length, generator=gen) < 0.8).float()
    mask[:, -1] = 1.0  # the outcome reward sits on the last token
    token_rewards = torch.zeros(40, length)
    token_rewards[:, -1] = rewards
    ref, _ = core_algos.compute_grpo_outcome_advantage(
        token_rewards, mask, np.array(groups.tolist(), dtype=object)
    )
    ours = grpo_advantages(rewards, groups).float().unsqueeze(1) * mask
    assert torch.allclose(ours, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize(("clip_low", "clip_high"), [(0.2, 0.2), (0.2, 0.28)])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_token_loss_matches_vanilla(seed, agg, clip_low, clip_high, dual_clip):
    logp, old, adv, mask = random_batch(seed)
    cfg_v = actor_config(clip_low, clip_high, dual_clip or NO_DUAL_CLIP, agg)
    ours_cfg = policy_loss_config(
        "token", clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, agg=agg
    )
    ref_loss, ref_grad, ref_m = loss_and_grad(
        lambda lp: core_algos.compute_policy_loss_vanilla(old, lp, adv, mask, agg, cfg_v), logp
    )
    loss, grad, m = loss_and_grad(lambda lp: policy_loss(lp, old, adv, mask, ours_cfg), logp)
    assert loss == pytest.approx(ref_loss, abs=TOL)
    assert torch.allclose(grad, ref_grad, atol=TOL, rtol=0)
    clipfrac = (m["policy/clipfrac_low"] + m["policy/clipfrac_high"]).item()
    assert clipfrac == pytest.approx(ref_m["actor/pg_clipfrac"], abs=TOL)
    assert m["policy/approx_kl"].item() == pytest.approx(ref_m["actor/ppo_kl"], abs=TOL)
    if dual_clip is not None:
        dual = m["policy/clipfrac_dual"].item()
        assert dual == pytest.approx(ref_m["actor/pg_clipfrac_lower"], abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("agg", AGG_MODES)
def test_sequence_loss_matches_gspo(seed, agg):
    logp, old, adv, mask = random_batch(seed, noise=0.002)
    cfg_v = actor_config(3e-4, 4e-4, agg=agg)
    ours_cfg = policy_loss_config("sequence", agg=agg)
    ref_loss, ref_grad, ref_m = loss_and_grad(
        lambda lp: core_algos.compute_policy_loss_gspo(old, lp, adv, mask, agg, cfg_v), logp
    )
    loss, grad, m = loss_and_grad(lambda lp: policy_loss(lp, old, adv, mask, ours_cfg), logp)
    assert loss == pytest.approx(ref_loss, abs=TOL)
    assert torch.allclose(grad, ref_grad, atol=TOL, rtol=0)
    clipfrac = (m["policy/clipfrac_low"] + m["policy/clipfrac_high"]).item()
    assert clipfrac == pytest.approx(ref_m["actor/pg_clipfrac"], abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("global_norm", [False, True])
def test_aggregate_matches_agg_loss(seed, mode, global_norm):
    _, _, loss_BT, mask = random_batch(seed)
    kwargs, ours_kwargs = {}, {}
    if global_norm:  # this batch as one micro-batch of a larger mini-batch
        kwargs = {"batch_num_tokens": 3000, "global_batch_size": 50, "loss_scale_factor": 100}
        ours_kwargs = {"num_tokens": 3000, "num_rows": 50, "norm_len": 100}
    ref = core_algos.agg_loss(loss_BT, mask, mode, **kwargs)
    ours = aggregate(loss_BT, mask, mode, **ours_kwargs)
    assert ours.item() == pytest.approx(ref.item(), abs=TOL)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "low_var_kl"])
def test_kl_estimates_match_kl_penalty(estimator):
    logp, ref_logp, _, _ = random_batch(0, noise=2.0)
    ref = core_algos.kl_penalty(logp, ref_logp, estimator)
    assert torch.allclose(kl_estimate(logp, ref_logp, estimator), ref, atol=TOL, rtol=0)
