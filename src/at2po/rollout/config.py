"""Rollout settings: one frozen dataclass, every field documented.

Token cost of one tree (AT²PO §4.1): with B the mean generated tokens of a chain, a tree of M chains
and L rounds of K re-sampled turns costs about (M + L·K·f)·B generated tokens, where f is the mean
fraction of a chain that a re-sampled turn regenerates (the paper takes f = 1/2: 10 + 2·6/2 = 16
chains' worth for 22 leaves). docs/rollout.md compares the formula with measured counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from at2po.core.expansion import EXPANSION_MODES, SIBLING_PENALTY
from at2po.core.uncertainty import ALPHA, TOP_J
from at2po.rollout.engine import InterventionSpec, SamplingParams, UncertaintySpec

TTI_DEFAULTS = {"min_think": 16, "window": 4, "eps": 0.09, "max_think": 64}
"""The tiny model's TTI defaults (L_min, N, ε, L_max). ε = 0.09 fires on ~15 % of the shipped tiny
policy's turns at the warm start (``bench/t2po_calibrate.py``, docs/algorithms.md); the published
Qwen3-4B runs use ε = 1e-4 (paper), L_min 100, 20 consecutive steps, L_max 450–500 (code)."""

TDS_DEFAULTS = {"eta": 0.05, "max_redraws": 2}
"""The tiny model's TDS defaults (η, B_max): η = 0.05 is the 20th percentile of Γ at the warm
start; the notes give η = 1e-3 for Qwen3-4B, the released code 0.3 (unwired) and max_try 2."""

ROLLOUT_MODES = ("chain", "tree", "branching")
"""``chain``: n independent trajectories; ``tree``: AT²PO phases (random expansion = Tree-GRPO);
``branching``: ARPO/AEPO online branching after tool calls."""


@dataclass(frozen=True)
class RolloutConfig:
    """How trajectories are grown for each prompt.

    Attributes:
        mode: one of :data:`ROLLOUT_MODES`.
        n_rows: rows (leaves) kept per prompt: N for ``tree``, n for ``chain``/``branching``.
        n_chains: M, independent chains started per prompt (``tree``; the initial chains of
            ``branching``). Ignored by ``chain``, which starts ``n_rows`` chains.
        expansion_rounds: L, expansion rounds after the initial chains (``tree``).
        expansion_k: K, turns re-sampled per tree per round (``tree``).
        expansion_mode: ``entropy`` (AT²PO) or ``random`` (Tree-GRPO).
        sibling_penalty: α in the expansion score H − α·b.
        expansion_min_entropy: entropy floor of ``entropy`` expansion (beyond the paper; 0 = off):
            turns with H below it are picked only when too few others remain.
        branch_beam: at most this many trajectories continue from one observation, the original
            included (``branching``; the AEPO scripts use 2).
        branch_probability: τ, the branching threshold (``branching``).
        branch_entropy_weight: w, weight of the entropy change in the branching draw.
        max_turn_tokens: token budget of one generation call (one turn).
        max_response_tokens: budget of a whole response (turns and observations); a trajectory
            that reaches it ends with finish ``length``.
        max_context_tokens: prompt + response never exceed this (the model's context).
        sampling: temperature / top-p / top-k / greedy of every generation call.
        record_entropy: ask the engine for the full-vocabulary entropy of every sampled token.
        tool_workers: threads that step the environment: one runs a round's batched step
            (``step_batch``), and when that fails, or the env has none, each turn's step runs on
            its own thread.
        tool_timeout_s: an env step that takes longer (or raises) ends its trajectory (finish
            ``error``); the search tool has its own, shorter, per-call timeout and retries.
        seed: seeds expansion picks, leaf sampling and every request's sampling stream.
        record_uncertainty: compute T²PO's M_t of every sampled token (implied by ``tti`` and
            ``tds``) and log it (``t2po/*`` metrics).
        uncertainty_alpha: α of ``M = α·H̃ + (1 − α)·(1 − C̃)``.
        uncertainty_top_j: j of the top-j confidence (≥ 2).
        tti: T²PO's thinking intervention: after ``tti_min_think`` thinking tokens, when the
            mean of the last ``tti_window`` + 1 values of |ΔM| drops below ``tti_eps`` (or after
            ``tti_max_think`` thinking tokens), force the env's ``intervention_text``.
        tti_min_think, tti_window, tti_eps, tti_max_think: L_min, N, ε, L_max.
        tti_train_forced_tokens: keep forced tokens in the policy loss (the T²PO authors' code);
            off, they get loss mask 0 like observations and every trained log-prob is exact.
        tds: T²PO's turn resampling: while ``Γ = |Φ − Φ_prev| < tds_eta`` and fewer than
            ``tds_max_redraws`` redraws ran, draw the turn again from the same state before the
            env steps (the last draw is kept; discarded draws count as generated tokens).
        tds_eta, tds_max_redraws: η and B_max.

    The defaults, sized for a CPU (trees of M = 4 chains, L = 2 rounds of K = 2, N = 8 leaves;
    the paper grows M = 10, L = 2, K = 6, N = 22), are also those of the ``rollout`` section of
    ``at2po train`` (:class:`at2po.train.config.RolloutSection`), which takes them from here.
    """

    mode: str = "tree"
    n_rows: int = 8
    n_chains: int = 4
    expansion_rounds: int = 2
    expansion_k: int = 2
    expansion_mode: str = "entropy"
    sibling_penalty: float = SIBLING_PENALTY
    expansion_min_entropy: float = 0.0
    branch_beam: int = 2
    branch_probability: float = 0.5
    branch_entropy_weight: float = 0.2
    max_turn_tokens: int = 128
    max_response_tokens: int = 1024
    max_context_tokens: int = 2048
    sampling: SamplingParams = field(default_factory=SamplingParams)
    record_entropy: bool = False
    tool_workers: int = 16
    tool_timeout_s: float = 60.0
    seed: int = 0
    record_uncertainty: bool = False
    uncertainty_alpha: float = ALPHA
    uncertainty_top_j: int = TOP_J
    tti: bool = False
    tti_min_think: int = TTI_DEFAULTS["min_think"]
    tti_window: int = TTI_DEFAULTS["window"]
    tti_eps: float = TTI_DEFAULTS["eps"]
    tti_max_think: int = TTI_DEFAULTS["max_think"]
    tti_train_forced_tokens: bool = False
    tds: bool = False
    tds_eta: float = TDS_DEFAULTS["eta"]
    tds_max_redraws: int = TDS_DEFAULTS["max_redraws"]

    def __post_init__(self) -> None:
        if self.mode not in ROLLOUT_MODES:
            raise ValueError(f"rollout mode {self.mode!r} is not one of {ROLLOUT_MODES}")
        if self.expansion_min_entropy < 0:
            raise ValueError(
                f"expansion_min_entropy={self.expansion_min_entropy} must be >= 0 (0 turns it off)"
            )
        if self.expansion_mode not in EXPANSION_MODES:
            raise ValueError(
                f"expansion_mode {self.expansion_mode!r} is not one of {EXPANSION_MODES}"
            )
        for name in ("n_rows", "n_chains", "branch_beam", "max_turn_tokens", "tool_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.expansion_rounds < 0 or self.expansion_k < 1:
            raise ValueError(
                f"expansion_rounds={self.expansion_rounds} must be >= 0 and "
                f"expansion_k={self.expansion_k} >= 1"
            )
        if not 0 < self.max_response_tokens < self.max_context_tokens:
            raise ValueError(
                f"max_response_tokens={self.max_response_tokens} must be positive and below "
                f"max_context_tokens={self.max_context_tokens} (the prompt needs room too)"
            )

        if self.tds_max_redraws < 0 or self.tds_eta < 0:
            raise ValueError(
                f"tds_max_redraws={self.tds_max_redraws} and tds_eta={self.tds_eta} must be >= 0"
            )

        self.uncertainty_spec()  # the engine's own checks of α and j
        self.intervention_spec((0,), None)  # and of L_min, N, ε, L_max

    def uncertainty_spec(
        self, bounds: tuple[float, float, float, float] | None = None
    ) -> UncertaintySpec:
        """The engine request's uncertainty settings, starting from a trajectory's ``bounds``."""
        extra = {} if bounds is None else {"bounds": bounds}
        return UncertaintySpec(self.uncertainty_alpha, self.uncertainty_top_j, **extra)

    def intervention_spec(
        self, forced_ids: tuple[int, ...], think_start_id: int | None
    ) -> InterventionSpec:
        """The engine request's TTI settings with the task's forced ids."""
        return InterventionSpec(
            forced_ids=forced_ids,
            min_think=self.tti_min_think,
            window=self.tti_window,
            eps=self.tti_eps,
            max_think=self.tti_max_think,
            think_start_id=think_start_id,
        )

    @property
    def wants_uncertainty(self) -> bool:
        """Whether the engine computes M_t (asked for, or needed by TTI or TDS)."""
        return self.record_uncertainty or self.tti or self.tds

    @property
    def initial_chains(self) -> int:
        """Chains started per prompt before any expansion or branching."""
        if self.mode == "chain":
            return self.n_rows
        return min(self.n_chains, self.n_rows) if self.mode == "branching" else self.n_chains
