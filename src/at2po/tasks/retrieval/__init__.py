"""Retrievers behind one interface: :class:`Retriever` (``search(queries, k)``).

In-process BM25 (:class:`BM25Retriever`), dense MiniLM + FAISS (``at2po.tasks.retrieval.dense``,
the ``dense`` extra, imported on demand), and a client of a Search-R1 ``/retrieve`` server
(:class:`HTTPRetriever`); ``at2po.tasks.retrieval.server`` is such a server.
"""

from at2po.tasks.retrieval.base import Passage, QueryFailures, Retriever
from at2po.tasks.retrieval.bm25 import BM25Retriever
from at2po.tasks.retrieval.corpus import Document, load_corpus, write_corpus
from at2po.tasks.retrieval.http_client import (
    HTTPRetriever,
    QueriesRejected,
    RetrievalError,
    RetrievalRejected,
    RetrieverUnavailable,
)

__all__ = [
    "BM25Retriever",
    "Document",
    "HTTPRetriever",
    "Passage",
    "QueriesRejected",
    "QueryFailures",
    "RetrievalError",
    "RetrievalRejected",
    "Retriever",
    "RetrieverUnavailable",
    "load_corpus",
    "write_corpus",
]
