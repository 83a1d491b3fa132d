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


def check_search_args(queries: Sequence[str], k: int) -> None:
    """The argument checks every :meth:`Retriever.search` starts with."""
    if isinstance(queries, str):
        raise TypeError("search takes a sequence of queries; wrap a single query in a list")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
