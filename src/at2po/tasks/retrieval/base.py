"""The one interface every retriever implements: in-process BM25, dense, or an HTTP client."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Passage:
    """A retrieved document: its corpus id, its text and the retriever's score (higher: better)."""

    doc_id: str
    contents: str
    score: float


@runtime_checkable
class Retriever(Protocol):
    """``search(queries, k)`` returns, for each query, at most ``k`` passages, best first."""

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]: ...


class QueryFailures(RuntimeError):
    """Some queries of a batch failed, each for a reason of its own; the others were answered.

    ``results`` holds one entry per query, in order: its passages, or None where it failed.
    ``reasons`` maps the position of each failed query to why it failed. Raised instead of
    returning, so a caller that does not look for it never mistakes a failure for "no passages".
    """

    def __init__(self, message: str, results: list[list[Passage] | None], reasons: dict[int, str]):
        super().__init__(message)
        self.results = results
        self.reasons = reasons


def check_search_args(queries: Sequence[str], k: int) -> None:
    """The argument checks every :meth:`Retriever.search` starts with."""
    if isinstance(queries, str):
        raise TypeError("search takes a sequence of queries; wrap a single query in a list")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
