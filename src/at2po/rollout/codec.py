"""Text ↔ token ids for rollouts: the prompt once, observations once, actions decoded for the env.

History is never re-tokenised: a trajectory's ids are the prompt ids, then each turn's sampled ids
and each observation's ids exactly as encoded here, concatenated (reference spec §1.6,
AT²PO App. C).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Codec:
    """Wraps a Hugging Face tokenizer with the few calls a rollout needs.

    Attributes:
        tokenizer: any ``PreTrainedTokenizer(Fast)`` with a chat template.
        stop_token_ids: ids that end a trajectory when sampled (EOS and end-of-turn tokens).
    """

    tokenizer: Any
    stop_token_ids: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> Codec:
        """Stop tokens: the tokenizer's EOS, plus ``<|im_end|>``, ``<|endoftext|>`` if present."""
        ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        vocab = tokenizer.get_vocab()
        ids.update(vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab)
        if not ids:
            raise ValueError(
                "the tokenizer has no EOS token; set tokenizer.eos_token before building a Codec"
            )
        return cls(tokenizer=tokenizer, stop_token_ids=tuple(sorted(ids)))

    def encode_prompt(self, messages: Sequence[dict]) -> list[int]:
        """Chat-template the prompt messages with the assistant header appended."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(
                "the tokenizer has no chat template; set tokenizer.chat_template (see the "
                "tokenizer's documentation) or use a model directory that ships one"
            )
        ids = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(t) for t in ids]

    def encode_observation(self, text: str) -> list[int]:
        """Observation text as inserted after a tool call (no special tokens added)."""
        return [int(t) for t in self.tokenizer.encode(text, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of sampled ids, special tokens kept (the env parses tags from it)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)
