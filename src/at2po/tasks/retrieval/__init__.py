"""Retrievers behind one interface: :class:`Retriever` (``search(queries, k)``)."""

from at2po.tasks.retrieval.base import Passage, Retriever

__all__ = ["Passage", "Retriever"]
