"""Training log-probs: the shift and temperature by an independent computation, micro-batch packing,
and agreement with the log-probs the rollout recorded."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from train_helpers import fast_overrides
from transformers import AutoModelForCausalLM, AutoTokenizer

from at2po.core.rows import build_rows
from at2po.rollout.codec import Codec
from at2po.rollout.rollouts import rollout
from at2po.train.config import load_config
from at2po.train.credit import assign_credit
from at2po.train.logprobs import micro_batches, recompute_logprobs, token_logprobs
from at2po.train.policy import build_engine
from at2po.train.task import build_task


@pytest.fixture(scope="module")
def policy(tiny_policy_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_policy_dir)


def _reference_logprobs(model, ids_BT, mask_BT, temperature):
    """Full-vocabulary log_softmax of the full logits, row by row, without padding."""
    out = torch.zeros(ids_BT.shape)
    for b in range(ids_BT.shape[0]):
        n = int(mask_BT[b].sum())
        logits = model(input_ids=ids_BT[b : b + 1, :n]).logits[0].double()
        logp = torch.log_softmax(logits / temperature, dim=-1)
        for t in range(1, n):
            out[b, t] = logp[t - 1, ids_BT[b, t]]
    return out


def _rows(shared: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of random ids, the first ``shared`` the same in every row, two right-padded."""
    generator = torch.Generator().manual_seed(seed)
    ids_BT = torch.randint(3, 500, (3, shared + 20), generator=generator)
    ids_BT[:, :shared] = ids_BT[0, :shared]
    mask_BT = torch.ones_like(ids_BT)
    mask_BT[1, shared + 14 :] = 0
    mask_BT[2, shared + 17 :] = 0
    return ids_BT, mask_BT


@pytest.mark.parametrize(("temperature", "shared"), [(1.0, 0), (0.7, 0), (1.0, 24), (0.7, 24)])
def test_token_logprobs_match_an_independent_computation(policy, temperature, shared):
    model, _ = policy
    ids_BT, mask_BT = _rows(shared)
    start = shared + 6
    with torch.no_grad():
        logp_BT, ent_BT = token_logprobs(model, ids_BT, mask_BT, start, temperature, "detached")
        expected_BT = _reference_logprobs(model, ids_BT, mask_BT, temperature)
    on_BT = mask_BT.bool()
    on_BT[:, :start] = False
    assert torch.allclose(logp_BT[on_BT], expected_BT[on_BT].float(), atol=1e-5)
    assert (logp_BT[:, :start] == 0).all()
    # entropy by its definition −Σ p log p, at one position
    t = start + 3
    with torch.no_grad():
        logits = model(input_ids=ids_BT[:1, :t]).logits[0, t - 1].double() / temperature
    p = torch.softmax(logits, -1)
    assert ent_BT[0, t].item() == pytest.approx(float(-(p * p.log()).sum()), abs=1e-4)


def test_shared_prefix_forward_gives_the_plain_gradients(policy, monkeypatch):
    model, _ = policy
    ids_BT, mask_BT = _rows(shared=24, seed=1)
    weights_BT = torch.randn(ids_BT.shape, generator=torch.Generator().manual_seed(2)) * mask_BT

    def gradients() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        logp_BT, _ = token_logprobs(model, ids_BT, mask_BT, 26, 1.0)
        (logp_BT * weights_BT).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    shared = gradients()
    monkeypatch.setattr("at2po.train.logprobs.MIN_SHARED_PREFIX", 10**9)  # plain forward
    plain = gradients()
    model.zero_grad(set_to_none=True)
    for a, b in zip(shared, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(float(g.abs().max()) > 0 for g in plain)


def test_gradient_flows_into_logprobs_only_with_grad_mode(policy):
    model, _ = policy
    ids_BT = torch.randint(3, 500, (2, 12))
    mask_BT = torch.ones_like(ids_BT)
    logp_BT, ent_BT = token_logprobs(model, ids_BT, mask_BT, 4, 1.0, "detached")
    assert logp_BT.requires_grad and not ent_BT.requires_grad
    _, ent_grad_BT = token_logprobs(model, ids_BT, mask_BT, 4, 1.0, "grad")
    assert ent_grad_BT.requires_grad


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 50), min_size=1, max_size=40),
    budget=st.integers(1, 300),
)
def test_micro_batches_cover_every_row_once_within_the_budget(lengths, budget):
    groups = micro_batches(lengths, budget)
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(len(lengths)))
    for group in groups:
        widest = max(lengths[i] for i in group)
        assert len(group) == 1 or len(group) * widest <= budget
    # longest rows first: widths never grow from one micro-batch to the next
    widths = [max(lengths[i] for i in g) for g in groups]
    assert widths == sorted(widths, reverse=True)


@pytest.mark.parametrize("mode", ["tree", "branching"])
def test_recomputed_logprobs_equal_the_rollout_logprobs(policy, tiny_policy_dir, tmp_path, mode):
    model, tokenizer = policy
    cfg = load_config(
        "at2po",
        [
            *fast_overrides(tiny_policy_dir, tmp_path),
            f"rollout.mode={mode}",
            "rollout.temperature=0.8",
            "rollout.max_turn_tokens=16",
            "rollout.max_response_tokens=80",
        ],
    )
    task = build_task(cfg.task)
    engine = build_engine(model, tokenizer, cfg.rollout)
    rollout_cfg = cfg.rollout.to_rollout_config()
    codec = Codec.from_tokenizer(tokenizer)
    out = rollout(engine, codec, task.env, task.splits["train"][:2], rollout_cfg)
    credit = assign_credit(out.groups, cfg.credit)
    rows = build_rows(credit.trees, credit.leaf_rows, credit.advantages, tokenizer.pad_token_id)
    logp_BT, _ = recompute_logprobs(
        model, rows.input_ids_BT, rows.attention_mask_BT, rows.prompt_len_B, 0.8, token_budget=900
    )
    on_BT = rows.loss_mask_BT.bool()
    assert int(on_BT.sum()) > 50
    assert (logp_BT[on_BT] - rows.old_logp_BT[on_BT]).abs().max() <= 1e-4
