"""Answer matching and reward schemes, on worked examples."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from at2po.tasks.agent_format import format_observation
from at2po.tasks.rewards import (
    REWARD_SCHEMES,
    RewardConfig,
    exact_match,
    format_valid,
    normalize_answer,
    score_response,
    token_f1,
)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple, a pear ", "apple pear"),
        ("Theater", "theater"),  # "the" only as a whole word
        ("U.S.A.", "usa"),
        ("rock-and-roll", "rockandroll"),
        ("A", ""),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_exact_match_over_aliases():
    assert exact_match("the Porto", ["Oporto", "Porto"]) == 1.0
    assert exact_match("Porto city", ["Porto"]) == 0.0
    assert exact_match("", ["Porto"]) == 0.0


def test_token_f1_worked_example():
    # prediction tokens: new york city; gold: new york -> overlap 2, P = 2/3, R = 1, F1 = 0.8
    assert token_f1("New York City", ["New York"]) == pytest.approx(0.8)
    # best over golden answers: "york" alone gives P = 1/3, R = 1 -> 0.5; "new york city" gives 1
    assert token_f1("New York City", ["York", "new york city"]) == pytest.approx(1.0)
    # repeated tokens count with multiplicity: "x y y" vs "y y z": overlap 2, P = R = 2/3
    assert token_f1("x y y", ["y y z"]) == pytest.approx(2 / 3)
    assert token_f1("Porto", ["Lisbon"]) == 0.0
    assert token_f1("Porto", []) == 0.0


def test_yes_no_only_match_exactly():
    assert token_f1("yes", ["yes"]) == 1.0
    assert token_f1("yes", ["no"]) == 0.0
    assert token_f1("yes it is", ["yes"]) == 0.0
    assert token_f1("no", ["no way"]) == 0.0
    assert token_f1("noanswer", ["no answer"]) == 0.0


@given(st.text(max_size=30), st.lists(st.text(max_size=30), min_size=1, max_size=3))
def test_f1_bounds_and_em_implies_f1(prediction, golds):
    f1 = token_f1(prediction, golds)
    assert 0.0 <= f1 <= 1.0
    if exact_match(prediction, golds) and normalize_answer(prediction):
        assert f1 == 1.0


OBS = format_observation("Doc 1: Porto is a city.")
SEARCH = "<search>Lena birthplace</search>"
GOOD = f"<think>look up</think>{SEARCH}{OBS}<answer>\\boxed{{Porto}}</answer>"
GOOD_WRONG = f"<search>Lena birthplace</search>{OBS}<answer>Lisbon</answer>"
PARTIAL = f"<search>Lena birthplace</search>{OBS}<answer>Porto city</answer>"
BAD_FORMAT_RIGHT = "<search>Lena birthplace</search><answer>Porto</answer>"
NO_ANSWER = f"<search>Lena birthplace</search>{OBS}"

# response → (at2po, em, f1, em_with_format_penalty) with the default penalty 0.2
EXPECTED = {
    GOOD: (1.0, 1.0, 1.0, 1.0),
    GOOD_WRONG: (0.0, 0.0, 0.0, 0.0),
    PARTIAL: (0.0, 0.0, pytest.approx(2 / 3), 0.0),
    BAD_FORMAT_RIGHT: (-1.0, 1.0, 1.0, 0.8),
    NO_ANSWER: (-1.0, 0.0, 0.0, -0.2),
}


@pytest.mark.parametrize("response", list(EXPECTED))
def test_schemes_on_worked_responses(response):
    rewards = tuple(
        score_response(response, ["Porto", "Oporto"], RewardConfig(scheme=scheme)).reward
        for scheme in ("at2po", "em", "f1", "em_with_format_penalty")
    )
    assert rewards == EXPECTED[response]


def test_scores_hold_the_named_sub_scores():
    result = score_response(GOOD, ["Porto"])
    assert result.scores == {
        "em": 1.0,
        "f1": 1.0,
        "format_ok": 1.0,
        "answered": 1.0,
        "tool_calls": 1.0,
    }
    no_answer = score_response(NO_ANSWER, ["Porto"]).scores
    assert (no_answer["answered"], no_answer["format_ok"], no_answer["tool_calls"]) == (0, 0, 1)


def test_scores_count_searches_whose_passage_quotes_think():
    # the first passage quotes <think>; the agent later closes its own thinking: two searches,
    # valid format (the old regexes counted one, a <think>…</think> spanning both turns)
    quoting = format_observation("Doc 1: the <think> tag")
    response = (
        f"<search>a</search>{quoting}<search>b</search>{format_observation('Doc 1: Porto')}"
        "<think>found</think><answer>Porto</answer>"
    )
    scores = score_response(response, ["Porto"]).scores
    assert (scores["tool_calls"], scores["format_ok"], scores["em"]) == (2.0, 1.0, 1.0)


def test_require_think():
    assert format_valid(GOOD_WRONG)
    assert not format_valid(GOOD_WRONG, require_think=True)
    assert format_valid(GOOD, require_think=True)
    strict = RewardConfig(require_think=True)
    assert score_response(GOOD_WRONG.replace("Lisbon", "Porto"), ["Porto"], strict).reward == -1.0


def test_format_penalty_is_configurable():
    config = RewardConfig(scheme="em_with_format_penalty", format_penalty=0.5)
    assert score_response(BAD_FORMAT_RIGHT, ["Porto"], config).reward == 0.5


def test_reward_config_rejects_unknown_scheme_and_negative_penalty():
    assert set(REWARD_SCHEMES) == {"at2po", "em", "f1", "em_with_format_penalty"}
    with pytest.raises(ValueError, match="choose one of at2po, em, f1"):
        RewardConfig(scheme="exact")
    with pytest.raises(ValueError, match="format_penalty"):
        RewardConfig(format_penalty=-1)


def test_score_response_needs_golden_answers():
    with pytest.raises(ValueError, match="golden_answers"):
        score_response(GOOD, [])
    with pytest.raises(ValueError, match="golden_answers"):
        score_response(GOOD, "Porto")
