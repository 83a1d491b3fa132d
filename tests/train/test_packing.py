"""Tree packing: the layout and the tree attention's blocks worked out by hand and checked against
sets of prefixes, and packed log-probs, entropies, losses and every parameter gradient equal to the
per-row forward's for the tiny model and a SmolLM2-shaped model, for every loss mode and
aggregation."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import get_args

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from at2po.core.losses import POLICY_LOSSES, AggMode, policy_loss
from at2po.core.rows import Rows
from at2po.train.config import OptimConfig
from at2po.train.logprobs import token_logprobs
from at2po.train.packing import (
    PackedRows,
    check_tree_attention_support,
    pack_rows,
    packed_logprobs,
    packed_micro_batches,
)
from at2po.train.update import UpdateBatch, policy_update


def _padded(rows: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
    width = max(len(r) for r in rows)
    ids_BT = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids_BT[b, : len(row)] = torch.tensor(row)
    return ids_BT, [len(r) for r in rows]


def _random_tree_rows(seed: int, vocab: int = 40, n_rows: int = 6) -> list[list[int]]:
    """Rows of a random tree: a prompt, then each row branches off a random earlier row at a
    random point (or repeats it) and appends its own tokens."""
    rng = random.Random(seed)
    rows = [[rng.randrange(vocab) for _ in range(rng.randint(2, 8))]]
    for _ in range(n_rows - 1):
        base = rng.choice(rows)
        cut = rng.randint(1, len(base))
        rows.append(base[:cut] + [rng.randrange(vocab) for _ in range(rng.randint(0, 7))])
    return rows


def _attends(packed: PackedRows, chunk: int) -> torch.Tensor:
    """``mask_NN[n, m]``: query n attends key m in the tree attention's calls."""
    mask_NN = torch.zeros((packed.num_tokens, packed.num_tokens), dtype=torch.bool)
    plan = packed.attention_plan(torch.device("cpu"), torch.float32, chunk)
    assert sum(plan.query_sizes) == packed.num_tokens, "every query once"
    queries = torch.arange(packed.num_tokens).split(plan.query_sizes)
    keys = plan.key_index_K.split(plan.key_sizes)
    for query_Q, key_K, mask_QK in zip(queries, keys, plan.masks, strict=True):
        if mask_QK is None:
            assert torch.equal(query_Q, key_K)
            allowed_QK = torch.ones((len(query_Q), len(key_K)), dtype=torch.bool).tril()
        else:
            allowed_QK = mask_QK == 0
        for i, query in enumerate(query_Q.tolist()):
            mask_NN[query, key_K[allowed_QK[i]]] = True
    return mask_NN


def test_the_docstring_example_by_hand():
    ids_BT, lengths = _padded([[7, 7, 7, 1, 2], [7, 7, 7, 3, 4]])
    packed = pack_rows(ids_BT, lengths)
    assert packed.input_ids_N.tolist() == [7, 7, 7, 1, 2, 3, 4]
    assert packed.position_ids_N.tolist() == [0, 1, 2, 3, 4, 3, 4]
    assert packed.parent_N.tolist() == [-1, 0, 1, 2, 3, 2, 5]
    assert packed.index_BT.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 5, 6]]
    expected = [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0, 1, 0],
        [1, 1, 1, 0, 0, 1, 1],
    ]
    for chunk in (1, 2, 256):
        assert _attends(packed, chunk).long().tolist() == expected


def test_a_row_that_is_a_prefix_or_a_copy_of_another_adds_no_token():
    ids_BT, lengths = _padded([[5, 6, 7, 8], [5, 6], [5, 6, 7, 8], [9]])
    packed = pack_rows(ids_BT, lengths)
    assert packed.num_tokens == 5
    assert packed.index_BT[1, :2].tolist() == packed.index_BT[0, :2].tolist()
    assert packed.index_BT[2].tolist() == packed.index_BT[0].tolist()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 9), st.integers(1, 6))
def test_layout_is_the_trie_of_the_rows(seed, n_rows, chunk):
    rows = _random_tree_rows(seed, vocab=3, n_rows=n_rows)
    ids_BT, lengths = _padded(rows)
    packed = pack_rows(ids_BT, lengths)
    prefixes = {tuple(r[: t + 1]) for r in rows for t in range(len(r))}
    assert packed.num_tokens == len(prefixes)
    prefix_of_N: dict[int, tuple[int, ...]] = {}
    for b, row in enumerate(rows):
        for t in range(len(row)):
            n = int(packed.index_BT[b, t])
            assert prefix_of_N.setdefault(n, tuple(row[: t + 1])) == tuple(row[: t + 1])
            assert int(packed.input_ids_N[n]) == row[t]
            assert int(packed.position_ids_N[n]) == t
    mask = _attends(packed, chunk)
    for n, prefix_n in prefix_of_N.items():
        for m, prefix_m in prefix_of_N.items():
            assert bool(mask[n, m]) == (prefix_n[: len(prefix_m)] == prefix_m)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(4, 40))
def test_micro_batches_keep_to_the_budget_and_cover_every_row(seed, budget):
    rows = _random_tree_rows(seed, n_rows=12)
    ids_BT, lengths = _padded(rows)
    groups = packed_micro_batches(ids_BT, lengths, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(rows)))
    for group in groups:
        distinct = pack_rows(ids_BT[group], [lengths[i] for i in group]).num_tokens
        assert distinct <= budget or len(group) == 1


def _llama(attn: str, **shape) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        initializer_range=0.1,  # peaked, varied distributions: AEPO's entropy z-score stays sane
        attn_implementation=attn,
        **shape,
    )
    return LlamaForCausalLM(config).eval()


TINY_SHAPE = dict(hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4)
SMOLLM2_SHAPE = dict(  # SmolLM2-135M's head layout (9 query heads sharing 3 key/value heads)
    hidden_size=72,
    intermediate_size=192,
    num_hidden_layers=3,
    num_attention_heads=9,
    num_key_value_heads=3,
)


def _tree_batch(seed: int, vocab: int = 64):
    rows = _random_tree_rows(seed, vocab=vocab, n_rows=7)
    rows = [[1, 2, 3, *r] for r in rows]
    ids_BT, lengths = _padded(rows)
    mask_BT = (torch.arange(ids_BT.shape[1])[None] < torch.tensor(lengths)[:, None]).long()
    prompt_B = torch.tensor([min(3 + seed % 3, n - 1) for n in lengths])
    return ids_BT, mask_BT, lengths, prompt_B


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("shape", [TINY_SHAPE, SMOLLM2_SHAPE], ids=["tiny", "smollm2"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_entropies_equal_the_per_row_forward(attn, shape, temperature):
    model = _llama(attn, **shape)
    for seed in range(4):
        ids_BT, _, lengths, prompt_B = _tree_batch(seed)
        with torch.no_grad():
            got_BT, got_ent_BT = packed_logprobs(
                model, pack_rows(ids_BT, lengths), prompt_B, temperature, "detached"
            )
            for b in range(ids_BT.shape[0]):
                n, p = lengths[b], int(prompt_B[b])
                row = ids_BT[b : b + 1, :n]
                want, want_ent = token_logprobs(
                    model, row, torch.ones_like(row), p, temperature, "detached"
                )
                assert torch.allclose(got_BT[b, :n], want[0], atol=1e-5)
                assert torch.allclose(got_ent_BT[b, :n], want_ent[0], atol=1e-5)
                assert not got_BT[b, n:].any() and not got_BT[b, :p].any()


def _loss_case(shape: dict, cfg_name: str, agg: str):
    model = _llama("sdpa", **shape)
    ids_BT, mask_BT, lengths, prompt_B = _tree_batch(3)
    positions_BT = torch.arange(ids_BT.shape[1])[None]
    loss_mask_BT = ((positions_BT >= prompt_B[:, None]) & mask_BT.bool()).float()
    generator = torch.Generator().manual_seed(1)
    old_BT = (-torch.rand(ids_BT.shape, generator=generator) * 3) * loss_mask_BT
    adv_BT = torch.randn(ids_BT.shape, generator=generator) * loss_mask_BT
    turn_BT = torch.where(loss_mask_BT > 0, (positions_BT - prompt_B[:, None]) // 3, -1)
    cfg = replace(POLICY_LOSSES[cfg_name], agg=agg, norm_len=16)
    return model, ids_BT, mask_BT, lengths, prompt_B, (old_BT, adv_BT, loss_mask_BT, turn_BT), cfg


def _loss_and_grads(model, logp_BT, entropy_BT, tensors, cfg):
    old_BT, adv_BT, loss_mask_BT, turn_BT = tensors
    model.zero_grad(set_to_none=True)
    loss, _ = policy_loss(
        logp_BT, old_BT, adv_BT, loss_mask_BT, cfg, turn_BT=turn_BT, entropy_BT=entropy_BT
    )
    loss.backward()
    return float(loss.detach()), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("shape", [TINY_SHAPE, SMOLLM2_SHAPE], ids=["tiny", "smollm2"])
@pytest.mark.parametrize("cfg_name", sorted(POLICY_LOSSES))
@pytest.mark.parametrize("agg", get_args(AggMode))
def test_loss_and_every_gradient_equal_the_per_row_forward(shape, cfg_name, agg):
    model, ids_BT, mask_BT, lengths, prompt_B, tensors, cfg = _loss_case(shape, cfg_name, agg)
    cfg = replace(cfg, entropy_coef=0.01)
    packed = packed_logprobs(model, pack_rows(ids_BT, lengths), prompt_B, 1.0, "grad")
    got_loss, got_grads = _loss_and_grads(model, *packed, tensors, cfg)
    per_row = [
        token_logprobs(model, ids_BT[b : b + 1], mask_BT[b : b + 1], int(prompt_B[b]), 1.0, "grad")
        for b in range(ids_BT.shape[0])
    ]
    logp_BT = torch.cat([lp for lp, _ in per_row])
    entropy_BT = torch.cat([ent for _, ent in per_row])
    want_loss, want_grads = _loss_and_grads(model, logp_BT, entropy_BT, tensors, cfg)
    assert got_loss == pytest.approx(want_loss, rel=1e-5, abs=1e-5)
    for name, grad in want_grads.items():
        scale = max(1.0, float(grad.abs().max()))  # float32 sums: error relative to the size
        assert float((got_grads[name] - grad).abs().max()) <= 1e-5 * scale, name


def test_policy_update_with_and_without_packing_gives_the_same_weights():
    model, ids_BT, mask_BT, lengths, prompt_B, tensors, cfg = _loss_case(
        SMOLLM2_SHAPE, "turn", "seq-mean-token-mean"
    )
    old_BT, adv_BT, loss_mask_BT, turn_BT = tensors
    rows = Rows(
        ids_BT,
        mask_BT,
        loss_mask_BT,
        old_BT,
        adv_BT,
        turn_BT,
        torch.zeros(len(lengths), dtype=torch.long),
        prompt_B,
        [[] for _ in lengths],
    )
    weights = {}
    for packing in (True, False):
        copy = _llama("sdpa", **SMOLLM2_SHAPE)
        copy.load_state_dict(model.state_dict())
        optimizer = torch.optim.SGD(copy.parameters(), lr=0.1)  # Adam would blow up float noise
        optim_cfg = OptimConfig(packing=packing, packed_micro_batch_tokens=12, mini_batches=2)
        metrics = policy_update(
            copy, optimizer, UpdateBatch(rows, old_BT, None), cfg, optim_cfg, 1.0, random.Random(0)
        )
        assert metrics["policy/skipped_updates"] == 0
        weights[packing] = copy.state_dict()
    for name, value in weights[False].items():
        assert torch.allclose(weights[True][name], value, atol=1e-6), name
    assert not torch.equal(weights[True]["lm_head.weight"], model.state_dict()["lm_head.weight"])


class _NoAttentionInterface(LlamaForCausalLM):
    _supports_attention_backend = False


def test_a_model_that_cannot_run_the_tree_attention_is_refused():
    model = _NoAttentionInterface(_llama("sdpa", **TINY_SHAPE).config)
    with pytest.raises(ValueError, match=r"AttentionInterface.*optim\.packing=false"):
        check_tree_attention_support(model)
    sliding = _llama("sdpa", **TINY_SHAPE)
    sliding.config.sliding_window = 16
    with pytest.raises(ValueError, match="sliding-window"):
        check_tree_attention_support(sliding)
    sliding.config.layer_types = ["sliding_attention", "full_attention"]
    with pytest.raises(ValueError, match="sliding-window"):
        check_tree_attention_support(sliding)
    sliding.config.layer_types = ["full_attention", "full_attention"]  # a window set but unused
    check_tree_attention_support(sliding)
