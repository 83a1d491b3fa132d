"""T²PO in the engine: M_t of every sampled token and the per-sequence thinking intervention.

References are independent: M_t is recomputed here from a teacher-forced forward of the whole
sequence with plain Python min/max bookkeeping, and the trigger position from the paper's rule
applied to the M_t of a run without intervention (same seed, so the same draws up to t*).
"""

from __future__ import annotations

import math

import pytest
import torch
from test_hf_engine import assert_exact, random_ids

from at2po.core.uncertainty import stagnation_trigger
from at2po.rollout.engine import GenerationRequest, InterventionSpec, UncertaintySpec
from at2po.rollout.hf_engine import HFEngine

BUDGET = 40


@pytest.fixture
def engine(tiny_lm):
    model, tokenizer = tiny_lm
    return HFEngine(model, tokenizer)


def reference_uncertainty(model, context, tokens, forced, alpha=0.4, j=20, bounds=None):
    """M_t per token from a teacher-forced forward, min–max kept by hand (None on forced)."""
    with torch.no_grad():
        logits = model(torch.tensor([list(context) + list(tokens)])).logits[0].double()
    logp = torch.log_softmax(logits[len(context) - 1 : -1], dim=-1)
    h_min, h_max, c_min, c_max = bounds or (math.inf, -math.inf, math.inf, -math.inf)
    out = []
    for t in range(len(tokens)):
        if forced[t]:
            out.append(None)
            continue
        p = logp[t].exp()
        h = float(-(p * logp[t]).sum())
        c = float(-logp[t].sort(descending=True).values[:j].mean())
        h_min, h_max, c_min, c_max = min(h_min, h), max(h_max, h), min(c_min, c), max(c_max, c)
        hn = 0.5 if h_max - h_min < 1e-12 else (h - h_min) / (h_max - h_min)
        cn = 0.5 if c_max - c_min < 1e-12 else (c - c_min) / (c_max - c_min)
        out.append(alpha * hn + (1 - alpha) * (1 - cn))
    return out, (h_min, h_max, c_min, c_max)


def request(prompt, seed, intervention=None, bounds=None, budget=BUDGET):
    spec = UncertaintySpec() if bounds is None else UncertaintySpec(bounds=bounds)
    return GenerationRequest(prompt, budget, seed=seed, uncertainty=spec, intervention=intervention)


def as_list(values):
    return [None if math.isnan(v) else v for v in values]


def test_uncertainty_is_computed_from_the_unmodified_distribution(tiny_lm, engine):
    model, _ = tiny_lm
    prompt = random_ids(12, 400, seed=1)
    first = engine.generate([request(prompt, seed=3)])[0]
    expected, bounds = reference_uncertainty(model, prompt, first.token_ids, first.forced_mask)
    assert as_list(first.uncertainty) == pytest.approx(expected, abs=1e-4)
    assert first.bounds == pytest.approx(bounds, abs=1e-4)
    assert len(first.confidences) == len(first.entropies) == len(first.token_ids)
    # the next turn continues the trajectory's min–max from the returned bounds
    context = prompt + first.token_ids + random_ids(5, 400, seed=2)
    second = engine.generate([request(context, seed=4, bounds=first.bounds)])[0]
    expected, _ = reference_uncertainty(
        model, context, second.token_ids, second.forced_mask, bounds=bounds
    )
    assert as_list(second.uncertainty) == pytest.approx(expected, abs=1e-4)


def window_means(m, min_think, window):
    """The paper's window means at every t ≥ min_think with all deltas defined."""
    deltas = [abs(m[t] - m[t - 1]) for t in range(1, len(m))]
    return [
        sum(deltas[t - 1 - window : t]) / (window + 1)
        for t in range(max(min_think, window + 2), len(m) + 1)
    ]


def calibrated(engine, prompt, seed, min_think=4, window=2):
    """ε just above the smallest window mean of an unforced run, and the t* it gives."""
    free = engine.generate([request(prompt, seed)])[0]
    eps = min(window_means(free.uncertainty, min_think, window)) * 1.001
    t_star = stagnation_trigger(
        torch.tensor(free.uncertainty), min_think=min_think, window=window, eps=eps
    )
    return free, eps, t_star


def test_stagnation_forces_the_queue_after_the_trigger_token(tiny_lm, engine):
    model, _ = tiny_lm
    prompt = random_ids(10, 400, seed=5)
    free, eps, t_star = calibrated(engine, prompt, seed=7)
    assert t_star is not None and t_star + 3 < BUDGET
    forced_ids = (11, 12, 13)
    spec = InterventionSpec(forced_ids, min_think=4, window=2, eps=eps, max_think=1000)
    result = engine.generate([request(prompt, seed=7, intervention=spec)])[0]
    assert result.token_ids[:t_star] == free.token_ids[:t_star]
    assert result.token_ids[t_star : t_star + 3] == forced_ids
    assert result.forced_mask == tuple(t_star <= t < t_star + 3 for t in range(BUDGET))
    assert result.intervention == "stagnation"
    assert all(math.isnan(m) for m in result.uncertainty[t_star : t_star + 3])
    # the log-prob of every token, forced ones included, is the model's own (no logit surgery)
    assert_exact(model, request(prompt, 7), result)
    expected, _ = reference_uncertainty(model, prompt, result.token_ids, result.forced_mask)
    assert as_list(result.uncertainty) == pytest.approx(expected, abs=1e-4)


def test_state_is_per_sequence(tiny_lm, engine):
    prompt_a, prompt_b = random_ids(10, 400, seed=5), random_ids(14, 400, seed=6)
    _, eps, t_star = calibrated(engine, prompt_a, seed=7)
    free_b = engine.generate([request(prompt_b, seed=8)])[0]
    assert min(window_means(free_b.uncertainty, 4, 2)) > eps  # b alone never stagnates
    spec = InterventionSpec((11, 12, 13), min_think=4, window=2, eps=eps, max_think=1000)
    alone = [
        engine.generate([request(p, s, intervention=spec)])[0]
        for p, s in ((prompt_a, 7), (prompt_b, 8))
    ]
    together = engine.generate(
        [request(prompt_a, 7, intervention=spec), request(prompt_b, 8, intervention=spec)]
    )
    assert together[0].intervention == "stagnation" and together[1].intervention is None
    assert together[0].forced_mask.index(True) == t_star
    assert not any(together[1].forced_mask)
    for batched, solo in zip(together, alone, strict=True):
        assert batched.token_ids == solo.token_ids
        assert batched.forced_mask == solo.forced_mask


def test_thinking_cap_forces_after_max_think_tokens(engine):
    prompt = random_ids(10, 400, seed=5)
    spec = InterventionSpec((11, 12), min_think=1, window=1, eps=0.0, max_think=4)
    result = engine.generate([request(prompt, 7, intervention=spec)])[0]
    assert result.forced_mask[:7] == (False,) * 4 + (True, True, False)
    assert result.token_ids[4:6] == (11, 12)
    assert result.intervention == "cap"
    assert sum(result.forced_mask) == 2  # at most once per turn


def test_no_intervention_once_thinking_closed_or_before_it_opens(engine):
    prompt = random_ids(10, 400, seed=5)
    free = engine.generate([request(prompt, 7)])[0]
    # the model itself samples free.token_ids[2]; taking it as </think> closes thinking there
    closed = InterventionSpec((free.token_ids[2], 12), min_think=1, window=1, max_think=4)
    result = engine.generate([request(prompt, 7, intervention=closed)])[0]
    assert result.token_ids == free.token_ids and not any(result.forced_mask)
    # thinking counts only after <think>: an id never sampled keeps the cap from firing
    never = next(i for i in range(3, 400) if i not in free.token_ids)
    unopened = InterventionSpec((11, 12), max_think=4, think_start_id=never)
    result = engine.generate([request(prompt, 7, intervention=unopened)])[0]
    assert result.token_ids == free.token_ids and result.intervention is None


def test_specs_refuse_bad_values():
    with pytest.raises(ValueError, match="top_j=1"):
        UncertaintySpec(top_j=1)
    with pytest.raises(ValueError, match="needs uncertainty"):
        GenerationRequest((1,), 4, intervention=InterventionSpec((3,)))
    with pytest.raises(ValueError, match="forced_ids"):
        InterventionSpec(())
    with pytest.raises(ValueError, match="cannot be combined"):
        GenerationRequest((1,), 4, uncertainty=UncertaintySpec(), token_hook=lambda ids: None)
