"""The game turn parser: hand cases, generated cases against an independent reading, linearity."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from at2po.tasks.games.game_format import PROBLEMS, GameAction, normalize_command, parse_turn


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>go</think><action>take apple</action>", GameAction("take apple")),
        ("  <think>a <b> c</think>\n<action>  Take   Apple </action>\n", GameAction("take apple")),
        (
            "<think><action>x</action></think><action>look around</action>",
            GameAction("look around"),
        ),
        ("<action>take apple</action>", GameAction("", "missing_think")),
        ("<think>x</think>", GameAction("", "no_action")),
        ("", GameAction("", "no_action")),
        ("<think>x", GameAction("", "unclosed_think")),
        ("<think>x</think><action>take", GameAction("", "unclosed_action")),
        ("<think>x</think><action> </action>", GameAction("", "empty_action")),
        ("<think>x</think>so<action>a</action>", GameAction("", "text_outside_tags")),
        ("hi<think>x</think><action>a</action>", GameAction("", "text_outside_tags")),
        ("<think>x</think><action>a</action> bye", GameAction("", "text_outside_tags")),
        (
            "<think>x</think><action>a</action><action>b</action>",
            GameAction("", "multiple_actions"),
        ),
        ("<think>x</think><think>y</think><action>a</action>", GameAction("", "multiple_think")),
        ("</think><action>a</action>", GameAction("", "unbalanced_think")),
        ("<think>x</think></action>", GameAction("", "unopened_action")),
        ("<think>x<result>y</think>", GameAction("", "wrote_result")),
        ("<think>x</think><action>a<result></action>", GameAction("", "wrote_result")),
        ("<think>x</think><action>a<think></action>", GameAction("", "unclosed_action")),
    ],
)
def test_hand_cases(text, expected):
    assert parse_turn(text) == expected


def test_the_think_block_is_optional_when_not_required():
    assert parse_turn("<action>take apple</action>", require_think=False) == GameAction(
        "take apple"
    )


def test_every_problem_has_a_message():
    codes = {"no_action", "missing_think", "unclosed_think", "unclosed_action", "empty_action"}
    assert codes <= set(PROBLEMS)


_piece = st.sampled_from(
    ["<think>", "</think>", "<action>", "</action>", "<result>", " ", "a", "\n"]
)


def _reference(text: str, require_think: bool = True) -> str | None:
    """An independent reading of valid turns: the command, or None when the turn is invalid.

    Valid iff ws* [<think> T </think> ws*] <action> A </action> ws* where T holds no </think> or
    <result>, A holds no tag and is non-blank.
    """
    rest = text.lstrip()
    if rest.startswith("<think>"):
        end = rest.find("</think>")
        if end < 0 or "<result>" in rest[:end] or "</result>" in rest[:end]:
            return None
        rest = rest[end + len("</think>") :].lstrip()
    elif require_think:
        return None
    if not rest.startswith("<action>"):
        return None
    end = rest.find("</action>")
    if end < 0:
        return None
    command = rest[len("<action>") : end]
    tags = ("<think>", "</think>", "<action>", "<result>", "</result>")
    if any(tag in command for tag in tags) or not command.strip():
        return None
    if rest[end + len("</action>") :].strip():
        return None
    return normalize_command(command)


@given(st.lists(_piece, max_size=14).map("".join))
def test_valid_turns_agree_with_an_independent_reading(text):
    action = parse_turn(text)
    expected = _reference(text)
    assert (action.command if action.valid_format else None) == expected
    assert (action.problem is None) == (expected is not None)
    if action.problem is not None:
        assert action.problem in PROBLEMS and action.command == ""


@given(st.text(max_size=40), st.text(alphabet="abc xyz", min_size=1, max_size=20))
def test_wrapped_commands_read_back(thought, command):
    thought = thought.replace("<", "(")
    text = f"<think>{thought}</think>\n<action>{command}</action>"
    expected = normalize_command(command)
    assert parse_turn(text) == (
        GameAction(expected) if expected else GameAction("", "empty_action")
    )


def test_a_mebibyte_of_adversarial_tags_parses():
    """Open tags without end: a backtracking parser would take quadratic time or more here."""
    text = "<think>x</think><action>" + "<action" * (1 << 17)
    assert parse_turn(text).problem == "unclosed_action"
    assert parse_turn("<think>" + "</thin" * (1 << 17)).problem == "unclosed_think"
