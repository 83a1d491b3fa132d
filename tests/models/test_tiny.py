"""The tiny Llama: its parameter count worked out by hand, seeded init, config checks."""

from __future__ import annotations

import pytest
import torch

from at2po.models.tiny import TinyModelConfig, build_tiny_model, tiny_llama_config


def _hand_count(vocab: int, d: int, ffn: int, layers: int) -> int:
    """Tied embedding + per layer (q, k, v, o: 4·d²; gate, up, down: 3·d·ffn; 2 RMSNorms) +
    the final RMSNorm."""
    return vocab * d + layers * (4 * d * d + 3 * d * ffn + 2 * d) + d


def test_default_size_matches_hand_count():
    config = tiny_llama_config(TinyModelConfig(), vocab_size=4096, eos_token_id=2, pad_token_id=0)
    model = build_tiny_model(config, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == _hand_count(4096, 256, 688, 4) == 4_212_992
    assert 3_000_000 <= n_params <= 6_000_000
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.max_position_embeddings == 2048
    assert model.config.eos_token_id == 2 and model.config.pad_token_id == 0


def test_same_seed_same_weights_and_global_rng_untouched():
    config = tiny_llama_config(
        TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2),
        vocab_size=50,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = build_tiny_model(config, 7), build_tiny_model(config, 7), build_tiny_model(config, 8)
    assert torch.equal(torch.rand(1), expected_draw)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="divisible by num_heads=3"):
        TinyModelConfig(hidden_size=256, num_heads=3)
    with pytest.raises(ValueError, match="num_layers must be at least 1"):
        TinyModelConfig(num_layers=0)
