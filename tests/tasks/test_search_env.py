"""SearchQAEnv end to end over BM25: steps, limits, agent mistakes, branching, rewards."""

import threading
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.tasks.agent_format import PROBLEMS, format_observation
from at2po.tasks.datasets import QAExample
from at2po.tasks.retrieval.base import Passage
from at2po.tasks.retrieval.bm25 import BM25Retriever
from at2po.tasks.retrieval.corpus import Document
from at2po.tasks.rewards import RewardConfig, format_valid
from at2po.tasks.search_env import (
    TOOL_LIMIT_MESSAGE,
    EnvState,
    SearchEnvConfig,
    SearchQAEnv,
)
from at2po.tasks.search_tool import MESSAGES, SearchTool

CORPUS = [
    Document("1", '"Maren Tolvik"\nMaren Tolvik was born in Kessvik in 1961.'),
    Document("2", '"Kessvik"\nKessvik is a port city in Norlund. Its mayor is Ada Brenn.'),
    Document("3", '"Ada Brenn"\nAda Brenn studied law in Ardale.'),
]
EXAMPLE = QAExample(
    "q1",
    "Who is the mayor of the city where Maren Tolvik was born",
    ("Ada Brenn", "Brenn"),
    "synthetic",
)


class CountingRetriever:
    """BM25 that records every batch it is asked (to check batching)."""

    def __init__(self):
        self.inner = BM25Retriever(CORPUS)
        self.batches: list[list[str]] = []

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.batches.append(list(queries))
        return self.inner.search(queries, k)


class DownRetriever:
    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        raise ConnectionError("connection refused")


class HangingRetriever:
    def __init__(self):
        self.release = threading.Event()

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.release.wait(timeout=60)
        return [[] for _ in queries]


@pytest.fixture(scope="module")
def retriever():
    return CountingRetriever()


@pytest.fixture(scope="module")
def env(retriever):
    return SearchQAEnv(SearchTool(retriever), SearchEnvConfig(max_tool_calls=3, max_turns=6))


def test_multi_hop_episode(env):
    state = env.reset(EXAMPLE)
    assert state.prompt_messages()[1] == {
        "role": "user",
        "content": "Question: Who is the mayor of the city where Maren Tolvik was born",
    }
    assert "at most 3 times" in state.prompt_messages()[0]["content"]
    first = env.step(state, "<think>Where was she born?</think><search>Maren Tolvik born</search>")
    assert first.observation.startswith(' <result>\nDoc 1: "Maren Tolvik" Maren Tolvik was born')
    assert first.observation.endswith("\n</result>")
    assert not first.done
    assert first.info == {"action": "search", "problem": None, "finish": None, "tool_failed": False}
    second = env.step(first.state, "<search>Kessvik mayor</search>")
    assert "Its mayor is Ada Brenn." in second.observation.split("\n")[1]
    last = env.step(second.state, "<think>Found it.</think><answer>\\boxed{Ada Brenn}</answer>")
    assert (last.done, last.observation, last.info["finish"]) == (True, None, "answer")
    final = last.state
    assert (final.answer, final.steps, final.tool_calls, final.done) == ("Ada Brenn", 3, 2, True)
    assert final.response_text == (
        "<think>Where was she born?</think><search>Maren Tolvik born</search>"
        + first.observation
        + "<search>Kessvik mayor</search>"
        + second.observation
        + "<think>Found it.</think><answer>\\boxed{Ada Brenn}</answer>"
    )
    result = env.reward(final)
    assert result.reward == 1.0
    assert result.scores == {
        "em": 1.0,
        "f1": 1.0,
        "format_ok": 1.0,
        "answered": 1.0,
        "tool_calls": 2.0,
    }
    assert env.reward(final.response_text, EXAMPLE) == result


def test_wrong_answer_and_format_failures_score_per_scheme(retriever):
    env = SearchQAEnv(SearchTool(retriever), SearchEnvConfig(reward=RewardConfig(scheme="em")))
    state = env.step(env.reset(EXAMPLE), "I guess").state  # no action: format now invalid
    final = env.step(state, "<answer>Ada Brenn</answer>").state
    assert env.reward(final).reward == 1.0  # em ignores the format
    at2po = SearchQAEnv(SearchTool(retriever))
    assert at2po.reward(final).reward == -1.0
    assert at2po.reward(env.step(env.reset(EXAMPLE), "<answer>Kessvik</answer>").state).reward == 0


MISTAKES = [
    ("", "no_action"),
    ("The mayor is probably Ada.", "no_action"),
    ("<python>print('hi')</python>", "unknown_tool"),
    ("<search>   </search>", "empty_query"),
    ("<answer></answer>", "empty_answer"),
    ("<search>Kessvik mayor", "unclosed_search"),
    ("<answer>Ada", "unclosed_answer"),
    ("Kessvik mayor</search>", "unopened_search"),
    ("<think>hmm <search>Kessvik</search>", "unclosed_think"),
    ("<search>a</search><answer>b</answer>", "multiple_actions"),
    ("<search>a</search><result>Doc 1: made up</result>", "wrote_result"),
]


@pytest.mark.parametrize(("text", "problem"), MISTAKES)
def test_agent_mistakes_become_observations(env, retriever, text, problem):
    before = len(retriever.batches)
    outcome = env.step(env.reset(EXAMPLE), text)
    assert outcome.done is False
    assert outcome.info == {
        "action": "invalid",
        "problem": problem,
        "finish": None,
        "tool_failed": False,
    }
    expected = PROBLEMS[problem].format(tool="python")
    assert outcome.observation == format_observation(expected)
    assert (outcome.state.steps, outcome.state.tool_calls) == (1, 0)
    assert len(retriever.batches) == before  # nothing was searched
    finished = env.step(outcome.state, "<answer>Ada Brenn</answer>").state
    assert not format_valid(finished.response_text)


def test_oversized_query_is_refused(retriever):
    env = SearchQAEnv(SearchTool(retriever, max_query_chars=10))
    outcome = env.step(env.reset(EXAMPLE), "<search>Maren Tolvik birthplace city</search>")
    assert outcome.info["problem"] == "query_too_long"
    assert "limit is 10" in outcome.observation
    assert outcome.state.tool_calls == 1  # a search action, counted like any other call


def test_no_results_is_an_observation(env):
    outcome = env.step(env.reset(EXAMPLE), "<search>zyzzyva</search>")
    assert outcome.observation == format_observation(MESSAGES["no_results"])
    assert (outcome.info["problem"], outcome.done) == ("no_results", False)


def test_retriever_down_and_hung_become_observations():
    down = SearchQAEnv(SearchTool(DownRetriever(), retries=1, retry_delay_s=0.0))
    outcome = down.step(down.reset(EXAMPLE), "<search>Kessvik</search>")
    assert outcome.observation == format_observation(MESSAGES["search_failed"])
    assert outcome.info["tool_failed"]
    hanging = HangingRetriever()
    slow = SearchQAEnv(SearchTool(hanging, retries=0, timeout_s=0.1))
    outcome = slow.step(slow.reset(EXAMPLE), "<search>Kessvik</search>")
    hanging.release.set()
    assert outcome.info["problem"] == "search_timeout" and not outcome.done
    assert outcome.info["tool_failed"]


def test_tool_call_limit_then_answer(retriever):
    env = SearchQAEnv(SearchTool(retriever), SearchEnvConfig(max_tool_calls=2, max_turns=10))
    state = env.reset(EXAMPLE)
    for query in ("Maren Tolvik", "Kessvik"):
        state = env.step(state, f"<search>{query}</search>").state
    before = len(retriever.batches)
    refused = env.step(state, "<search>Ada Brenn</search>")
    assert refused.observation == format_observation(TOOL_LIMIT_MESSAGE.format(limit=2))
    assert refused.info == {
        "action": "search",
        "problem": "tool_call_limit",
        "finish": None,
        "tool_failed": False,
    }
    assert (refused.state.tool_calls, len(retriever.batches)) == (2, before)
    final = env.step(refused.state, "<answer>Ada Brenn</answer>").state
    assert env.reward(final).reward == 1.0


def test_turn_limit_ends_the_episode_without_searching(retriever):
    env = SearchQAEnv(SearchTool(retriever), SearchEnvConfig(max_tool_calls=5, max_turns=2))
    first = env.step(env.reset(EXAMPLE), "<search>Kessvik</search>")
    before = len(retriever.batches)
    last = env.step(first.state, "<search>Kessvik mayor</search>")
    assert (last.done, last.observation, last.info["finish"]) == (True, None, "turn_limit")
    assert len(retriever.batches) == before
    assert env.reward(last.state).reward == -1.0
    with pytest.raises(ValueError, match="already ended"):
        env.step(last.state, "<answer>x</answer>")


def test_answer_on_the_last_turn_counts(retriever):
    env = SearchQAEnv(SearchTool(retriever), SearchEnvConfig(max_turns=1))
    outcome = env.step(env.reset(EXAMPLE), "<answer>Brenn</answer>")
    assert outcome.info["finish"] == "answer" and env.reward(outcome.state).reward == 1.0


def test_states_are_immutable_and_branch(env):
    root = env.reset(EXAMPLE)
    left = env.step(root, "<search>Maren Tolvik</search>").state
    right = env.step(root, "<answer>Kessvik</answer>").state
    assert root.turns == () and root.steps == 0 and not root.done
    assert left.turns[0].text == "<search>Maren Tolvik</search>" and not left.done
    assert right.answer == "Kessvik"
    again = env.step(left, "<answer>Ada Brenn</answer>").state
    assert again.turns[0] is left.turns[0]  # earlier turns are shared, not copied
    with pytest.raises(AttributeError):
        root.tool_calls = 3


def test_step_batch_searches_in_one_call(env, retriever):
    root = env.reset(EXAMPLE)
    before = len(retriever.batches)
    outcomes = env.step_batch(
        [root, root, root],
        ["<search>Maren Tolvik</search>", "<answer>x</answer>", "<search>Kessvik mayor</search>"],
    )
    assert retriever.batches[before:] == [["Maren Tolvik", "Kessvik mayor"]]
    assert [o.info["action"] for o in outcomes] == ["search", "answer", "search"]
    assert outcomes[0].observation == env.step(root, "<search>Maren Tolvik</search>").observation
    with pytest.raises(ValueError, match="2 states but 1 action texts"):
        env.step_batch([root, root], ["<answer>x</answer>"])


def test_end_episode_records_a_cut_turn(env):
    state = env.step(env.reset(EXAMPLE), "<search>Kessvik</search>").state
    stopped = env.end_episode(state, "<think>The mayor is", reason="length")
    assert (stopped.done, stopped.finish, stopped.steps, stopped.answer) == (
        True,
        "length",
        2,
        None,
    )
    assert stopped.response_text.endswith("</result><think>The mayor is")
    assert env.reward(stopped).reward == -1.0
    with pytest.raises(ValueError, match="reason"):
        env.end_episode(state, "x", reason="")


def test_reward_of_text_needs_the_example(env):
    with pytest.raises(ValueError, match="needs the example"):
        env.reward("<answer>x</answer>")


def test_config_and_tool_are_validated(retriever):
    with pytest.raises(ValueError, match="at least 1"):
        SearchEnvConfig(max_tool_calls=0)
    with pytest.raises(TypeError, match=r"SearchQAEnv\(SearchTool\(retriever\)\)"):
        SearchQAEnv(retriever)


def test_prompt_without_system_role(retriever):
    env = SearchQAEnv(SearchTool(retriever), SearchEnvConfig(system_role=False))
    (message,) = env.reset(EXAMPLE).prompt_messages()
    assert message["role"] == "user"


PIECES = st.sampled_from(
    [
        "<think>",
        "</think>",
        "<search>",
        "</search>",
        "<answer>",
        "</answer>",
        "<result>",
        "</result>",
        "<tool>",
        "</tool>",
        "\\boxed{",
        "}",
        "Kessvik",
        "Ada Brenn",
        "mayor",
        " ",
        "\n",
    ]
)
AGENT_TEXT = st.one_of(st.lists(PIECES, max_size=10).map("".join), st.text(max_size=60))


@settings(max_examples=150, deadline=None)
@given(turns=st.lists(AGENT_TEXT, min_size=1, max_size=8))
def test_env_never_raises_on_agent_text(env, turns):
    state: EnvState = env.reset(EXAMPLE)
    for text in turns:
        outcome = env.step(state, text)
        assert outcome.done == outcome.state.done
        if outcome.done:
            assert outcome.observation is None
        else:
            assert isinstance(outcome.observation, str) and outcome.observation.startswith(
                " <result>\n"
            )
        state = outcome.state
        if state.done:
            break
    assert state.steps <= env.config.max_turns
    assert state.tool_calls <= env.config.max_tool_calls
    result = env.reward(state)
    assert result.reward in (-1.0, 0.0, 1.0)
    if any(turn.action.kind == "invalid" for turn in state.turns):
        assert result.scores["format_ok"] == 0.0


def test_searches_go_to_the_corpus_the_example_names():
    """Two corpora that state different facts about the same name: each question is answered
    from its own, and questions naming no known corpus use the default tool."""

    def tool(fact: str) -> SearchTool:
        return SearchTool(BM25Retriever([Document("d0", f'"Tolvik"\n{fact}')]), topk=1)

    env = SearchQAEnv(
        tool("Tolvik was born in Default."),
        corpora={"a": tool("Tolvik was born in Amber."), "b": tool("Tolvik was born in Birch.")},
    )
    examples = [
        QAExample("q1", "Where?", ("x",), "t", {"corpus": "a"}),
        QAExample("q2", "Where?", ("x",), "t", {"corpus": "b"}),
        QAExample("q3", "Where?", ("x",), "t", {}),
    ]
    states = [env.reset(ex) for ex in examples]
    outcomes = env.step_batch(states, ["<search>Tolvik born</search>"] * 3)
    assert ["Amber" in o.observation for o in outcomes] == [True, False, False]
    assert ["Birch" in o.observation for o in outcomes] == [False, True, False]
    assert ["Default" in o.observation for o in outcomes] == [False, False, True]
    with pytest.raises(TypeError, match="SearchTools"):
        SearchQAEnv(tool("x"), corpora={"a": object()})
