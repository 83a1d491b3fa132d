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
