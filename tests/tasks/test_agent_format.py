"""The agent format: prompt messages, the turn parser, the response grammar, answer extraction."""

import signal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from at2po.tasks.agent_format import (
    INSTRUCTION,
    PROBLEMS,
    STOP_STRINGS,
    Action,
    FormatCheck,
    build_prompt_messages,
    check_response,
    count_tool_calls,
    extract_final_answer,
    format_observation,
    parse_action,
    read_response,
    unwrap_boxed,
)

# (turn text, expected kind, expected query/answer for valid turns or problem code for invalid)
TURNS = [
    ("<search>Maren Tolvik</search>", "search", "Maren Tolvik"),
    (
        "<think>need birthplace</think>\n<search>  Maren Tolvik born \n</search>",
        "search",
        "Maren Tolvik born",
    ),
    ("Let me look.<search>a</search>", "search", "a"),
    ("<search>first <search>second</search>", "search", "second"),
    (
        "<think>I could write <search>x</search> or <answer>y</answer></think><search>q</search>",
        "search",
        "q",
    ),
    ("<python>print(1)</python><search>q</search>", "search", "q"),
    ("<search>q</search>\n", "search", "q"),
    ("<answer>Porto</answer>", "answer", "Porto"),
    ("<think>ok</think><answer> The answer is \\[ \\boxed{Porto} \\] </answer>", "answer", "Porto"),
    ("<answer>\\boxed{\\frac{1}{2}}</answer>", "answer", "\\frac{1}{2}"),
    ("<answer>\\boxed{Porto</answer>", "answer", "\\boxed{Porto"),
    ("<answer>Porto</answer> Hope that helps!", "answer", "Porto"),
    ("", "invalid", "no_action"),
    ("I think the answer is Porto.", "invalid", "no_action"),
    ("<think>hmm</think>", "invalid", "no_action"),
    ("<python>print(1)</python>", "invalid", "unknown_tool"),
    ("<think>x</think><lookup>Porto</lookup>\n", "invalid", "unknown_tool"),
    ("</lookup>", "invalid", "no_action"),
    ("<search></search>", "invalid", "empty_query"),
    ("<search> \n </search>", "invalid", "empty_query"),
    ("<answer></answer>", "invalid", "empty_answer"),
    ("<answer>\\boxed{}</answer>", "invalid", "empty_answer"),
    ("<search>Porto", "invalid", "unclosed_search"),
    ("<search>Porto<answer>x</answer>", "invalid", "unclosed_search"),
    ("<answer>Porto", "invalid", "unclosed_answer"),
    ("Porto</search>", "invalid", "unopened_search"),
    ("Porto</answer>", "invalid", "unopened_answer"),
    ("<think>still thinking <search>q</search>", "invalid", "unclosed_think"),
    ("done</think><search>q</search>", "invalid", "unbalanced_think"),
    ("<result>fake</result>", "invalid", "wrote_result"),
    ("<search>q</search><result>Doc 1: fake</result>", "invalid", "wrote_result"),
    ("<think>the <result> said so</think><answer>x</answer>", "invalid", "wrote_result"),
    ("<search>a</search><search>b</search>", "invalid", "multiple_actions"),
    ("<search>a</search><answer>b</answer>", "invalid", "multiple_actions"),
    ("<answer>a</answer><search>b</search>", "invalid", "multiple_actions"),
    ("<search>a</search><think>wait</think>", "invalid", "tags_after_action"),
]


@pytest.mark.parametrize(("text", "kind", "expected"), TURNS)
def test_parse_action_table(text, kind, expected):
    action = parse_action(text)
    assert action.kind == kind
    if kind == "invalid":
        assert action.problem == expected
        assert action.content  # the agent is told what went wrong
    else:
        assert action == Action(kind, expected)


def test_unknown_tool_message_names_the_tag():
    assert "<python>" in parse_action("<python>1+1</python>").content


def test_every_problem_code_is_reachable_from_the_table():
    reached = {expected for _, kind, expected in TURNS if kind == "invalid"}
    assert reached == set(PROBLEMS)


def test_parser_reads_the_turn_not_the_prompt():
    # The authors' extractor searched prompt+response; a turn with a stray </search> picked up the
    # prompt's example <search>. Our parser only sees the turn.
    assert parse_action("Porto birthplace</search>").problem == "unopened_search"


def test_stop_strings_end_actions():
    assert STOP_STRINGS == ("</search>", "</answer>")
    for stop in STOP_STRINGS:
        assert parse_action(f"<{stop[2:]}x{stop}").kind != "invalid"


@pytest.mark.parametrize(
    ("text", "inner"),
    [
        ("\\boxed{Porto}", "Porto"),
        ("a \\boxed{x} then \\boxed{y}", "y"),
        ("\\boxed{{a}{b}}", "{a}{b}"),
        ("\\boxed{a{b}", None),
        ("Porto", None),
        ("\\boxed{}", ""),
    ],
)
def test_unwrap_boxed(text, inner):
    assert unwrap_boxed(text) == inner


def test_prompt_messages_with_system_role():
    messages = build_prompt_messages("  Where was Lena born?  ", max_searches=4)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == "Question: Where was Lena born?"
    assert "at most 4 times" in messages[0]["content"]
    for tag in ("<think>", "<search>", "<answer>", "<result>", "\\boxed{...}"):
        assert tag in messages[0]["content"]


def test_prompt_messages_in_one_user_message():
    (message,) = build_prompt_messages("Where?", system_role=False)
    assert message["role"] == "user"
    assert message["content"].endswith("\n\nQuestion: Where?")
    assert "at most" not in message["content"]


def test_prompt_example_is_itself_valid_format():
    example = INSTRUCTION[INSTRUCTION.index("<think>First") :]
    assert check_response(example).problem is None


@pytest.mark.parametrize("bad", [{"question": " "}, {"question": "Q?", "max_searches": 0}])
def test_prompt_messages_reject_bad_input(bad):
    with pytest.raises(ValueError, match=r"question|max_searches"):
        build_prompt_messages(**bad)


def test_format_observation_layout_and_escape():
    assert format_observation("Doc 1: x") == " <result>\nDoc 1: x\n</result>"
    assert format_observation("a </result> b") == " <result>\na < /result> b\n</result>"


OBS = format_observation("Doc 1: Porto")

RESPONSES = [
    ("<answer>Porto</answer>", None, 0, "Porto"),
    (
        f"<think>a</think><search>q</search>{OBS}<think>b</think><answer>Porto</answer>",
        None,
        1,
        "Porto",
    ),
    (
        f"<search>q</search>{OBS}<search>r</search>{OBS}<answer>\\boxed{{Porto}}</answer>\n",
        None,
        2,
        "Porto",
    ),
    (f"<search>q</search> (waiting){OBS}<answer>x</answer>", None, 1, "x"),
    ("", "no_answer", 0, None),
    (f"<search>q</search>{OBS}", "no_answer", 1, None),
    ("<search>q</search>", "search_without_result", 0, None),
    ("<search>q</search><answer>x</answer>", "search_without_result", 0, None),
    (f"chat{OBS}<answer>x</answer>", "result_without_search", 0, None),
    (f"<think>hmm{OBS}</think><answer>x</answer>", "result_in_think", 0, None),
    ("<answer>x</answer><answer>y</answer>", "tags_after_answer", 0, None),
    ("<answer>x</answer><think>", "tags_after_answer", 0, None),
    (f"<search>q</search>{OBS[:-9]}", "unclosed_result", 0, None),
    ("<think>x", "unclosed_think", 0, None),
    ("<answer>x", "unclosed_answer", 0, None),
    (f"<search></search>{OBS}<answer>x</answer>", "empty_query", 0, None),
]


@pytest.mark.parametrize(("text", "problem", "tool_calls", "answer"), RESPONSES)
def test_check_response_table(text, problem, tool_calls, answer):
    check = check_response(text)
    assert (check.problem, check.tool_calls, check.answer) == (problem, tool_calls, answer)


def test_extract_final_answer_is_lenient():
    assert extract_final_answer(f"blah{OBS}<answer>Porto</answer>") == "Porto"
    assert extract_final_answer("<answer>a</answer><answer>\\boxed{b}</answer>") == "b"
    assert extract_final_answer("<think><answer>no</answer></think>") is None
    assert extract_final_answer(format_observation("<answer>no</answer>")) is None
    assert extract_final_answer("<answer> </answer>") is None


def test_count_tool_calls_skips_thinking():
    text = f"<think><search>a</search> <result>x</result></think><search>b</search>{OBS}"
    assert count_tool_calls(text) == 1


# Agent text built from tags, whole blocks and words, plus arbitrary text.
FRAGMENTS = st.sampled_from(
    [
        "<think>",
        "</think>",
        "<think>plan</think>",
        "<search>",
        "</search>",
        "<search>Porto</search>",
        "<answer>",
        "</answer>",
        "<answer>Porto</answer>",
        "<result>",
        "</result>",
        "<python>x</python>",
        "\\boxed{",
        "}",
        "Porto",
        " ",
        "\n",
        "<",
        "/",
        ">",
    ]
)
WELL_FORMED = st.builds(
    "{}{}{}".format,
    st.text("ab \n", max_size=5),
    st.sampled_from(["", "<think>plan</think>", "<think>a <search> b</think>\n"]),
    st.sampled_from(
        ["<search>Porto</search>", "<answer>Porto</answer>", "<answer>\\boxed{P}</answer>"]
    ),
)
TURN_TEXT = st.one_of(
    st.lists(FRAGMENTS, max_size=8).map("".join), st.text(max_size=40), WELL_FORMED
)


@settings(max_examples=400, deadline=None)
@given(turns=st.lists(TURN_TEXT, min_size=1, max_size=5))
# an observation swallowed by thinking left open in an earlier turn
@example(turns=["<think>", "</think><search>q</search>", "<answer>a</answer>"])
def test_turn_verdicts_agree_with_the_response_grammar(turns):
    """Turns the parser accepts, ending with an answer, form a valid response; a response with a
    rejected turn is never valid (observations are inserted as the environment does)."""
    actions = [parse_action(text) for text in turns]
    response = "".join(
        text + (format_observation("Doc 1: x") if action.kind != "answer" else "")
        for text, action in zip(turns, actions, strict=True)
    )
    valid = check_response(response).problem is None
    all_accepted = all(a.kind == "search" for a in actions[:-1]) and actions[-1].kind == "answer"
    if all_accepted:
        assert valid
        assert extract_final_answer(response) == actions[-1].content
    if any(a.kind == "invalid" for a in actions):
        assert not valid


# Passages may quote any tag except </result> (format_observation escapes that one).
QUOTING_OBS = format_observation("Doc 1: the tag <think> opens <answer>no</answer> <search>")


@pytest.mark.parametrize(
    ("text", "tool_calls"),
    [
        # text between </search> and the observation: the grammar allows free text there
        (f"<search>q</search> (waiting){OBS}<answer>x</answer>", 1),
        # a passage quoting <think>, and a later </think> of the agent: no block spans them
        (
            f"<search>a</search>{QUOTING_OBS}<search>b</search>{OBS}"
            "<think>done</think><answer>x</answer>",
            2,
        ),
    ],
)
def test_count_tool_calls_agrees_with_the_grammar(text, tool_calls):
    assert check_response(text).problem is None
    assert check_response(text).tool_calls == tool_calls
    assert count_tool_calls(text) == tool_calls


def test_lenient_readings_go_on_past_a_format_problem():
    # turn 1 leaves <think> open (the env answers with an error observation), turn 2 searches,
    # turn 3 answers: the grammar stops at the observation, the lenient readings do not
    text = f"<think>hmm{OBS}<search>q</search>{OBS}<answer>Porto</answer>"
    check = check_response(text)
    assert (check.problem, check.tool_calls, check.answer) == ("result_in_think", 0, None)
    assert count_tool_calls(text) == 1
    assert extract_final_answer(text) == "Porto"


def test_read_response_gives_all_three_readings():
    text = f"<search>q</search>{OBS}<answer>\\boxed{{Porto}}</answer>"
    reading = read_response(text)
    assert reading.check == check_response(text) == FormatCheck(None, 1, 0, "Porto")
    assert (reading.final_answer, reading.tool_calls) == ("Porto", 1)


PASSAGE = st.lists(FRAGMENTS, max_size=6).map("".join)
FREE_TEXT = st.text("ab ?\n", max_size=4)


@st.composite
def well_formed_responses(draw):
    """A valid response with a known number of searches: searches with free text and closed
    thinking around them, passages quoting tags, then one answer."""
    searches = draw(st.integers(0, 4))
    parts = []
    for _ in range(searches):
        parts += [
            draw(FREE_TEXT),
            draw(st.sampled_from(["", "<think>why <answer> x</think>"])),
            "<search>Porto</search>",
            draw(FREE_TEXT),
            format_observation(draw(PASSAGE)),
        ]
    parts += [draw(st.sampled_from(["", "<think>so</think>"])), "<answer>Porto</answer>"]
    return searches, "".join(parts) + draw(FREE_TEXT)


@settings(max_examples=300, deadline=None)
@given(case=well_formed_responses())
def test_count_tool_calls_counts_the_searches_of_a_valid_response(case):
    searches, text = case
    check = check_response(text)
    assert (check.problem, check.tool_calls, check.answer) == (None, searches, "Porto")
    assert count_tool_calls(text) == searches
    assert extract_final_answer(text) == "Porto"


@settings(max_examples=400, deadline=None)
@given(text=st.lists(st.one_of(FRAGMENTS, st.just(OBS)), max_size=12).map("".join))
def test_lenient_readings_agree_with_the_grammar_on_tag_soup(text):
    """Up to the grammar's first problem both read the same; after it only the lenient count
    goes on, so it is never smaller, and equal (as is the answer) when there is no problem."""
    check = check_response(text)
    assert count_tool_calls(text) >= check.tool_calls
    if check.problem is None:
        assert count_tool_calls(text) == check.tool_calls
        assert extract_final_answer(text) == check.answer


class _Deadline(Exception):
    pass


def _raise_deadline(signum, frame):
    raise _Deadline


MIB = 1 << 20
ADVERSARIAL = {
    "think": "<think>" * (MIB // 7),
    "answer": "<answer>" * (MIB // 8),
    "search": "<search>" * (MIB // 8),
    "result": "<result>" * (MIB // 8),
    "slash": "</" * (MIB // 2),
    "mixed": "<think><answer><search><result></think>x</answer></search>" * (MIB // 58),
    "closed_answers": "<answer>a</answer>" * (MIB // 18),
    "unknown_close": "</a> " * (MIB // 5),
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL)
@pytest.mark.parametrize(
    "parser", [parse_action, check_response, extract_final_answer, count_tool_calls]
)
def test_every_parser_reads_a_mebibyte_of_adversarial_tags(parser, text):
    """A guard, not a timing: the old backtracking regexes took minutes on a mebibyte of
    ``<think>`` (12.6 s on 109 KiB); the linear scan takes well under a second. 60 s is far
    above either machine noise or a linear parser, and far below a quadratic one."""
    previous = signal.signal(signal.SIGALRM, _raise_deadline)
    signal.alarm(60)
    try:
        parser(text)
    except _Deadline:
        pytest.fail(f"{parser.__name__} did not finish a {len(text)}-character text in 60 s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
