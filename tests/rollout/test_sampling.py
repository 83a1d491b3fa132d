"""Vectorised token choice: hand-worked draws, truncation properties, exact frequencies."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.rollout.sampling import choose_tokens, entropy, tempered_logprobs

# Token probabilities 0.15, 0.5, 0.05, 0.3 (ids 0..3); sorted: ids 1, 3, 0, 2.
PROBS = torch.tensor([0.15, 0.5, 0.05, 0.3])
LOGITS = PROBS.log()


def draw(uniform: float, greedy=False, top_k=None, top_p=None) -> int:
    logits_BV = LOGITS[None]
    logp_BV = tempered_logprobs(logits_BV, torch.ones(1))
    truncate = top_k is not None or top_p is not None
    return choose_tokens(
        logits_BV,
        logp_BV,
        torch.tensor([uniform]),
        torch.tensor([greedy]),
        torch.tensor([top_k if top_k is not None else -1]) if truncate else None,
        torch.tensor([top_p if top_p is not None else 1.0]) if truncate else None,
    ).item()


def test_untruncated_draw_is_the_inverse_cdf_in_vocabulary_order():
    # cdf over ids 0..3 = 0.15, 0.65, 0.70, 1.00; target = 1 - u.
    assert draw(0.90) == 0  # target 0.10
    assert draw(0.50) == 1  # target 0.50
    assert draw(0.32) == 2  # target 0.68
    assert draw(0.10) == 3  # target 0.90
    assert draw(0.0) == 3  # target 1.00 is still a real token


def test_top_p_and_top_k_keep_the_most_likely_tokens_renormalised():
    # top_p=0.7 keeps ids 1 (0.5) and 3 (0.3): sorted cdf 0.5, 0.8; target = (1 - u) * 0.8.
    assert draw(0.40, top_p=0.7) == 1  # target 0.48
    assert draw(0.35, top_p=0.7) == 3  # target 0.52
    assert draw(0.0, top_p=0.7) == 3
    # top_p=0.45 keeps only id 1, whose mass alone reaches it.
    assert draw(0.0, top_p=0.45) == 1
    assert draw(0.0, top_k=2) == 3
    assert draw(0.0, top_k=1) == 1
    # top_k=3 keeps ids 1, 3, 0 (mass 0.95): target 0.95 lands on id 0.
    assert draw(0.0, top_k=3) == 0
    # Both: top_k=3 keeps ids 1, 3, 0; top_p=0.6 then drops id 0 (0.8 of mass before it).
    assert draw(0.5, top_k=3, top_p=0.6) == 1  # target 0.40
    assert draw(0.2, top_k=3, top_p=0.6) == 3  # target 0.64


def test_greedy_rows_take_the_argmax_whatever_the_draw():
    assert {draw(u, greedy=True) for u in (0.0, 0.3, 0.99)} == {1}


def test_draw_frequencies_over_a_uniform_grid_equal_the_truncated_probabilities():
    grid = (torch.arange(20_000, dtype=torch.float64) + 0.5) / 20_000
    logits_BV = LOGITS.expand(len(grid), -1)
    logp_BV = tempered_logprobs(logits_BV, torch.full((len(grid),), 1.0))
    for top_k, top_p, expected in [
        (-1, 1.0, PROBS),
        (-1, 0.7, torch.tensor([0.0, 0.625, 0.0, 0.375])),
        (3, 1.0, torch.tensor([0.15, 0.5, 0.0, 0.3]) / 0.95),
    ]:
        tokens = choose_tokens(
            logits_BV,
            logp_BV,
            grid.float(),
            torch.zeros(len(grid), dtype=torch.bool),
            torch.full((len(grid),), top_k),
            torch.full((len(grid),), top_p),
        )
        frequencies = torch.bincount(tokens, minlength=4).double() / len(grid)
        assert torch.allclose(frequencies, expected.double(), atol=1e-3)


def test_tempered_logprobs_and_entropy_by_hand():
    logits_BV = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    logp_BV = tempered_logprobs(logits_BV, torch.tensor([1.0, 0.5]))
    expected = torch.tensor([[0.25, 0.75], [0.1, 0.9]]).log()
    assert torch.allclose(logp_BV, expected, atol=1e-6)
    assert torch.allclose(entropy(torch.zeros(1, 4) - math.log(4)), torch.tensor([math.log(4)]))
    with_zero = tempered_logprobs(torch.tensor([[0.0, 0.0, -math.inf]]), torch.ones(1))
    assert torch.allclose(entropy(with_zero), torch.tensor([math.log(2)]))


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    vocab=st.integers(2, 50),
    top_k=st.integers(-1, 50).filter(lambda k: k != 0),
    top_p=st.floats(0.01, 1.0),
    uniform=st.floats(0.0, 0.999999),
    scale=st.floats(0.1, 10.0),
)
def test_drawn_token_lies_in_the_top_k_and_in_the_nucleus(
    seed, vocab, top_k, top_p, uniform, scale
):
    logits_BV = torch.randn(1, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    logp_BV = tempered_logprobs(logits_BV, torch.ones(1))
    token = choose_tokens(
        logits_BV,
        logp_BV,
        torch.tensor([uniform]),
        torch.tensor([False]),
        torch.tensor([top_k]),
        torch.tensor([top_p]),
    ).item()
    probs = logp_BV.exp()[0]
    assert probs[token] > 0
    more_likely = probs > probs[token]
    if top_k != -1:
        assert int(more_likely.sum()) < top_k
    assert probs[more_likely].sum().item() < top_p + 1e-6
