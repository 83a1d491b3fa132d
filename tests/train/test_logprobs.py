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


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_match_an_independent_computation(policy, temperature):
    model, _ = policy
    generator = torch.Generator().manual_seed(0)
    ids_BT = torch.randint(3, 500, (3, 20), generator=generator)
    mask_BT = torch.ones_like(ids_BT)
    mask_BT[1, 14:] = 0  # a right-padded row
    mask_BT[2, 17:] = 0
    start = 6
    with torch.no_grad():
        logp_BT, ent_BT = token_logprobs(model, ids_BT, mask_BT, start, temperature, "detached")
        expected_BT = _reference_logprobs(model, ids_BT, mask_BT, temperature)
    on_BT = mask_BT.bool()
    on_BT[:, :start] = False
    assert torch.allclose(logp_BT[on_BT], expected_BT[on_BT].float(), atol=1e-5)
    assert (logp_BT[:, :start] == 0).all()
    # entropy by its definition −Σ p log p, at one position
    with torch.no_grad():
        logits = model(input_ids=ids_BT[:1, :10]).logits[0, 8].double() / temperature
    p = torch.softmax(logits, -1)
    assert ent_BT[0, 9].item() == pytest.approx(float(-(p * p.log()).sum()), abs=1e-4)


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
