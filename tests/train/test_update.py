"""The policy update: micro-batching leaves the update unchanged, mini-batches and epochs count
optimizer steps, a non-finite gradient skips the step; the learning-rate schedule by hand."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from at2po.core.losses import policy_loss_config
from at2po.core.rows import build_rows
from at2po.core.tree import TurnTree
from at2po.train.config import OptimConfig
from at2po.train.logprobs import recompute_logprobs
from at2po.train.optim import build_optimizer, lr_factor
from at2po.train.update import UpdateBatch, policy_update, split_evenly


@pytest.fixture(scope="module")
def model(tiny_policy_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_policy_dir, dtype=torch.float32).eval()


def random_batch(model, seed: int = 0) -> UpdateBatch:
    """Three trees of random turns; π_old is the model's own log-probs plus noise, so ratios
    differ from 1 and both clip sides can bind."""
    rng = random.Random(seed)
    trees, leaf_rows = [], []
    for _ in range(3):
        tree = TurnTree([rng.randrange(3, 500) for _ in range(rng.randint(5, 9))])
        frontier = [0]
        for _ in range(4):
            parent = rng.choice(frontier)
            n = rng.randint(1, 6)
            node = tree.add_child(
                parent,
                obs_ids=[rng.randrange(3, 500) for _ in range(rng.randint(0, 3))] if parent else [],
                act_ids=[rng.randrange(3, 500) for _ in range(n)],
                act_logprobs=[-1.0] * n,
            )
            frontier.append(node.id)
        trees.append(tree)
        leaf_rows.append(tree.leaves())
    n_rows = sum(map(len, leaf_rows))
    generator = torch.Generator().manual_seed(seed)
    adv_B = torch.randn(n_rows, generator=generator)
    rows = build_rows(trees, leaf_rows, adv_B, pad_id=0)
    logp_BT, _ = recompute_logprobs(
        model, rows.input_ids_BT, rows.attention_mask_BT, rows.prompt_len_B, 1.0, 10_000
    )
    noise_BT = 0.05 * torch.randn(logp_BT.shape, generator=generator)
    return UpdateBatch(rows, (logp_BT + noise_BT) * rows.loss_mask_BT, None)


def run_update(model, batch, budget: int, loss: str = "turn", **optim) -> tuple:
    trained = copy.deepcopy(model)
    cfg = OptimConfig(micro_batch_tokens=budget, grad_clip=1e9, **optim)
    optimizer = torch.optim.SGD(trained.parameters(), lr=1.0)
    metrics = policy_update(
        trained, optimizer, batch, policy_loss_config(loss), cfg, 1.0, random.Random(0)
    )
    return trained, metrics


@pytest.mark.parametrize("loss", ["turn", "token", "sequence"])
def test_micro_batching_does_not_change_the_update(model, loss):
    batch = random_batch(model)
    whole, whole_metrics = run_update(model, batch, budget=100_000, loss=loss, mini_batches=2)
    split, split_metrics = run_update(model, batch, budget=20, loss=loss, mini_batches=2)
    moved = 0.0
    for p0, p1, p2 in zip(model.parameters(), whole.parameters(), split.parameters(), strict=True):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)
        moved = max(moved, float((p1 - p0).detach().abs().max()))
    assert moved > 1e-4  # the update did something
    assert whole_metrics["loss/policy"] == pytest.approx(split_metrics["loss/policy"], rel=1e-5)


def test_one_optimizer_step_per_mini_batch_and_epoch(model):
    batch = random_batch(model)
    trained = copy.deepcopy(model)
    cfg = OptimConfig(mini_batches=3, ppo_epochs=2, micro_batch_tokens=64)
    optimizer, _ = build_optimizer(trained, cfg, total_steps=1)
    policy_update(trained, optimizer, batch, policy_loss_config("turn"), cfg, 1.0, random.Random(1))
    steps = {int(state["step"]) for state in optimizer.state.values()}
    assert steps == {6}


def test_a_non_finite_gradient_skips_the_update(model):
    batch = random_batch(model)
    adv_BT = batch.rows.adv_BT.clone()
    adv_BT[0, batch.rows.loss_mask_BT[0].bool()] = math.nan
    poisoned = UpdateBatch(
        type(batch.rows)(**{**batch.rows.__dict__, "adv_BT": adv_BT}), batch.old_logp_BT, None
    )
    trained, metrics = run_update(model, poisoned, budget=100_000, loss="token")
    assert metrics["policy/skipped_updates"] == 1.0
    for p0, p1 in zip(model.parameters(), trained.parameters(), strict=True):
        assert torch.equal(p0, p1)


def test_split_evenly():
    assert split_evenly(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_evenly([4, 5], 4) == [[4], [5]]


@pytest.mark.parametrize(
    ("schedule", "step", "factor"),
    [
        ("cosine", 0, 0.5),
        ("cosine", 1, 1.0),
        ("cosine", 2, 1.0),
        ("cosine", 4, 0.1 + 0.45 * (1 + math.cos(math.pi / 4))),
        ("cosine", 6, 0.55),
        ("cosine", 10, 0.1),
        ("linear", 4, 0.1 + 0.9 * 0.75),
        ("linear", 6, 0.55),
        ("constant", 9, 1.0),
    ],
)
def test_learning_rate_schedule_by_hand(schedule, step, factor):
    cfg = OptimConfig(warmup_steps=2, schedule=schedule, min_lr_ratio=0.1)
    assert lr_factor(step, cfg, total_steps=10) == pytest.approx(factor)
