"""Tail-window stop-string matching agrees with decoding the whole generated text."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from at2po.rollout.stop_strings import StopStringMatcher

STOPS = ("</search>", "</answer>", "é>")
PIECES = ("</", "search", ">", "</answer>", "é", "x", " ", "<answer>", "res")


@pytest.fixture(scope="module")
def piece_ids(tiny_lm):
    _, tokenizer = tiny_lm
    ids = sorted({i for piece in PIECES for i in tokenizer.encode(piece)})
    # Lone bytes of "é" make partial UTF-8 tails, which must not hide a later match.
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    return ids


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_first_match_equals_first_prefix_whose_full_text_contains_a_stop(tiny_lm, piece_ids, data):
    _, tokenizer = tiny_lm
    generated = data.draw(st.lists(st.sampled_from(piece_ids), min_size=1, max_size=25))
    matcher = StopStringMatcher(tokenizer, STOPS)
    found = next((k for k in range(1, len(generated) + 1) if matcher.match(generated[:k])), None)
    expected = next(
        (
            k
            for k in range(1, len(generated) + 1)
            if any(s in tokenizer.decode(generated[:k]) for s in STOPS)
        ),
        None,
    )
    assert found == expected


def test_match_names_the_stop_string_and_ignores_older_text(tiny_lm):
    _, tokenizer = tiny_lm
    matcher = StopStringMatcher(tokenizer, STOPS)
    text = tokenizer.encode("x x </search>")
    assert matcher.match(text) == "</search>"
    assert matcher.match(text[:-1]) is None
    assert matcher.match(tokenizer.encode("<answer>x</answer>")) == "</answer>"
    assert StopStringMatcher(tokenizer, ()).match(text) is None


def test_stop_string_spread_over_single_byte_tokens(tiny_lm):
    _, tokenizer = tiny_lm
    lone_bytes = [tokenizer.convert_tokens_to_ids(c) for c in ("Ã", "©")]  # "é" = C3 A9
    generated = [*tokenizer.encode("x"), *lone_bytes, *tokenizer.encode(">")]
    assert tokenizer.decode(generated) == "xé>"
    matcher = StopStringMatcher(tokenizer, ("é>",))
    assert matcher.match(generated) == "é>"
    assert matcher.match(generated[:-1]) is None
