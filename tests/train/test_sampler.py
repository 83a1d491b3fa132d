"""The prompt sampler: seeded epochs without repeats, and exact continuation from its state."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from at2po.train.sampler import PromptSampler


@given(n=st.integers(1, 30), k=st.integers(1, 12), seed=st.integers(0, 5))
def test_each_epoch_visits_every_question_once(n, k, seed):
    sampler = PromptSampler(n, seed)
    drawn = [i for _ in range(3 * n) for i in sampler.next(k)]
    for epoch in range(3 * k):
        chunk = drawn[epoch * n : (epoch + 1) * n]
        assert sorted(chunk) == list(range(n))


def test_same_seed_same_order_other_seed_other_order():
    assert PromptSampler(50, 1).next(50) == PromptSampler(50, 1).next(50)
    assert PromptSampler(50, 1).next(50) != PromptSampler(50, 2).next(50)


def test_state_restores_the_stream():
    sampler = PromptSampler(7, 3)
    sampler.next(5)
    sampler.next(5)  # crosses into the second epoch
    state = sampler.state_dict()
    expected = [sampler.next(4) for _ in range(5)]
    restored = PromptSampler(7, 3)
    restored.load_state_dict(state)
    assert [restored.next(4) for _ in range(5)] == expected
