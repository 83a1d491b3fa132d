"""The one interface between rollouts and a model: ``Engine.generate(requests) -> results``.

A request carries the full context as token ids (prompt, earlier turns and observations: history is
never re-tokenized), its own token budget, when to stop, how to sample, and its own seed. A result
carries the ids the engine sampled (the tokens that complete a stop string or the stop token
included), the log-prob of each under the sampling distribution, optionally the full-vocabulary
entropy at each position, and why generation stopped.

Log-probs are ``log_softmax(logits / temperature)`` of the untruncated distribution: top-k and top-p
decide which token is drawn, not the recorded probability, and greedy requests use temperature 1.
The trainer recomputes ``old_logprobs`` with the same temperature, so the two agree to float error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

FINISH_STOP_STRING = "stop_string"
FINISH_STOP_TOKEN = "stop_token"
FINISH_LENGTH = "length"
FINISH_REASONS = (FINISH_STOP_STRING, FINISH_STOP_TOKEN, FINISH_LENGTH)
"""Why a request stopped: a stop string appeared, a stop token was drawn, or the budget ran out."""

TokenHook = Callable[[list[int]], int | None]
"""Called before each token with (a copy of) the ids this request generated so far; returns a token
id to force in place of sampling, or ``None`` to sample as usual (T²PO's thinking intervention)."""


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn.

    Attributes:
        temperature: logits are divided by it before the softmax; must be > 0. Ignored (taken as 1)
            when ``greedy`` is set.
        top_p: nucleus sampling: draw only from the smallest set of most likely tokens whose mass
            reaches ``top_p``; 1.0 keeps the whole vocabulary.
        top_k: draw only from the ``top_k`` most likely tokens; -1 keeps the whole vocabulary.
        greedy: take the most likely token (argmax of the logits) instead of sampling.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    greedy: bool = False

    def __post_init__(self) -> None:
        if not self.greedy and not self.temperature > 0:
            raise ValueError(
                f"temperature={self.temperature} must be > 0; for greedy decoding set greedy=True"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must lie in (0, 1]; use 1.0 to disable it")
        if self.top_k != -1 and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be >= 1, or -1 to disable it")

    @property
    def effective_temperature(self) -> float:
        """The temperature of the recorded log-probs: 1 for greedy requests."""
        return 1.0 if self.greedy else self.temperature

    @property
    def truncates(self) -> bool:
        """Whether top-k or top-p removes part of the vocabulary before the draw."""
        return self.top_k != -1 or self.top_p < 1.0


@dataclass(frozen=True)
class GenerationRequest:
    """One continuation to generate.

    Attributes:
        prompt_ids: the full context, prompt plus everything so far (observations included).
        max_new_tokens: this request's own budget; it never generates more tokens than this.
        stop_strings: stop once the text decoded from the tokens generated *in this request*
            contains one of these; the tokens that complete it are kept.
        stop_token_ids: stop once one of these ids is drawn (EOS and the like); it is kept.
        sampling: temperature, top-p, top-k, greedy.
        seed: seeds this request's own random stream, so its draws do not depend on which other
            requests share its batch.
        return_entropy: also return the full-vocabulary entropy of the sampling distribution at
            every generated position.
        token_hook: optional per-token callback that may force the next token (see ``TokenHook``).
    """

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    stop_strings: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    sampling: SamplingParams = SamplingParams()
    seed: int = 0
    return_entropy: bool = False
    token_hook: TokenHook | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_ids", tuple(int(t) for t in self.prompt_ids))
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if not self.prompt_ids:
            raise ValueError("prompt_ids is empty; a request needs at least one context token")
        if min(self.prompt_ids) < 0:
            raise ValueError(f"prompt_ids holds a negative id ({min(self.prompt_ids)})")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if any(not s for s in self.stop_strings):
            raise ValueError("stop_strings holds an empty string, which would match at once")


@dataclass(frozen=True)
class GenerationResult:
    """What one request produced.

    Attributes:
        token_ids: the sampled (or forced) ids, stop-string tokens and stop token included.
        logprobs: log-prob of each id under ``log_softmax(logits / temperature)``.
        forced_mask: True where the token hook forced the id instead of it being sampled.
        finish_reason: one of :data:`FINISH_REASONS`.
        stop_string: the stop string that ended the request, else ``None``.
        entropies: full-vocabulary entropy of the sampling distribution at each position, when
            the request asked for it, else ``None``.
        prefill_tokens: context tokens this request ran through the model before its first draw.
        cached_tokens: context tokens whose keys/values came from the prefix cache instead.
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    forced_mask: tuple[bool, ...]
    finish_reason: str
    stop_string: str | None
    entropies: tuple[float, ...] | None
    prefill_tokens: int
    cached_tokens: int


@runtime_checkable
class Engine(Protocol):
    """Generates continuations; results come back in the order of the requests."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...
