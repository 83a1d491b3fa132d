"""The search agent's text format: the prompt, the tags, and one grammar that reads them.

An episode is a prompt followed by the *response*: agent turns interleaved with observations.

    <think>reasoning</think> <search>query</search>          agent turn (ends at the stop string)
     <result>\\nDoc 1: …\\n</result>                             observation (inserted by the env)
    <think>reasoning</think> <answer>final answer</answer>   last agent turn

Tags: ``<think>…</think>`` (optional reasoning; any number), ``<search>query</search>`` (a tool
call), ``<answer>…</answer>`` (the final answer; a ``\\boxed{…}`` inside is unwrapped, braces
matched), ``<result>…</result>`` (written only by the environment). Generation stops at
:data:`STOP_STRINGS`, so a turn ends with ``</search>``, ``</answer>``, EOS or the token budget.

One state machine (:func:`_scan`) reads both a single turn (:func:`parse_action`) and a whole
response (:func:`check_response`, and the lenient :func:`extract_final_answer` and
:func:`count_tool_calls`, which read on past format problems). It finds the tags with one regex
that never backtracks and reads each tag once, so every parser here runs in time linear in the
length of its text, however the tags are nested or left open (:func:`parse_action` also matches
the turn's trailing closing tag, for its unknown-tool message: linear too). Tested on a mebibyte
of adversarial tags per parser, and timed at n and 10·n by ``bench/parsers.py``.

Inside ``<think>`` every tag is ignored except ``</think>`` and ``<result>``/``</result>`` (an
error); inside ``<result>`` every tag is ignored; free text may hold any other text, including
tags we do not know. Because both readers are the same machine, a response made of turns that
:func:`parse_action` accepted, ending in an answer, always passes :func:`check_response`, and a
response holding any rejected turn always fails it.

Only the turn text is parsed, never the prompt: the authors' code searched prompt+response for the
last ``<search>`` and could pick up the prompt's example (reference spec §6 item 15).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

STOP_STRINGS: tuple[str, ...] = ("</search>", "</answer>")

_TAG = re.compile(r"<(/?)(think|search|answer|result)>")
_TRAILING_UNKNOWN_BLOCK = re.compile(r"</([A-Za-z][\w.-]*)>\s*\Z")
_KNOWN_TAGS = frozenset({"think", "search", "answer", "result"})
_BOXED = "\\boxed{"

INSTRUCTION = """\
You answer questions by searching a collection of documents. You work in turns.

In each turn, first think briefly inside <think> </think>, then do exactly one of these:
- Search: write <search>your query</search> and stop. The search engine then shows you the \
best matching documents inside <result> </result>.
- Answer: write <answer>your final answer</answer> and stop. This ends the conversation.

Guidelines:
- A query is a few keywords about one fact: a name and what you want to know about it.
- A question may need several facts. Look them up one search at a time, using what earlier \
results told you.
- Answer only with facts you have read in the results.{limit_line}
- The answer is short: a name, a place, a date, a number, or yes or no. You may write it as \
\\boxed{{...}} inside the answer tags.

Example of two turns (the result is written by the search engine, not by you):
<think>First I need to know where the author was born.</think>
<search>Lena Vardi birthplace</search>
<result>
Doc 1: "Lena Vardi" Lena Vardi, born in Porto, wrote ...
</result>
<think>The result says Porto.</think>
<answer>Porto</answer>"""

ActionKind = Literal["search", "answer", "invalid"]


@dataclass(frozen=True)
class Action:
    """What one agent turn asks for.

    ``kind="search"``: ``content`` is the query (stripped). ``kind="answer"``: ``content`` is the
    final answer (stripped, ``\\boxed{…}`` unwrapped). ``kind="invalid"``: ``content`` is the
    message the agent is shown and ``problem`` a stable code for metrics (see ``PROBLEMS``).
    """

    kind: ActionKind
    content: str
    problem: str | None = None


PROBLEMS: dict[str, str] = {
    "no_action": "No action found. End every turn with <search>query</search> or "
    "<answer>final answer</answer>.",
    "unknown_tool": "<{tool}> is not a tool here. The only tool is <search>query</search>; "
    "finish with <answer>final answer</answer>.",
    "empty_query": "The search query is empty. Write a few keywords between <search> and "
    "</search>.",
    "empty_answer": "The answer is empty. Write the answer between <answer> and </answer>.",
    "unclosed_search": "The search query is not closed. Write <search>query</search>, closing "
    "the tag before anything else.",
    "unclosed_answer": "The answer is not closed. Write <answer>final answer</answer>.",
    "unopened_search": "Found </search> without a <search> before it in this turn. Write "
    "<search>query</search>.",
    "unopened_answer": "Found </answer> without an <answer> before it in this turn. Write "
    "<answer>final answer</answer>.",
    "unclosed_think": "The thinking is not closed. Close <think> with </think> before you "
    "search or answer.",
    "unbalanced_think": "Found </think> without a <think> before it. Open thinking with "
    "<think> and close it with </think>.",
    "wrote_result": "Do not write <result> tags yourself: the search engine writes them after "
    "your </search>.",
    "multiple_actions": "Do one thing per turn: either one <search>query</search> or one "
    "<answer>final answer</answer>, then stop.",
    "tags_after_action": "Stop right after </search> or </answer>; write nothing else in that "
    "turn.",
}
"""Agent mistakes found in a single turn, with the observation text the agent is shown."""


@dataclass(frozen=True)
class FormatCheck:
    """The grammar's verdict on a whole response: ``problem`` is None when the format is valid.

    ``tool_calls`` counts ``<search>…</search> <result>…</result>`` pairs read before the verdict,
    ``think_blocks`` closed ``<think>…</think>`` blocks, ``answer`` the final answer if reached.
    """

    problem: str | None
    tool_calls: int
    think_blocks: int
    answer: str | None


@dataclass(frozen=True)
class ResponseReading:
    """Everything one pass of the grammar reads from a response (see :func:`read_response`).

    ``check`` is the format verdict (:func:`check_response`); ``final_answer`` and
    ``tool_calls`` are read leniently, past any format problem (:func:`extract_final_answer`,
    :func:`count_tool_calls`).
    """

    check: FormatCheck
    final_answer: str | None
    tool_calls: int


def build_prompt_messages(
    question: str, *, max_searches: int | None = None, system_role: bool = True
) -> list[dict[str, str]]:
    """Chat messages for one question: the instruction, then ``Question: …``.

    ``max_searches`` adds the search budget to the instruction. ``system_role=False`` puts the
    instruction and the question in a single user message, for chat templates without a system
    role.
    """
    if not question.strip():
        raise ValueError("the question is empty; every example needs question text")
    if max_searches is not None and max_searches < 1:
        raise ValueError(f"max_searches must be at least 1 (or None), got {max_searches}")
    limit_line = "" if max_searches is None else f"\n- You may search at most {max_searches} times."
    instruction = INSTRUCTION.format(limit_line=limit_line)
    return chat_messages(instruction, f"Question: {question.strip()}", system_role=system_role)


def chat_messages(instruction: str, user_text: str, *, system_role: bool) -> list[dict[str, str]]:
    """The instruction as a system message before ``user_text``, or (``system_role=False``, for
    chat templates without a system role) prepended to it in one user message."""
    if system_role:
        return [
            {"role": "system", "content": instruction},
            {"role": "user", "content": user_text},
        ]
    return [{"role": "user", "content": f"{instruction}\n\n{user_text}"}]


def format_observation(text: str) -> str:
    """Wrap environment text as the agent sees it: ``" <result>\\n" + text + "\\n</result>"``.

    A literal ``</result>`` inside ``text`` (a passage quoting it) is written ``< /result>`` so
    it cannot close the block early.
    """
    return " <result>\n" + text.replace("</result>", "< /result>") + "\n</result>"


def unwrap_boxed(text: str) -> str | None:
    """Inner text of the last ``\\boxed{…}`` in ``text`` (braces matched), else None.

    None also when the last ``\\boxed{`` is never closed.
    """
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth = 0
    begin = start + len(_BOXED)
    for position in range(begin, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            if depth == 0:
                return text[begin:position]
            depth -= 1
    return None


def _answer_text(block_content: str) -> str:
    boxed = unwrap_boxed(block_content)
    return (boxed if boxed is not None else block_content).strip()


def parse_action(turn_text: str) -> Action:
    """Read one agent turn (only the text the agent generated in it, never the prompt).

    The action is the single ``<search>…</search>`` or ``<answer>…</answer>`` block of the turn;
    the query is the text after the *last* ``<search>`` before ``</search>``. Free text around
    it is allowed; closed ``<think>`` blocks are skipped. Everything else is an invalid action
    whose ``content`` tells the agent what to fix (``PROBLEMS``).
    """
    scan = _scan(turn_text, single_turn=True)
    if scan.problem is not None:
        return _invalid(scan.problem)
    if scan.state == _AFTER_SEARCH:
        return Action("search", scan.content)
    if scan.state == _AFTER_ANSWER:
        return Action("answer", scan.content)
    if scan.state == _FREE:
        unknown = _TRAILING_UNKNOWN_BLOCK.search(turn_text)
        tool = unknown.group(1) if unknown is not None else ""
        if tool and tool not in _KNOWN_TAGS and f"<{tool}>" in turn_text[: unknown.start()]:
            return Action("invalid", PROBLEMS["unknown_tool"].format(tool=tool), "unknown_tool")
        return _invalid("no_action")
    return _invalid(f"unclosed_{_STATE_TAG[scan.state]}")


def check_response(response_text: str) -> FormatCheck:
    """Check a whole response (agent turns and observations, without the prompt).

    Valid: zero or more ``<search>q</search>`` each followed by a ``<result>…</result>``, with
    free text and closed ``<think>`` blocks around them, then exactly one non-empty
    ``<answer>…</answer>`` with no tag after it. Problems besides those of ``PROBLEMS``:
    ``no_answer``, ``result_without_search``, ``search_without_result`` (a tag other than
    ``<result>`` after ``</search>``), ``result_in_think``, ``tags_after_answer``,
    ``unclosed_result``.
    """
    return read_response(response_text).check


def extract_final_answer(response_text: str) -> str | None:
    """The final answer of a response, leniently: the last ``<answer>…</answer>`` block the
    grammar reads when it reads on past every mistake (so never one inside ``<think>`` or
    ``<result>``), ``\\boxed{…}`` unwrapped, stripped; None if absent or empty. On a response
    that passes :func:`check_response` it equals that check's answer.
    """
    return read_response(response_text).final_answer


def count_tool_calls(response_text: str) -> int:
    """How many ``<search>…</search>`` are answered by a ``<result>…</result>``, as the grammar
    reads them when it reads on past every mistake (so never inside ``<think>`` or ``<result>``).

    On a response that passes :func:`check_response` it equals that check's ``tool_calls``; on
    any response it is at least that (the check stops counting at the first problem).
    """
    return read_response(response_text).tool_calls


def read_response(response_text: str) -> ResponseReading:
    """One pass of the grammar over a response: the format verdict and the lenient readings.

    :func:`check_response`, :func:`extract_final_answer` and :func:`count_tool_calls` each give
    one field of this; call it directly to get all three from a single scan.
    """
    scan = _scan(response_text, single_turn=False)
    problem = scan.problem
    if problem is None and scan.state != _AFTER_ANSWER:
        problem = _UNFINISHED_RESPONSE[scan.state]
    answer = scan.content if scan.state == _AFTER_ANSWER and problem is None else None
    check = FormatCheck(problem, scan.tool_calls, scan.think_blocks, answer)
    return ResponseReading(check, scan.last_answer or None, scan.all_tool_calls)


def _invalid(problem: str) -> Action:
    return Action("invalid", PROBLEMS[problem], problem)


# States of the grammar. _UNASKED_RESULT: a <result> the grammar rejected, read past leniently.
_FREE, _THINK, _SEARCH, _ANSWER, _AFTER_SEARCH, _RESULT, _AFTER_ANSWER, _UNASKED_RESULT = range(8)
_STATE_TAG = {_THINK: "think", _SEARCH: "search", _ANSWER: "answer"}
_UNFINISHED_RESPONSE = {
    _FREE: "no_answer",
    _THINK: "unclosed_think",
    _SEARCH: "unclosed_search",
    _ANSWER: "unclosed_answer",
    _AFTER_SEARCH: "search_without_result",
    _RESULT: "unclosed_result",
}
_OPENING_TAGS = ("<think>", "<search>", "<answer>")


@dataclass(frozen=True)
class _Scan:
    """What :func:`_scan` read.

    ``problem``, ``state``, ``content``, ``tool_calls`` and ``think_blocks`` are the grammar's
    reading up to its first problem (or the end). ``all_tool_calls`` and ``last_answer`` are the
    lenient reading of the whole text (responses only): searches answered by a result and the
    content of the last closed answer block, reading on past every problem.
    """

    problem: str | None
    state: int
    content: str
    tool_calls: int
    think_blocks: int
    all_tool_calls: int
    last_answer: str | None


class _Grammar:
    """The tag grammar as a state machine that reads one tag at a time."""

    def __init__(self, text: str, *, single_turn: bool) -> None:
        self.text, self.single_turn = text, single_turn
        self.state, self.content_start, self.content = _FREE, 0, ""
        self.tool_calls = self.think_blocks = 0
        self.last_answer: str | None = None

    def read(self, match: re.Match[str]) -> str | None:
        """Move on by one tag; the problem code when the tag breaks the grammar, else None.

        A tag that breaks the grammar leaves the state as it was.
        """
        tag, name = match.group(0), match.group(2)
        state = self.state
        if state in (_RESULT, _UNASKED_RESULT):
            if tag == "</result>":
                self.state, self.tool_calls = _FREE, self.tool_calls + (state == _RESULT)
        elif state == _THINK:
            if name == "result":
                return "wrote_result" if self.single_turn else "result_in_think"
            if tag == "</think>":
                self.state, self.think_blocks = _FREE, self.think_blocks + 1
        elif state in (_SEARCH, _ANSWER):
            return self._read_in_action(match)
        elif state == _AFTER_SEARCH and not self.single_turn:
            if tag != "<result>":
                return "search_without_result"
            self.state = _RESULT
        elif state in (_AFTER_SEARCH, _AFTER_ANSWER):
            return self._tag_after_action(tag, name)
        else:
            return self._read_free(match)
        return None

    def verdict(self, problem: str | None) -> tuple[str | None, int, str, int, int]:
        """The grammar's reading now, ending in ``problem``: the first five fields of _Scan."""
        return problem, self.state, self.content, self.tool_calls, self.think_blocks

    def resume_at(self, match: re.Match[str]) -> None:
        """Read on past a problem at this tag as if a new turn began there: an opening tag
        opens its block, a ``<result>`` is skipped to its ``</result>``, any other tag is text.
        """
        self.state = _FREE
        if match.group(0) == "<result>":
            self.state = _UNASKED_RESULT
        elif match.group(0) in _OPENING_TAGS:
            self.read(match)

    def _read_in_action(self, match: re.Match[str]) -> str | None:
        tag, action = match.group(0), _STATE_TAG[self.state]
        if tag == f"<{action}>":
            self.content_start = match.end()
            return None
        if tag != f"</{action}>":
            return f"unclosed_{action}"
        raw = self.text[self.content_start : match.start()]
        self.content = raw.strip() if action == "search" else _answer_text(raw)
        if action == "answer":
            self.last_answer = self.content
        if not self.content:
            return f"empty_{'query' if action == 'search' else 'answer'}"
        self.state = _AFTER_SEARCH if action == "search" else _AFTER_ANSWER
        return None

    def _tag_after_action(self, tag: str, name: str) -> str:
        if not self.single_turn:
            return "tags_after_answer"
        if tag in ("<search>", "<answer>"):
            return "multiple_actions"
        return "wrote_result" if name == "result" else "tags_after_action"

    def _read_free(self, match: re.Match[str]) -> str | None:
        tag, name = match.group(0), match.group(2)
        if tag == "<think>":
            self.state = _THINK
        elif tag in ("<search>", "<answer>"):
            self.state = _SEARCH if name == "search" else _ANSWER
            self.content_start = match.end()
        elif name == "result":
            return "wrote_result" if self.single_turn else "result_without_search"
        elif tag == "</think>":
            return "unbalanced_think"
        else:
            return f"unopened_{name}"
        return None


def _scan(text: str, *, single_turn: bool) -> _Scan:
    """Run the tag grammar over ``text`` once, in time linear in its length.

    Every parser of this module reads its tags through here: they are found by one regex
    without backtracking (``_TAG``) and read left to right by :class:`_Grammar`.
    ``single_turn=True`` reads one agent turn and stops at the first problem: after the action,
    any tag is a problem and ``<result>`` anywhere is ``wrote_result``. ``single_turn=False``
    reads a response: a ``</search>`` must be followed by ``<result>…</result>`` before the next
    tag; the grammar's reading stops at the first problem, and the lenient reading goes on (see
    :meth:`_Grammar.resume_at`).
    """
    grammar = _Grammar(text, single_turn=single_turn)
    verdict: tuple[str | None, int, str, int, int] | None = None
    for match in _TAG.finditer(text):
        problem = grammar.read(match)
        if problem is None:
            continue
        verdict = verdict or grammar.verdict(problem)
        if single_turn:
            break
        grammar.resume_at(match)
    return _Scan(*(verdict or grammar.verdict(None)), grammar.tool_calls, grammar.last_answer)
