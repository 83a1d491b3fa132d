"""Search-augmented QA as an environment with immutable, shareable state.

Rollouts branch from earlier turns (turn trees), so the environment keeps no episode state of
its own: :meth:`SearchQAEnv.reset` returns a frozen :class:`EnvState` and :meth:`SearchQAEnv.step`
returns a *new* state that shares everything before the new turn with the old one. Any state can
be stepped any number of times, from any thread.

One step reads the agent's turn (:func:`at2po.tasks.agent_format.parse_action`) and answers it:

    answer                              → done (finish="answer"), no observation
    this was turn ``max_turns``         → done (finish="turn_limit"), no observation, no search
    invalid turn                        → observation saying what to fix (a step, not a tool call)
    search past ``max_tool_calls``      → observation saying to answer now (not a tool call)
    search                              → the tool's observation (passages or its error text)

Observations are the exact text to append after the turn (loss mask 0), always
``" <result>\\n…\\n</result>"``. Agent mistakes never raise; calling ``step`` on a finished state
(a caller's mistake) does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from at2po.tasks.agent_format import (
    STOP_STRINGS,
    Action,
    build_prompt_messages,
    format_observation,
    parse_action,
)
from at2po.tasks.datasets import QAExample
from at2po.tasks.rewards import RewardConfig, RewardResult, score_response
from at2po.tasks.search_tool import SearchTool

TOOL_FAILURES = frozenset({"search_failed", "search_timeout"})
"""Problem codes of a search that failed on the tool's side, not the agent's (``tool_failed``)."""

TOOL_LIMIT_MESSAGE = (
    "You have used all {limit} searches. Answer now with <answer>final answer</answer>, using "
    "what you have found."
)


@dataclass(frozen=True)
class SearchEnvConfig:
    """Limits and scoring of a search-QA episode.

    max_tool_calls: searches sent to the tool per episode (6 in AT²PO); later searches get an
    observation asking for the answer. max_turns: agent turns per episode, mistakes included;
    the episode ends unanswered after the last one. system_role: put the instruction in a
    system message (False: in the user message, for chat templates without a system role).
    reward: how a finished response is scored (scheme ``at2po`` by default).
    """

    max_tool_calls: int = 6
    max_turns: int = 10
    system_role: bool = True
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        if self.max_tool_calls < 1 or self.max_turns < 1:
            raise ValueError(
                "max_tool_calls and max_turns must be at least 1, got "
                f"{self.max_tool_calls} and {self.max_turns}"
            )


@dataclass(frozen=True)
class Turn:
    """One agent turn: the text it wrote, how it was read, and the observation appended after
    it (``""`` when none)."""

    text: str
    action: Action
    observation: str


@dataclass(frozen=True)
class EnvState:
    """Where an episode stands. Never mutated: stepping makes a new state.

    example: the question. prompt: the prompt messages as (role, content) pairs. turns: the agent
    turns so far. tool_calls: searches sent to the tool. finish: None while the episode runs,
    else why it ended: ``answer``, ``turn_limit``, or the reason given to
    :meth:`SearchQAEnv.end_episode`.
    """

    example: QAExample
    prompt: tuple[tuple[str, str], ...]
    turns: tuple[Turn, ...] = ()
    tool_calls: int = 0
    finish: str | None = None

    @property
    def done(self) -> bool:
        return self.finish is not None

    @property
    def steps(self) -> int:
        """Agent turns taken."""
        return len(self.turns)

    @property
    def answer(self) -> str | None:
        """The final answer if the episode ended with one."""
        if self.finish == "answer":
            return self.turns[-1].action.content
        return None

    @property
    def response_text(self) -> str:
        """Everything after the prompt: each turn's text followed by its observation."""
        return "".join(turn.text + turn.observation for turn in self.turns)

    def prompt_messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages (fresh dicts, safe to hand to a chat template)."""
        return [{"role": role, "content": content} for role, content in self.prompt]


@dataclass(frozen=True)
class StepOutcome:
    """The new state, the observation to append (None when the episode ended), whether it
    ended, and ``info``: ``action`` (search/answer/invalid), ``problem`` (a code from
    ``agent_format.PROBLEMS``, ``search_tool.MESSAGES`` or ``tool_call_limit``; None when all
    went well), ``finish``, and ``tool_failed`` (the retriever failed: a code of
    ``TOOL_FAILURES``)."""

    state: EnvState
    observation: str | None
    done: bool
    info: dict[str, Any]


class SearchQAEnv:
    """Question answering with a search tool; see the module docstring for the step rules."""

    stop_strings: tuple[str, ...] = STOP_STRINGS
    think_tags: tuple[str | None, str] = ("<think>", "</think>")
    """T²PO's thinking intervention: the tags of the thinking block."""
    intervention_text: str = "</think>\n"
    """What TTI forces: the model still chooses between <search> and <answer> itself."""

    def __init__(
        self,
        tool: SearchTool,
        config: SearchEnvConfig | None = None,
        corpora: Mapping[str, SearchTool] | None = None,
    ):
        """``tool`` answers every search, except those of an example whose
        ``metadata["corpus"]`` names a key of ``corpora``: they go to that tool. Synthetic
        worlds that share name words (and so contradict each other) each get their own corpus
        this way, in one environment."""
        for candidate in (tool, *(corpora or {}).values()):
            if not callable(getattr(candidate, "run_batch", None)):
                raise TypeError(
                    f"SearchQAEnv needs SearchTools, got {type(candidate).__name__}; wrap a "
                    "retriever as SearchQAEnv(SearchTool(retriever))"
                )
        self.tool = tool
        self.corpora = dict(corpora or {})
        self.config = config or SearchEnvConfig()

    def reset(self, example: QAExample) -> EnvState:
        """The start state of an episode on ``example``."""
        messages = build_prompt_messages(
            example.question,
            max_searches=self.config.max_tool_calls,
            system_role=self.config.system_role,
        )
        prompt = tuple((message["role"], message["content"]) for message in messages)
        return EnvState(example=example, prompt=prompt)

    def step(self, state: EnvState, action_text: str) -> StepOutcome:
        """Answer one agent turn (the text generated in that turn only)."""
        return self.step_batch([state], [action_text])[0]

    def step_batch(
        self, states: Sequence[EnvState], action_texts: Sequence[str]
    ) -> list[StepOutcome]:
        """Answer many turns at once; their searches go to the tool in one batch."""
        if len(states) != len(action_texts):
            raise ValueError(f"got {len(states)} states but {len(action_texts)} action texts")
        for state in states:
            if state.done:
                raise ValueError(
                    f"the episode on {state.example.id!r} already ended ({state.finish}); "
                    "start a new one with reset()"
                )
        actions = [parse_action(text) for text in action_texts]
        searching = [
            i for i, (s, a) in enumerate(zip(states, actions, strict=True)) if self._searches(s, a)
        ]
        tool_outcome_of = {}
        for tool, members in self._by_tool(states, searching):
            outcomes_of_tool = tool.run_batch([actions[i].content for i in members])
            tool_outcome_of.update(zip(members, outcomes_of_tool, strict=True))
        outcomes = []
        for i, (state, text, action) in enumerate(zip(states, action_texts, actions, strict=True)):
            tool_outcome = tool_outcome_of.get(i)
            if tool_outcome is None:
                outcomes.append(self._answer_without_tool(state, text, action))
                continue
            observation = format_observation(tool_outcome.text)
            calls = state.tool_calls + 1
            outcomes.append(
                _advance(state, text, action, observation, tool_outcome.error, tool_calls=calls)
            )
        return outcomes

    def end_episode(self, state: EnvState, action_text: str, reason: str) -> EnvState:
        """End an episode from outside with a last turn, e.g. when the token budget cut it
        (``reason="length"``). The turn is recorded as written; no observation follows."""
        if state.done:
            raise ValueError(f"the episode on {state.example.id!r} already ended ({state.finish})")
        if not reason:
            raise ValueError("give a reason for stopping the episode, e.g. 'length'")
        turn = Turn(action_text, parse_action(action_text), "")
        return EnvState(state.example, state.prompt, (*state.turns, turn), state.tool_calls, reason)

    def reward(self, trajectory: EnvState | str, example: QAExample | None = None) -> RewardResult:
        """Score a state, or a response text (without the prompt) on ``example``."""
        if isinstance(trajectory, EnvState):
            return score_response(
                trajectory.response_text, trajectory.example.golden_answers, self.config.reward
            )
        if example is None:
            raise ValueError("scoring a response text needs the example it answers")
        return score_response(trajectory, example.golden_answers, self.config.reward)

    def _tool_of(self, example: QAExample) -> SearchTool:
        corpus = example.metadata.get("corpus") if example.metadata else None
        return self.corpora.get(corpus, self.tool) if corpus is not None else self.tool

    def _by_tool(
        self, states: Sequence[EnvState], indices: Sequence[int]
    ) -> list[tuple[SearchTool, list[int]]]:
        """``indices`` grouped by the tool that answers their example, in first-seen order."""
        groups: dict[int, tuple[SearchTool, list[int]]] = {}
        for i in indices:
            tool = self._tool_of(states[i].example)
            groups.setdefault(id(tool), (tool, []))[1].append(i)
        return list(groups.values())

    def _searches(self, state: EnvState, action: Action) -> bool:
        return (
            action.kind == "search"
            and state.steps + 1 < self.config.max_turns
            and state.tool_calls < self.config.max_tool_calls
        )

    def _answer_without_tool(self, state: EnvState, text: str, action: Action) -> StepOutcome:
        if action.kind == "answer":
            return _advance(state, text, action, None, None, finish="answer")
        if state.steps + 1 >= self.config.max_turns:
            return _advance(state, text, action, None, action.problem, finish="turn_limit")
        if action.kind == "invalid":
            return _advance(state, text, action, format_observation(action.content), action.problem)
        limit_text = TOOL_LIMIT_MESSAGE.format(limit=self.config.max_tool_calls)
        return _advance(state, text, action, format_observation(limit_text), "tool_call_limit")


def _advance(
    state: EnvState,
    text: str,
    action: Action,
    observation: str | None,
    problem: str | None,
    *,
    finish: str | None = None,
    tool_calls: int | None = None,
) -> StepOutcome:
    new_state = EnvState(
        example=state.example,
        prompt=state.prompt,
        turns=(*state.turns, Turn(text, action, observation or "")),
        tool_calls=state.tool_calls if tool_calls is None else tool_calls,
        finish=finish,
    )
    info = {
        "action": action.kind,
        "problem": problem,
        "finish": finish,
        "tool_failed": problem in TOOL_FAILURES,
    }
    return StepOutcome(new_state, observation, finish is not None, info)
