"""The one interface between rollouts and a model: ``Engine.generate(requests) -> results``.

A request carries the full context as token ids (prompt, earlier turns and observations: history is
never re-tokenized), its own token budget, when to stop, how to sample, and its own seed. A result
carries the ids the engine sampled (the tokens that complete a stop string or the stop token
included), the log-prob of each under the sampling distribution, optionally the full-vocabulary
entropy at each position, and why generation stopped.

Log-probs are ``log_softmax(logits / temperature)`` of the untruncated distribution: top-k and top-p
decide which token is drawn, not the recorded probability, and greedy requests use temperature 1.
The trainer recomputes ``old_logprobs`` with the same temperature, so the two agree to float error.

T²PO (:mod:`at2po.core.uncertainty`): a request with an :class:`UncertaintySpec` also gets the
uncertainty M_t of every sampled token, computed from the unmodified next-token distribution
(``log_softmax(logits / T)``) before any forcing; one with an :class:`InterventionSpec` also gets
the thinking intervention (TTI), whose state (thinking-token count, window of M deltas, queue of
forced ids) belongs to that request alone, whatever batch it shares.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from at2po.core.uncertainty import ALPHA, FRESH_BOUNDS, TOP_J

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


INTERVENTION_STAGNATION = "stagnation"
INTERVENTION_CAP = "cap"
INTERVENTIONS = (INTERVENTION_STAGNATION, INTERVENTION_CAP)
"""Why TTI intervened in a turn: the uncertainty stagnated, or the thinking cap was reached."""


@dataclass(frozen=True)
class UncertaintySpec:
    """Ask for T²PO's uncertainty M_t of every sampled token (see :mod:`at2po.core.uncertainty`).

    Attributes:
        alpha: α of ``M = α·H̃ + (1 − α)·(1 − C̃)``.
        top_j: j of the top-j confidence (≥ 2).
        bounds: the trajectory's running (H_min, H_max, C_min, C_max) before this request (its
            earlier turns); the result returns them updated, for the next turn.
    """

    alpha: float = ALPHA
    top_j: int = TOP_J
    bounds: tuple[float, float, float, float] = FRESH_BOUNDS

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"uncertainty alpha={self.alpha} must lie in [0, 1]")
        if self.top_j < 2:
            raise ValueError(
                f"uncertainty top_j={self.top_j} must be >= 2 (with j = 1 the confidence "
                "becomes −log p_max and its meaning flips)"
            )
        if len(self.bounds) != 4:
            raise ValueError(
                f"uncertainty bounds {self.bounds} must be (H_min, H_max, C_min, C_max)"
            )


@dataclass(frozen=True)
class InterventionSpec:
    """T²PO's token-level thinking intervention for one request (one turn).

    After ``min_think`` thinking tokens, at the first token t where the mean of the last
    ``window`` + 1 values of ``|M_t − M_{t−1}|`` is below ``eps`` (or once ``max_think`` thinking
    tokens were generated), token t is kept and ``forced_ids`` are emitted next, one per step,
    as forced tokens. At most once per request; never once ``forced_ids[0]`` (``</think>``) was
    generated, sampled or forced.

    Attributes:
        forced_ids: ``</think>`` and the task's structural tokens after it (search: a newline;
            game: newline and ``<action>``).
        min_think: L_min, thinking tokens before the stagnation test starts.
        window: N; the mean runs over N + 1 deltas.
        eps: ε of the stagnation test.
        max_think: L_max, the hard thinking cap.
        think_start_id: thinking tokens are those after this id (``<think>``); ``None``: every
            token of the request until ``</think>``.
    """

    forced_ids: tuple[int, ...]
    min_think: int = 16
    window: int = 4
    eps: float = 0.02
    max_think: int = 64
    think_start_id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "forced_ids", tuple(int(t) for t in self.forced_ids))
        if not self.forced_ids or min(self.forced_ids) < 0:
            raise ValueError(
                f"intervention forced_ids {self.forced_ids} must start with the </think> id"
            )
        if self.min_think < 1 or self.window < 1 or self.max_think < 1:
            raise ValueError(
                f"intervention min_think={self.min_think}, window={self.window} and "
                f"max_think={self.max_think} must all be >= 1"
            )
        if self.eps < 0:
            raise ValueError(f"intervention eps={self.eps} must be >= 0 (0 turns the test off)")

    @property
    def think_end_id(self) -> int:
        """The id that closes thinking (``</think>``)."""
        return self.forced_ids[0]


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
        uncertainty: return T²PO's M_t (and H_t, C_t) of every sampled token.
        intervention: apply T²PO's thinking intervention (needs ``uncertainty``).
    """

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    stop_strings: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    sampling: SamplingParams = SamplingParams()
    seed: int = 0
    return_entropy: bool = False
    token_hook: TokenHook | None = None
    uncertainty: UncertaintySpec | None = None
    intervention: InterventionSpec | None = None

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
        if self.token_hook is not None and self.uncertainty is not None:
            raise ValueError(
                "token_hook and uncertainty cannot be combined (the uncertainty state must know "
                "which tokens were sampled); use the InterventionSpec to force tokens"
            )
        if self.intervention is not None and self.uncertainty is None:
            raise ValueError(
                "intervention needs uncertainty: pass an UncertaintySpec with the InterventionSpec"
            )


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
        uncertainty: M_t of each token (NaN on forced tokens), when the request asked for it.
        confidences: top-j confidence C_t of each position, when asked for uncertainty.
        bounds: the trajectory's (H_min, H_max, C_min, C_max) after this request.
        intervention: one of :data:`INTERVENTIONS` when TTI intervened, else ``None``.
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    forced_mask: tuple[bool, ...]
    finish_reason: str
    stop_string: str | None
    entropies: tuple[float, ...] | None
    prefill_tokens: int
    cached_tokens: int
    uncertainty: tuple[float, ...] | None = None
    confidences: tuple[float, ...] | None = None
    bounds: tuple[float, float, float, float] | None = None
    intervention: str | None = None


@runtime_checkable
class Engine(Protocol):
    """Generates continuations; results come back in the order of the requests."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...
