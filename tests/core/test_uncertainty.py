"""The T²PO math against the reference spec's hand-computed cases (§2.6, natural log)."""

from __future__ import annotations

import math

import pytest
import torch

from at2po.core.uncertainty import (
    FRESH_BOUNDS,
    entropy_and_confidence,
    fused_uncertainty,
    needs_redraw,
    online_uncertainty,
    stagnation_trigger,
    top_j_weights,
    turn_progress,
    turn_score,
)


def logp(*probs):
    return torch.tensor([probs], dtype=torch.float64).log()


@pytest.mark.parametrize(
    ("probs", "entropy", "conf_j2", "conf_j1"),
    [
        ((0.25, 0.25, 0.25, 0.25), 1.386294, 1.386294, 1.386294),
        ((0.97, 0.01, 0.01, 0.01), 0.167701, 2.317815, 0.030459),
        ((0.7, 0.1, 0.1, 0.1), 0.940448, 1.329630, 0.356675),
    ],
)
def test_t1_entropy_and_top_j_confidence(probs, entropy, conf_j2, conf_j1):
    h, c2 = entropy_and_confidence(logp(*probs), top_j_weights(torch.tensor([2]), 4))
    _, c1 = entropy_and_confidence(logp(*probs), top_j_weights(torch.tensor([1]), 4))
    assert float(h) == pytest.approx(entropy, abs=1e-6)
    assert float(c2) == pytest.approx(conf_j2, abs=1e-6)
    assert float(c1) == pytest.approx(conf_j1, abs=1e-6)


def test_top_j_is_per_row_and_capped_at_the_vocabulary():
    rows = torch.cat([logp(0.97, 0.01, 0.01, 0.01), logp(0.7, 0.1, 0.1, 0.1)])
    _, conf = entropy_and_confidence(rows, top_j_weights(torch.tensor([2, 20]), 4))
    # row 2 with j = 20 > V = 4 averages all four: −(log .7 + 3 log .1)/4
    expected = -(math.log(0.7) + 3 * math.log(0.1)) / 4
    assert conf.tolist() == pytest.approx([2.317815, expected], abs=1e-6)


def test_t2_online_uncertainty_and_trigger():
    m = online_uncertainty(
        torch.tensor([2.0, 3.0, 1.0, 1.1, 1.2], dtype=torch.float64),
        torch.tensor([4.0, 2.0, 6.0, 5.8, 5.7], dtype=torch.float64),
    )
    assert m.tolist() == pytest.approx([0.5, 1.0, 0.0, 0.05, 0.085], abs=1e-12)
    # window means 0.525 (t4) and 0.0425 (t5): ε = 0.05 fires at t* = 5, ε = 0.04 never
    assert stagnation_trigger(m, min_think=4, window=1, eps=0.05) == 5
    assert stagnation_trigger(m, min_think=4, window=1, eps=0.04) is None


def test_t2b_online_differs_from_post_hoc():
    m = online_uncertainty(torch.tensor([2.0, 3, 1, 2, 4]), torch.tensor([4.0, 2, 6, 4, 5]))
    assert m.tolist() == pytest.approx([0.5, 1.0, 0.0, 0.5, 0.55], abs=1e-12)


def test_t3_paper_trigger_rule():
    m = torch.tensor([0.50, 0.80, 0.40, 0.42, 0.43, 0.44, 0.60], dtype=torch.float64)
    # window means 0.24, 0.143333, 0.013333 at t = 4, 5, 6
    assert stagnation_trigger(m, min_think=3, window=2, eps=0.05) == 6
    assert stagnation_trigger(m, min_think=3, window=2, eps=0.0133) is None
    # L_min delays monitoring: from t = 7 on the window (.01, .01, .16) averages 0.06
    assert stagnation_trigger(m, min_think=7, window=2, eps=0.05) is None


def test_t4_end_to_end_and_turn_score_floor():
    probs = [
        (0.25, 0.25, 0.25, 0.25),
        (0.97, 0.01, 0.01, 0.01),
        (0.7, 0.1, 0.1, 0.1),
        (0.5, 0.5, 0.0, 0.0),
        (0.6, 0.2, 0.1, 0.1),
    ]
    logp_TV = torch.cat([logp(*p) for p in probs])
    h, c = entropy_and_confidence(logp_TV, top_j_weights(torch.full((5,), 2), 4))
    assert h.tolist() == pytest.approx([1.386294, 0.167701, 0.940448, 0.693147, 1.088900], abs=1e-6)
    assert c.tolist() == pytest.approx([1.386294, 2.317815, 1.329630, 0.693147, 1.060132], abs=1e-6)
    m = online_uncertainty(h, c, alpha=0.4)
    assert m.tolist() == pytest.approx([0.5, 0.0, 0.853652, 0.772476, 0.766851], abs=1e-6)
    assert turn_score(m) == pytest.approx(0.047926, abs=1e-6)


def test_t5_turn_score_progress_and_redraw_rule():
    phi1 = turn_score(torch.tensor([0.5, 0.8, 0.2]))
    phi2 = turn_score(torch.tensor([0.25, 0.5, 0.4]))
    assert phi1 == pytest.approx(0.430887, abs=1e-6)
    assert phi2 == pytest.approx(0.368403, abs=1e-6)
    gamma = turn_progress(phi2, phi1)
    assert gamma == pytest.approx(0.062484, abs=1e-6)
    assert needs_redraw(gamma, eta=0.1, redraws=0, max_redraws=2)
    assert not needs_redraw(gamma, eta=0.05, redraws=0, max_redraws=2)
    # an identical turn has Γ = 0 exactly: the paper's rule redraws it (the released code does not)
    assert needs_redraw(turn_progress(phi1, phi1), eta=0.05, redraws=0, max_redraws=2)
    # B_max = 2: after two redraws the third draw is kept whatever its Γ
    assert not needs_redraw(0.0, eta=0.1, redraws=2, max_redraws=2)


def test_turn_score_skips_forced_tokens():
    m = torch.tensor([0.5, math.nan, 0.8, math.nan, 0.2])
    sampled = ~m.isnan()
    assert turn_score(m, sampled) == pytest.approx(0.430887, abs=1e-6)
    assert math.isnan(turn_score(m[[1, 3]], sampled[[1, 3]]))


def test_forced_rows_keep_their_bounds_and_get_no_score():
    bounds = torch.tensor([FRESH_BOUNDS, (1.0, 2.0, 3.0, 4.0)], dtype=torch.float64)
    m, new = fused_uncertainty(
        torch.tensor([1.0, 5.0]),
        torch.tensor([1.0, 0.0]),
        bounds,
        torch.tensor([0.4, 0.4], dtype=torch.float64),
        torch.tensor([True, False]),
    )
    assert float(m[0]) == 0.5 and math.isnan(float(m[1]))
    assert new[0].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert new[1].tolist() == [1.0, 2.0, 3.0, 4.0]
