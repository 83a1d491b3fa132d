"""Rows from expert episodes: the same ids a rollout would build, masks on the policy's tokens."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from at2po.models.sft_data import SFTExample, collate, length_grouped_batches, render_episode


def test_rows_rebuild_the_episode_text_and_masks(codec, episodes):
    tokenizer = codec.tokenizer
    answered = [s for s in episodes if s.finish == "answer"]
    assert len(answered) >= len(episodes) // 2
    for state in episodes:
        row = render_episode(codec, state)
        prompt = codec.encode_prompt(state.prompt_messages())
        assert list(row.input_ids[: len(prompt)]) == prompt
        assert not any(row.loss_mask[: len(prompt)] + row.observation_mask[: len(prompt)])
        tail = 1 if state.finish == "answer" else 0
        text = tokenizer.decode(row.input_ids[len(prompt) : len(row) - tail])
        assert text == state.response_text
        trained = [i for i, m in zip(row.input_ids, row.loss_mask, strict=True) if m]
        turns_text = "".join(t.text for t in state.turns)
        if tail:
            assert row.input_ids[-1] == tokenizer.eos_token_id and row.loss_mask[-1] == 1
            trained = trained[:-1]
        assert tokenizer.decode(trained) == turns_text


def test_observation_ids_are_the_codec_s(codec, episodes):
    state = next(s for s in episodes if len(s.turns) >= 2)
    row = render_episode(codec, state)
    first_turn = codec.tokenizer.encode(state.turns[0].text, add_special_tokens=False)
    observation = codec.encode_observation(state.turns[0].observation)
    start = len(codec.encode_prompt(state.prompt_messages())) + len(first_turn)
    assert list(row.input_ids[start : start + len(observation)]) == observation
    assert set(row.loss_mask[start : start + len(observation)]) == {0}
    assert set(row.observation_mask[start : start + len(observation)]) == {1}
    observed = [i for i, o in zip(row.input_ids, row.observation_mask, strict=True) if o]
    assert codec.tokenizer.decode(observed) == "".join(t.observation for t in state.turns)
    assert row.loss_mask[start - 1] == 1 and row.loss_mask[start + len(observation)] == 1


def test_collate_pads_on_the_right():
    rows = [SFTExample((4, 5, 6), (0, 1, 0), (0, 0, 1)), SFTExample((7,), (0,), (0,))]
    batch = collate(rows, pad_id=0)
    assert batch.input_ids_BT.tolist() == [[4, 5, 6], [7, 0, 0]]
    assert batch.attention_mask_BT.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.loss_mask_BT.tolist() == [[0, 1, 0], [0, 0, 0]]
    assert batch.observation_mask_BT.tolist() == [[0, 0, 1], [0, 0, 0]]


def test_malformed_rows_are_refused():
    with pytest.raises(ValueError, match="input_ids has 2 ids but loss_mask 1"):
        SFTExample((1, 2), (0,), (0, 0))
    with pytest.raises(ValueError, match="both the policy's"):
        SFTExample((1, 2), (0, 1), (0, 1))


@given(
    st.lists(st.integers(1, 50), min_size=1, max_size=90),
    st.integers(1, 9),
    st.integers(0, 10_000),
)
def test_an_epoch_holds_every_row_once(lengths, batch_size, seed):
    batches = length_grouped_batches(lengths, batch_size, random.Random(seed), group=4)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert sum(len(b) < batch_size for b in batches) <= -(-len(lengths) // (4 * batch_size))
