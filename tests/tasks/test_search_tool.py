"""The search tool over BM25 and over retrievers that fail, hang or answer nonsense."""

import threading
import time
from collections.abc import Sequence

import pytest

from at2po.tasks.retrieval.base import Passage, Retriever
from at2po.tasks.retrieval.bm25 import BM25Retriever
from at2po.tasks.retrieval.corpus import Document
from at2po.tasks.search_tool import MESSAGES, SearchTool, ToolOutcome

CORPUS = [
    Document("1", '"Maren Tolvik"\nMaren Tolvik was born in Kessvik in 1961.'),
    Document("2", '"Kessvik"\nKessvik is a port city in Norlund.'),
    Document("3", '"Kessvik (band)"\nKessvik is a folk band from Ardale.'),
    Document("4", '"Maren Tolvik (copy)"\nMaren Tolvik was born in Kessvik in 1961.'),
]


@pytest.fixture(scope="module")
def bm25():
    return BM25Retriever(CORPUS)


class CountingRetriever:
    """Delegates to another retriever and records every batch it was asked."""

    def __init__(self, inner: Retriever):
        self.inner = inner
        self.batches: list[list[str]] = []

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.batches.append(list(queries))
        return self.inner.search(queries, k)


class FailingRetriever:
    """Raises on its first ``failures`` calls (like a server that is down), then answers."""

    def __init__(self, failures: int, answer: list[Passage]):
        self.failures = failures
        self.answer = answer
        self.calls = 0

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("retrieval server at http://127.0.0.1:9 is unreachable")
        return [list(self.answer) for _ in queries]


class HangingRetriever:
    """Blocks until released (a server that accepted the request and never replied)."""

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.calls += 1
        self.release.wait(timeout=60)
        return [[] for _ in queries]


class SlowRetriever:
    """Answers correctly after ``delay_s`` seconds."""

    def __init__(self, delay_s: float, inner: Retriever):
        self.delay_s = delay_s
        self.inner = inner

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        time.sleep(self.delay_s)
        return self.inner.search(queries, k)


class WrongShapeRetriever:
    """Returns one list too few (a broken retriever)."""

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [[] for _ in queries[1:]]


def test_top_passages_deduplicated_and_numbered(bm25):
    outcome = SearchTool(bm25, topk=3)("Maren Tolvik born")
    assert outcome.ok and outcome.error is None
    lines = outcome.text.split("\n")
    # docs 1 and 4 share their text after the title line only, so both stay: the title differs
    assert lines[0].startswith("Doc 1: ") and lines[1].startswith("Doc 2: ")
    assert all("\n" not in line for line in lines)
    assert '"Maren Tolvik" Maren Tolvik was born in Kessvik in 1961.' in outcome.text


def test_exact_duplicates_are_dropped():
    passage = Passage("a", "Same text.", 2.0)
    other = Passage("c", "Other  text.", 0.5)
    tool = SearchTool(FailingRetriever(0, [passage, Passage("b", "Same  text.\n", 1.0), other]))
    assert tool("q").text == "Doc 1: Same text.\nDoc 2: Other text."


def test_passages_are_cut_to_max_chars():
    long_text = "word " * 100
    tool = SearchTool(FailingRetriever(0, [Passage("a", long_text, 1.0)]), max_chars=12)
    assert tool("q").text == "Doc 1: word word wo..."


def test_topk_is_passed_to_the_retriever_and_respected(bm25):
    counting = CountingRetriever(bm25)
    outcome = SearchTool(counting, topk=1)("Kessvik")
    assert outcome.text.count("Doc ") == 1
    assert counting.batches == [["Kessvik"]]


def test_no_results(bm25):
    outcome = SearchTool(bm25)("zyzzyva qwertyuiop")
    assert outcome == ToolOutcome(MESSAGES["no_results"], ok=False, error="no_results")


def test_refused_queries_never_reach_the_retriever(bm25):
    counting = CountingRetriever(bm25)
    tool = SearchTool(counting, max_query_chars=20)
    empty, long, fine = tool.run_batch(["  \n ", "x" * 21, " Kessvik   port "])
    assert (empty.error, long.error, fine.error) == ("empty_query", "query_too_long", None)
    assert "21 characters" in long.text and "limit is 20" in long.text
    assert counting.batches == [["Kessvik port"]]


def test_batch_is_one_retriever_call_with_outcomes_in_order(bm25):
    counting = CountingRetriever(bm25)
    outcomes = SearchTool(counting).run_batch(["Maren Tolvik", "", "folk band Ardale"])
    assert len(counting.batches) == 1
    assert "Maren Tolvik was born" in outcomes[0].text.split("\n")[0]
    assert outcomes[1].error == "empty_query"
    assert "folk band" in outcomes[2].text.split("\n")[0]
    assert SearchTool(counting).run_batch([]) == []


def test_retries_recover_from_a_transient_failure():
    retriever = FailingRetriever(2, [Passage("a", "Found it.", 1.0)])
    outcome = SearchTool(retriever, retries=2, retry_delay_s=0.0)("q")
    assert outcome.ok and outcome.text == "Doc 1: Found it."
    assert retriever.calls == 3


def test_retriever_down_becomes_an_observation():
    retriever = FailingRetriever(10, [])
    outcome = SearchTool(retriever, retries=2, retry_delay_s=0.0)("q")
    assert outcome == ToolOutcome(MESSAGES["search_failed"], ok=False, error="search_failed")
    assert retriever.calls == 3


def test_malformed_answer_is_a_failure():
    outcome = SearchTool(WrongShapeRetriever(), retries=0).run_batch(["a", "b"])
    assert [o.error for o in outcome] == ["search_failed", "search_failed"]


def test_hung_retriever_gives_an_observation_in_bounded_time():
    retriever = HangingRetriever()
    tool = SearchTool(retriever, timeout_s=0.2, retries=1, retry_delay_s=0.05)
    start = time.perf_counter()
    outcome = tool("q")
    elapsed = time.perf_counter() - start
    retriever.release.set()
    assert outcome.error == "search_timeout" and not outcome.ok
    assert retriever.calls == 2
    # two attempts of 0.2 s and one pause of 0.05 s, plus scheduling slack on a shared machine
    assert 0.4 <= elapsed < 3.0


def test_slow_but_in_time_retriever_succeeds(bm25):
    outcome = SearchTool(SlowRetriever(0.05, bm25), timeout_s=5.0)("Kessvik")
    assert outcome.ok


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topk": 0}, "topk must be at least 1"),
        ({"max_chars": 0}, "max_chars must be at least 1"),
        ({"retries": -1}, "retries must be at least 0"),
        ({"timeout_s": 0}, "timeout_s must be > 0"),
    ],
)
def test_bad_settings_are_rejected(bm25, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchTool(bm25, **kwargs)


def test_a_non_retriever_is_rejected():
    with pytest.raises(TypeError, match="no search"):
        SearchTool(object())
