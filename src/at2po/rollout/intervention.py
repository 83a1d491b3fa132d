"""Per-sequence T²PO state of a decode batch: uncertainty bounds and the thinking intervention.

One :class:`ThinkState` holds, for every row of the batch, the trajectory's running min–max
bounds, the turn's thinking-token count, its window of recent ``|M_t − M_{t−1}|`` and its queue of
forced ids. :meth:`ThinkState.step` runs one decode step for all rows at once (no loop over rows):

1. rows whose queue is non-empty emit its head instead of the sampled token (``forced``);
2. H_t, C_t and M_t come from the unmodified distribution; forced rows get no M and keep their
   bounds (:func:`at2po.core.uncertainty.fused_uncertainty`);
3. a sampled thinking token pushes its delta; a row that stagnates or reaches its cap, and has
   not closed thinking, keeps this token and queues its forced ids for the next steps.

State is per row, never shared across the batch (the released ``ThinkLogitsProcessor`` shares
its counter across a batch's sequences).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from at2po.core.uncertainty import (
    entropy_and_confidence,
    fused_uncertainty,
    push_delta,
    recent_weights,
    stagnated,
    top_j_weights,
)
from at2po.rollout.engine import (
    INTERVENTION_CAP,
    INTERVENTION_STAGNATION,
    GenerationRequest,
    InterventionSpec,
    UncertaintySpec,
)

_NO_ID = -1
_FIRED = {1: INTERVENTION_STAGNATION, 2: INTERVENTION_CAP}


@dataclass
class StepOutput:
    """One decode step's tokens after forcing, which rows were forced, and H_t, C_t, M_t per row."""

    token_B: torch.Tensor
    forced_B: torch.Tensor
    entropy_B: torch.Tensor
    confidence_B: torch.Tensor
    uncertainty_B: torch.Tensor


@dataclass
class ThinkState:
    """Per-row T²PO state; every tensor has the batch as its first dimension."""

    alpha_B: torch.Tensor
    top_weight_BJ: torch.Tensor
    bounds_B4: torch.Tensor
    active_B: torch.Tensor
    think_start_B: torch.Tensor
    think_end_B: torch.Tensor
    min_think_B: torch.Tensor
    span_B: torch.Tensor
    eps_B: torch.Tensor
    max_think_B: torch.Tensor
    thinking_B: torch.Tensor
    closed_B: torch.Tensor
    n_think_B: torch.Tensor
    prev_m_B: torch.Tensor
    window_BW: torch.Tensor
    count_B: torch.Tensor
    forced_ids_BQ: torch.Tensor
    forced_len_B: torch.Tensor
    queue_B: torch.Tensor
    fired_B: torch.Tensor
    recent_BW: torch.Tensor

    @classmethod
    def for_requests(
        cls, requests: Sequence[GenerationRequest], device: torch.device, vocab_size: int
    ) -> ThinkState | None:
        """The initial state of a batch, or ``None`` when no request asks for uncertainty."""
        if all(r.uncertainty is None for r in requests):
            return None
        specs = [r.intervention or _IDLE for r in requests]
        width_q = max(len(s.forced_ids) for s in specs)
        width_w = max(s.window + 1 for s in specs)

        def per_row(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        f64, long, flag = torch.float64, torch.long, torch.bool
        batch = len(requests)
        starts = [_NO_ID if s.think_start_id is None else s.think_start_id for s in specs]
        return cls(
            alpha_B=per_row([_spec(r).alpha for r in requests], f64),
            top_weight_BJ=top_j_weights(
                per_row([_spec(r).top_j for r in requests], long), vocab_size
            ),
            bounds_B4=per_row([list(_spec(r).bounds) for r in requests], f64),
            active_B=per_row([r.intervention is not None for r in requests], flag),
            think_start_B=per_row(starts, long),
            think_end_B=per_row([s.think_end_id for s in specs], long),
            min_think_B=per_row([s.min_think for s in specs], long),
            span_B=per_row([s.window + 1 for s in specs], long),
            eps_B=per_row([s.eps for s in specs], f64),
            max_think_B=per_row([s.max_think for s in specs], long),
            thinking_B=per_row([s == _NO_ID for s in starts], flag),
            closed_B=torch.zeros(batch, dtype=flag, device=device),
            n_think_B=torch.zeros(batch, dtype=long, device=device),
            prev_m_B=torch.zeros(batch, dtype=f64, device=device),
            window_BW=torch.zeros(batch, width_w, dtype=f64, device=device),
            count_B=torch.zeros(batch, dtype=long, device=device),
            forced_ids_BQ=per_row(
                [list(s.forced_ids) + [_NO_ID] * (width_q - len(s.forced_ids)) for s in specs],
                long,
            ),
            forced_len_B=per_row([len(s.forced_ids) for s in specs], long),
            queue_B=torch.full((batch,), _NO_ID, dtype=long, device=device),
            fired_B=torch.zeros(batch, dtype=long, device=device),
            recent_BW=recent_weights(per_row([s.window + 1 for s in specs], long), width_w).to(f64),
        )

    def select(self, keep_B: torch.Tensor) -> ThinkState:
        """The state of the rows ``keep_B`` (when finished rows leave the batch)."""
        return ThinkState(**{f.name: getattr(self, f.name)[keep_B] for f in fields(self)})

    def bounds(self, row: int) -> tuple[float, float, float, float]:
        """Row ``row``'s running (H_min, H_max, C_min, C_max)."""
        h_min, h_max, c_min, c_max = self.bounds_B4[row].tolist()
        return h_min, h_max, c_min, c_max

    def intervention(self, row: int) -> str | None:
        """Why TTI intervened in row ``row`` (``None`` when it did not)."""
        return _FIRED.get(int(self.fired_B[row]))

    def step(self, logp_BV: torch.Tensor, sampled_token_B: torch.Tensor) -> StepOutput:
        """Force queued ids, score every row, and queue the forced ids of rows that fire."""
        forced_B = self.queue_B >= 0
        head_B = self.forced_ids_BQ.gather(1, self.queue_B.clamp(min=0)[:, None]).squeeze(1)
        token_B = torch.where(forced_B, head_B, sampled_token_B)
        entropy_B, confidence_B = entropy_and_confidence(logp_BV, self.top_weight_BJ)
        m_B, self.bounds_B4 = fused_uncertainty(
            entropy_B, confidence_B, self.bounds_B4, self.alpha_B, ~forced_B
        )
        if bool(self.active_B.any()):
            self._advance_queue(forced_B)
            self._watch_thinking(token_B, m_B, forced_B)
        return StepOutput(token_B, forced_B, entropy_B, confidence_B, m_B)

    def _advance_queue(self, forced_B: torch.Tensor) -> None:
        following_B = self.queue_B + 1
        drained_B = following_B >= self.forced_len_B
        self.queue_B = torch.where(
            forced_B, torch.where(drained_B, _NO_ID, following_B), self.queue_B
        )

    def _watch_thinking(
        self, token_B: torch.Tensor, m_B: torch.Tensor, forced_B: torch.Tensor
    ) -> None:
        counting_B = self.active_B & self.thinking_B & ~self.closed_B & ~forced_B
        has_previous_B = counting_B & (self.n_think_B > 0)
        delta_B = torch.where(has_previous_B, (m_B - self.prev_m_B).abs(), 0.0)
        self.window_BW, self.count_B = push_delta(
            self.window_BW, self.count_B, delta_B, has_previous_B
        )
        self.n_think_B = self.n_think_B + counting_B.long()
        self.prev_m_B = torch.where(counting_B, m_B, self.prev_m_B)
        closes_B = token_B == self.think_end_B
        stagnant_B = counting_B & stagnated(
            self.window_BW,
            self.count_B,
            self.n_think_B,
            self.min_think_B,
            self.span_B,
            self.eps_B,
            self.recent_BW,
        )
        capped_B = counting_B & (self.n_think_B >= self.max_think_B)
        fire_B = (stagnant_B | capped_B) & ~closes_B
        self.fired_B = torch.where(fire_B, torch.where(stagnant_B, 1, 2), self.fired_B)
        self.queue_B = torch.where(fire_B, 0, self.queue_B)
        self.closed_B = self.closed_B | closes_B | fire_B
        self.thinking_B = self.thinking_B | (self.active_B & (token_B == self.think_start_B))


_IDLE = InterventionSpec(forced_ids=(0,))
"""Placeholder settings of rows without an intervention (``active_B`` is False for them)."""


def _spec(request: GenerationRequest) -> UncertaintySpec:
    """The request's uncertainty settings (defaults for rows that did not ask)."""
    return request.uncertainty or UncertaintySpec()
