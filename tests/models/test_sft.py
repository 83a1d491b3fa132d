"""SFT: the masked loss by hand, the schedule, the shared-prefix forward, and that it learns."""

from __future__ import annotations

import io
import random
import re

import pytest
import torch
from rich.console import Console

from at2po.models.sft import (
    SFTConfig,
    batch_loss,
    lr_at,
    shared_prefix_length,
    target_positions,
    train_sft,
    use_bf16,
)
from at2po.models.sft_data import SFTExample, collate
from at2po.models.tiny import TinyModelConfig, build_tiny_model, tiny_llama_config

VOCAB = 40
PAD = 0


def _model(seed: int = 0) -> torch.nn.Module:
    config = tiny_llama_config(
        TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2),
        vocab_size=VOCAB,
        eos_token_id=2,
        pad_token_id=PAD,
    )
    return build_tiny_model(config, seed)


def test_target_positions_by_hand():
    input_ids_BT = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    loss_mask_BT = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0]])
    b_N, t_N, targets_N = target_positions(input_ids_BT, loss_mask_BT)
    # row 0: tokens 7 and 8 are trained, predicted at positions 1 and 2 (token 0's mask is moot);
    # row 1: token 10, predicted at position 0
    assert b_N.tolist() == [0, 0, 1]
    assert t_N.tolist() == [1, 2, 0]
    assert targets_N.tolist() == [7, 8, 10]


def _reference_loss(model, batch, observation_weight: float) -> torch.Tensor:
    """The loss from the model's plain full forward: log-softmax of every logit, masked means."""
    logits_BTV = model(input_ids=batch.input_ids_BT, attention_mask=batch.attention_mask_BT).logits
    logp_BTV = torch.log_softmax(logits_BTV[:, :-1].double(), dim=-1)
    nll_BT = -logp_BTV.gather(-1, batch.input_ids_BT[:, 1:, None])[..., 0]
    policy_BT = batch.loss_mask_BT[:, 1:].double()
    observation_BT = batch.observation_mask_BT[:, 1:].double()
    policy = (nll_BT * policy_BT).sum() / policy_BT.sum()
    observation = (nll_BT * observation_BT).sum() / observation_BT.sum()
    return policy + observation_weight * observation


def test_lr_schedule_values():
    cfg = SFTConfig(steps=12, warmup_ratio=1 / 6, lr=1.0, min_lr_ratio=0.1)
    assert [lr_at(s, cfg) for s in (0, 1)] == [0.5, 1.0]
    assert lr_at(2, cfg) == pytest.approx(1.0)
    assert lr_at(7, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert lr_at(12, cfg) == pytest.approx(0.1)


def _rows(prefix_len: int, seed: int) -> list[SFTExample]:
    """Rows sharing ``prefix_len`` tokens; after two more prompt tokens each token is the
    policy's, an observation or (rarely) neither."""
    rng = random.Random(seed)
    prefix = [rng.randrange(3, VOCAB) for _ in range(prefix_len)]
    rows = []
    for length in (6, 14, 4):
        tail = [rng.randrange(3, VOCAB) for _ in range(length)]
        kinds = [0, 0] + [rng.choice("ppoon") for _ in range(length - 2)]
        kinds[2:4] = ["p", "o"]
        policy = [0] * prefix_len + [int(k == "p") for k in kinds]
        observed = [0] * prefix_len + [int(k == "o") for k in kinds]
        rows.append(SFTExample(tuple(prefix + tail), tuple(policy), tuple(observed)))
    return rows


def _targets(batch):
    return batch.loss_mask_BT | batch.observation_mask_BT


def test_shared_prefix_length_cases():
    batch = collate(_rows(9, seed=1), PAD)
    assert shared_prefix_length(batch, _targets(batch)) == 9
    one = collate([SFTExample((5, 6, 7, 8), (0, 0, 1, 1), (0, 0, 0, 0))], PAD)
    # the token before the first target is run with the rest of the row
    assert shared_prefix_length(one, _targets(one)) == 1
    observed = collate([SFTExample((5, 6, 7, 8), (0, 0, 0, 1), (0, 1, 0, 0))], PAD)
    assert shared_prefix_length(observed, _targets(observed)) == 0
    assert shared_prefix_length(observed, observed.loss_mask_BT) == 2
    differ = collate([SFTExample((5, 6), (0, 1), (0, 0)), SFTExample((4, 6), (0, 1), (0, 0))], 0)
    assert shared_prefix_length(differ, _targets(differ)) == 0


@pytest.mark.parametrize(("prefix_len", "observation_weight"), [(9, 0.5), (9, 0.0), (0, 2.0)])
def test_batch_loss_equals_plain_forward(prefix_len, observation_weight):
    model = _model().double()
    batch = collate(_rows(prefix_len, seed=2), PAD)
    assert shared_prefix_length(batch, _targets(batch)) == prefix_len
    loss = batch_loss(model, batch, observation_weight)
    shared = loss.total
    shared.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    plain = _reference_loss(model, batch, observation_weight)
    plain.backward()
    assert loss.policy_nll.item() == pytest.approx(_reference_loss(model, batch, 0.0).item())
    # float64 weights; the rotary tables are computed in float32 in both forwards, with different
    # batch shapes, hence agreement to ~1e-7 rather than ~1e-15
    assert shared.item() == pytest.approx(plain.item(), abs=1e-9)
    for g_shared, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g_shared, p.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bf16", [False, True])
def test_training_lowers_the_loss_on_a_small_batch(bf16):
    rows = _rows(5, seed=3) * 4
    model = _model(seed=1)
    batch = collate(rows[:3], PAD)
    with torch.no_grad():
        before = batch_loss(model, batch, 0.0).total.item()
    result = train_sft(
        model,
        rows,
        SFTConfig(steps=32, batch_size=3, lr=1e-2, observation_weight=0.0, bf16=bf16),
        pad_id=PAD,
        show_progress=False,
    )
    with torch.no_grad():
        after = batch_loss(model, batch, 0.0).total.item()
    assert after < 0.5 * before
    assert len(result.policy_nll) == 32 and not model.training
    # 32 steps of 3 rows are exactly 8 epochs of the 12 rows
    assert result.tokens == 8 * sum(len(r) for r in rows)
    assert result.policy_tokens == 8 * sum(sum(r.loss_mask[1:]) for r in rows)


def test_bf16_autocast_choice_and_loss():
    cpu = torch.device("cpu")
    assert use_bf16(SFTConfig(bf16=True), cpu) and not use_bf16(SFTConfig(bf16=False), cpu)
    assert use_bf16(SFTConfig(), cpu) == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    model = _model(seed=4)
    batch = collate(_rows(9, seed=5), PAD)
    with torch.no_grad():
        full = batch_loss(model, batch, 0.5).total.item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = batch_loss(model, batch, 0.5)
    assert half.total.dtype == torch.float32  # the loss is reduced in fp32
    assert half.total.item() == pytest.approx(full, rel=2e-2)  # bf16 keeps ~3 significant digits


def test_nothing_to_train_is_an_error():
    with pytest.raises(ValueError, match="no row has a token with loss mask 1"):
        cfg = SFTConfig(steps=2)
        train_sft(_model(), [SFTExample((1, 2), (0, 0), (0, 1))], cfg, pad_id=0)


def test_redirected_output_gets_a_line_every_5_percent_of_the_steps():
    """On a file (no terminal), progress is plain lines with the elapsed time, not a bar."""
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=False, width=200)
    rows = _rows(5, seed=3) * 4
    train_sft(_model(seed=1), rows, SFTConfig(steps=40, batch_size=3), pad_id=PAD, console=console)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 20
    assert re.fullmatch(
        r"\[\s+\d+\.\d s\] SFT step 2/40: policy NLL \d+\.\d{3}, [\d,]+ tok/s", lines[0]
    )
    assert lines[-1].split("]")[1].startswith(" SFT step 40/40")
