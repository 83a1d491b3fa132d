"""The tiny default policy: a random-init Llama of about 4.5M parameters, sized for a 2-core CPU.

With the 4,096-token vocabulary: embeddings tied with the LM head (4096 × 256 = 1.05M), four
layers of 0.86M each (attention 4 · 256² and a SwiGLU MLP 3 · 256 · 688), RMSNorms; 4.5M in all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the tiny Llama."""

    hidden_size: int = 256
    """Width of the residual stream (and of the tied embedding)."""
    intermediate_size: int = 688
    """Width of the SwiGLU MLP (≈ 8/3 · hidden_size, as in Llama)."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (head size hidden_size / num_heads); every head has its own keys/values."""
    max_positions: int = 2048
    """Longest context (prompt + response) the model is built for (RoPE positions)."""
    rope_theta: float = 10_000.0
    """RoPE base."""
    init_std: float = 0.02
    """Standard deviation of the normal init of every weight matrix."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}"
            )
        sizes = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "max_positions")
        for name in sizes:
            if getattr(self, name) < 1:
                raise ValueError(f"TinyModelConfig.{name} must be at least 1")


def tiny_llama_config(
    cfg: TinyModelConfig, *, vocab_size: int, eos_token_id: int, pad_token_id: int
) -> LlamaConfig:
    """The ``LlamaConfig`` of the tiny model for a tokenizer with these ids."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        initializer_range=cfg.init_std,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def tiny_model_for(cfg: TinyModelConfig, tokenizer: Any, seed: int) -> LlamaForCausalLM:
    """A freshly initialised tiny model sized for ``tokenizer`` (its length, EOS and pad ids)."""
    config = tiny_llama_config(
        cfg,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return build_tiny_model(config, seed)


def build_tiny_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    """A freshly initialised fp32 model; the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float()
