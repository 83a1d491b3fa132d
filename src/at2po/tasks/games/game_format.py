"""The game agent's text format: the prompt, the observation block, and a linear-time turn parser.

An episode is a prompt (the task, what the agent sees, the valid actions) followed by agent turns
and the game's observations:

    <think>the apple belongs in the fridge</think>
    <action>take apple</action>                                   agent turn (ends at </action>)
    <result>\\nYou are in the kitchen. …\\nValid actions: …\\n</result>\\n    observation (env)

A turn is read by one left-to-right scan over its tags (:func:`parse_turn`), found by a regex of
literal alternatives that never backtracks, and each tag is read once: the parser runs in time
linear in the length of the turn however the tags are nested or left open (the same style as
:mod:`at2po.tasks.agent_format`). The grammar of a valid turn is

    ws* [<think> text </think> ws*] <action> text </action> ws*

with the think block required unless ``require_think=False``; any other text outside the blocks,
a second action, a ``<result>`` written by the agent, or a tag left open is an invalid turn with a
stable problem code (:data:`PROBLEMS`) and the message the agent is shown. Inside ``<think>`` every
tag but ``</think>`` and ``<result>`` is text. The action text is stripped and its inner whitespace
collapsed to single spaces (:func:`normalize_command`); whether it is a valid action of the game
is the environment's question, not the parser's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from at2po.tasks.agent_format import chat_messages

STOP_STRINGS: tuple[str, ...] = ("</action>",)
"""Generation of a turn stops after the action block closes."""

TAG_TOKENS: tuple[str, ...] = (
    "<think>",
    "</think>",
    "<action>",
    "</action>",
    "<result>",
    "</result>",
)
"""The tags of the game format (one token each in the game policy's tokenizer)."""

_TAG = re.compile(r"<(/?)(think|action|result)>")
_SPACE = re.compile(r"\s+")

INSTRUCTION = """\
You play a text game. Each turn the game shows you where you are, what you carry and the \
valid actions.

In each turn, first think briefly inside <think> </think>, then write exactly one of the valid \
actions inside <action> </action> and stop. The game then answers inside <result> </result>.

Example of a turn:
<think>The apple goes in the fridge. I pick it up first.</think>
<action>take apple</action>"""

PROBLEMS: dict[str, str] = {
    "no_action": "No action found. End every turn with <action>one valid action</action>.",
    "empty_action": "The action is empty. Write one valid action between <action> and </action>.",
    "missing_think": "Think first: write <think>…</think> before the action.",
    "unclosed_think": "The thinking is not closed. Close <think> with </think> before the action.",
    "unbalanced_think": "Found </think> without a <think> before it.",
    "unclosed_action": "The action is not closed. Write <action>one valid action</action>.",
    "unopened_action": "Found </action> without an <action> before it.",
    "wrote_result": "Do not write <result> tags yourself: the game writes them.",
    "multiple_actions": "Write exactly one action per turn.",
    "multiple_think": "Think once per turn: one <think> </think> block, then the action.",
    "text_outside_tags": "Write nothing outside <think> </think> and <action> </action>.",
    "not_valid": "That is not one of the valid actions here. Copy one action from the list.",
}
"""Agent mistakes, with the note the agent is shown (``not_valid`` is the env's verdict)."""


@dataclass(frozen=True)
class GameAction:
    """What one agent turn asks for: ``command`` (normalised) when the format is valid, else
    ``problem`` (a key of :data:`PROBLEMS`) and an empty command."""

    command: str
    problem: str | None = None

    @property
    def valid_format(self) -> bool:
        return self.problem is None


def normalize_command(text: str) -> str:
    """``text`` stripped, inner whitespace runs collapsed to one space, lower-cased."""
    return _SPACE.sub(" ", text).strip().lower()


# Where the scanner stands.
_START, _THINK, _AFTER_THINK, _ACTION, _DONE = range(5)


def parse_turn(text: str, *, require_think: bool = True) -> GameAction:
    """Read one agent turn (only the text generated in it) with the grammar of the module
    docstring, in time linear in ``len(text)``."""
    state, position, content_start = _START, 0, 0
    command = ""
    for match in _TAG.finditer(text):
        tag, name = match.group(0), match.group(2)
        gap = text[position : match.start()]
        position = match.end()
        if state == _THINK:
            if name == "result":
                return GameAction("", "wrote_result")
            if tag == "</think>":
                state = _AFTER_THINK
            continue
        if state == _ACTION:
            if tag != "</action>":
                return GameAction("", "wrote_result" if name == "result" else "unclosed_action")
            command = normalize_command(text[content_start : match.start()])
            if not command:
                return GameAction("", "empty_action")
            state = _DONE
            continue
        problem = _outside_problem(state, tag, name, gap)
        if problem is not None:
            return GameAction("", problem)
        if tag == "<think>":
            state = _THINK
        else:  # <action>
            if state == _START and require_think:
                return GameAction("", "missing_think")
            state, content_start = _ACTION, match.end()
    return _verdict(state, command, text[position:])


def _outside_problem(state: int, tag: str, name: str, gap: str) -> str | None:
    """The problem of meeting ``tag`` (after the text ``gap``) outside any block, or None when
    it opens the next block of the grammar."""
    if state == _DONE:
        return "multiple_actions" if tag == "<action>" else _after_action(name)
    if name == "result":
        return "wrote_result"
    if gap.strip():
        return "text_outside_tags"
    if tag == "</think>":
        return "unbalanced_think"
    if tag == "</action>":
        return "unopened_action"
    if tag == "<think>" and state == _AFTER_THINK:
        return "multiple_think"
    return None


def _after_action(name: str) -> str:
    return "wrote_result" if name == "result" else "text_outside_tags"


def _verdict(state: int, command: str, tail: str) -> GameAction:
    """The reading once every tag is read; ``tail`` is the text after the last tag."""
    if state == _DONE:
        return GameAction(command) if not tail.strip() else GameAction("", "text_outside_tags")
    if state == _THINK:
        return GameAction("", "unclosed_think")
    if state == _ACTION:
        return GameAction("", "unclosed_action")
    return GameAction("", "no_action")


def format_actions(actions: Sequence[str]) -> str:
    """The valid actions as one line, in the game's order: ``Valid actions: a | b | c``."""
    return "Valid actions: " + " | ".join(actions)


def format_observation(body: str) -> str:
    """Game text as the agent sees it after a turn: ``"\\n<result>\\n" + body + "\\n</result>\\n"``;
    a literal ``</result>`` inside ``body`` is written ``< /result>``."""
    return "\n<result>\n" + body.replace("</result>", "< /result>") + "\n</result>\n"


def build_prompt_messages(
    task: str, first_view: str, *, system_role: bool = True
) -> list[dict[str, str]]:
    """Chat messages of one game: the instruction, then ``Task: …`` and the first view (what the
    agent sees, carries, and the valid actions)."""
    if not task.strip():
        raise ValueError("the game's task description is empty")
    user_text = f"Task: {task.strip()}\n{first_view}"
    return chat_messages(INSTRUCTION, user_text, system_role=system_role)
