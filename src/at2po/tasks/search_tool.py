"""The search tool: a retriever behind bounded retries and timeouts, with agent-readable output.

For a query the tool asks the retriever for the top ``topk`` passages, drops passages whose text
repeats an earlier one, cuts each to ``max_chars`` characters (whitespace collapsed, ``...``
marking a cut) and returns them as lines ``Doc 1: …``, ``Doc 2: …``. Every failure becomes text
for the agent, never an exception:

    empty query                      error="empty_query"
    query longer than max_query_chars error="query_too_long" (refused, not truncated)
    no passage found                 error="no_results"
    retriever raised or returned a malformed answer on every attempt   error="search_failed"
    retriever did not answer within timeout_s on the last attempt      error="search_timeout"
    retriever refused this query alone (``QueryFailures``)             error="search_failed"

A retriever that raises :class:`~at2po.tasks.retrieval.base.QueryFailures` answered the other
queries of the batch: they get their passages and only the refused ones fail (not retried).

Each retriever call runs in its own daemon thread and is abandoned after ``timeout_s``, so a hung
retriever cannot block an episode (nor the interpreter's exit). A batch makes ``1 + retries``
attempts at most, ``retry_delay_s`` apart: the worst case is about
``(1 + retries) · timeout_s + retries · retry_delay_s`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TypeVar

from at2po.tasks.retrieval.base import Passage, QueryFailures, Retriever

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

MESSAGES: dict[str, str] = {
    "empty_query": "The search query is empty. Write a few keywords between <search> and "
    "</search>.",
    "query_too_long": "The query is {length} characters long; the limit is {limit}. Search "
    "with a few keywords.",
    "no_results": "No documents matched this query. Try other keywords.",
    "search_failed": "The search engine is not working right now. Try again, or answer with "
    "what you already know.",
    "search_timeout": "The search engine did not respond in time. Try again, or answer with "
    "what you already know.",
}
"""The observation text for each tool error code."""


@dataclass(frozen=True)
class ToolOutcome:
    """What one search produced: ``text`` for the agent, ``ok`` when passages were returned,
    and ``error`` (a code of ``MESSAGES``) when they were not."""

    text: str
    ok: bool
    error: str | None = None


class _SearchTimeout(Exception):
    pass


class SearchTool:
    """Search a :class:`Retriever` and format the passages as one observation text.

    topk: passages per query. max_chars: characters kept of each passage (500 suits small
    models' contexts; the AT²PO authors used 1000). max_query_chars: longer queries are refused.
    retries: attempts after the first when the retriever raises, hangs or answers malformed.
    timeout_s: seconds one retriever call may take. retry_delay_s: pause between attempts.
    """

    def __init__(
        self,
        retriever: Retriever,
        *,
        topk: int = 3,
        max_chars: int = 500,
        max_query_chars: int = 300,
        retries: int = 2,
        timeout_s: float = 10.0,
        retry_delay_s: float = 0.2,
    ):
        if not callable(getattr(retriever, "search", None)):
            raise TypeError(
                f"{type(retriever).__name__} has no search(queries, k) method; pass a Retriever "
                "such as at2po.tasks.retrieval.bm25.BM25Retriever"
            )
        for name, value, least in (
            ("topk", topk, 1),
            ("max_chars", max_chars, 1),
            ("max_query_chars", max_query_chars, 1),
            ("retries", retries, 0),
        ):
            if value < least:
                raise ValueError(f"{name} must be at least {least}, got {value}")
        if timeout_s <= 0 or retry_delay_s < 0:
            raise ValueError(
                f"timeout_s must be > 0 and retry_delay_s >= 0, got {timeout_s} and {retry_delay_s}"
            )
        self.retriever = retriever
        self.topk = topk
        self.max_chars = max_chars
        self.max_query_chars = max_query_chars
        self.retries = retries
        self.timeout_s = timeout_s
        self.retry_delay_s = retry_delay_s

    def __call__(self, query: str) -> ToolOutcome:
        """Search one query."""
        return self.run_batch([query])[0]

    def run_batch(self, queries: Sequence[str]) -> list[ToolOutcome]:
        """Search many queries with one retriever call; one outcome per query, in order."""
        cleaned = [" ".join(query.split()) for query in queries]
        outcomes: list[ToolOutcome | None] = [self._refusal(query) for query in cleaned]
        to_search = [i for i, outcome in enumerate(outcomes) if outcome is None]
        if to_search:
            found = self._search_with_retries([cleaned[i] for i in to_search])
            for i, passages in zip(to_search, found, strict=True):
                failed = isinstance(passages, str)
                outcomes[i] = _failure(passages) if failed else self._outcome(passages)
        return [outcome for outcome in outcomes if outcome is not None]

    def format_passages(self, passages: Sequence[Passage]) -> str:
        """``Doc i: text`` lines for the passages, duplicates dropped, each cut to max_chars."""
        seen: set[str] = set()
        lines = []
        for passage in passages:
            text = " ".join(passage.contents.split())
            if not text or text in seen:
                continue
            seen.add(text)
            if len(text) > self.max_chars:
                text = text[: self.max_chars].rstrip() + "..."
            lines.append(f"Doc {len(lines) + 1}: {text}")
            if len(lines) == self.topk:
                break
        return "\n".join(lines)

    def _refusal(self, query: str) -> ToolOutcome | None:
        if not query:
            return _failure("empty_query")
        if len(query) > self.max_query_chars:
            return _failure("query_too_long", length=len(query), limit=self.max_query_chars)
        return None

    def _outcome(self, passages: list[Passage]) -> ToolOutcome:
        text = self.format_passages(passages)
        return ToolOutcome(text, ok=True) if text else _failure("no_results")

    def _search_with_retries(self, queries: list[str]) -> list[list[Passage] | str]:
        """Per query its passages, or an error code: the last attempt's for every query when
        every attempt failed, ``search_failed`` for a query the retriever refused alone."""

        def search() -> list[list[Passage]]:
            return self.retriever.search(queries, self.topk)

        error = "search_failed"
        for attempt in range(1 + self.retries):
            if attempt:
                time.sleep(self.retry_delay_s)
            try:
                return _checked(_call_with_timeout(search, self.timeout_s), len(queries))
            except QueryFailures as failures:
                _log.warning("retriever refused some queries: %s", failures)
                return _answered_or_failed(failures, len(queries))
            except _SearchTimeout:
                error = "search_timeout"
                _log.warning("retriever gave no answer within %.1f s", self.timeout_s)
            except Exception as failure:
                error = "search_failed"
                _log.warning("retriever failed (attempt %d): %s", attempt + 1, failure)
        return [error] * len(queries)


def _answered_or_failed(failures: QueryFailures, n_queries: int) -> list[list[Passage] | str]:
    """The passages of the answered queries of a partly failed batch, ``search_failed`` for the
    refused ones (and for every query when the partial answer is malformed)."""
    results = failures.results
    if not isinstance(results, list) or len(results) != n_queries:
        results = [None] * n_queries
    return [passages if _is_passage_list(passages) else "search_failed" for passages in results]


def _failure(error: str, **fields: int) -> ToolOutcome:
    return ToolOutcome(MESSAGES[error].format(**fields), ok=False, error=error)


def _call_with_timeout(function: Callable[[], _T], timeout_s: float) -> _T:
    """Run ``function`` in a fresh daemon thread; raise ``_SearchTimeout`` after ``timeout_s``."""
    future: Future[_T] = Future()

    def run() -> None:
        try:
            future.set_result(function())
        except BaseException as error:  # handed to the caller through the future
            future.set_exception(error)

    threading.Thread(target=run, name="at2po-search", daemon=True).start()
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeout as error:
        raise _SearchTimeout from error


def _checked(result: object, n_queries: int) -> list[list[Passage]]:
    """The retriever's answer if it has one list of passages per query, else ValueError."""
    if not isinstance(result, list) or len(result) != n_queries:
        raise ValueError(f"retriever returned {type(result).__name__} for {n_queries} queries")
    if not all(_is_passage_list(passages) for passages in result):
        raise ValueError("retriever returned something other than lists of passages")
    return result


def _is_passage_list(passages: object) -> bool:
    """True for a list whose items all have a ``contents`` string, as passages do."""
    return isinstance(passages, list) and all(
        isinstance(getattr(p, "contents", None), str) for p in passages
    )
