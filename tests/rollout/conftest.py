"""A tiny real Hugging Face model directory for engine and rollout tests.

The tokenizer is a byte-level BPE trained with ``tokenizers`` on generated tool-use sentences.
``<answer>``, ``</answer>`` and ``<|endoftext|>`` are special tokens (one id each); ``<search>``,
``</search>``, ``<result>`` and ``</result>`` are left to BPE and span several ids, so stop-string
matching is exercised both ways. The model is a random-init Llama (about 1.1M parameters) whose
weights are drawn wide enough (``initializer_range=0.2``) that next-token distributions are far
from uniform. Both are saved with ``save_pretrained`` and loaded back with the Auto classes.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

EOS = "<|endoftext|>"
SPECIAL_TOKENS = (EOS, "<answer>", "</answer>")
WORDS = (
    "the a of in river city capital france paris who wrote book when was born year population "
    "large small north south old new king queen war first film song island mountain lake"
)


def tool_use_sentences(count: int, seed: int = 0) -> list[str]:
    """Sentences shaped like a search agent's turns: a query, a result block, an answer."""
    rng = random.Random(seed)

    def phrase(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS.split()) for _ in range(rng.randint(low, high)))

    return [
        f"I need to look up {phrase(2, 5)}. <search>{phrase(2, 5)}</search> "
        f"<result>\n{phrase(4, 10)}\n</result> So the answer is <answer>{phrase(1, 4)}</answer>"
        for _ in range(count)
    ]


def build_tiny_lm(directory: Path) -> None:
    """Train the tokenizer, initialise the model, save both under ``directory``."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(tool_use_sentences(400), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=EOS)
    tokenizer.save_pretrained(directory)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.2,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding the tiny model and tokenizer (``from_pretrained`` loads it)."""
    directory = tmp_path_factory.mktemp("tiny_lm")
    build_tiny_lm(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir: Path) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """The tiny model (fp32, eval mode) and its tokenizer, loaded with the Auto classes."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32).eval()
    assert len(tokenizer.encode("</answer>", add_special_tokens=False)) == 1
    assert len(tokenizer.encode("</search>", add_special_tokens=False)) > 1
    return model, tokenizer
