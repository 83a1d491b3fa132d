"""In-process BM25 retrieval with ``bm25s`` (Lù, 2024, arXiv 2407.03618): sparse, exact, fast.

Score of document d for query q (Lucene's variant, as in Kamphuis et al., ECIR 2020):

    score(d, q) = Σ_{t ∈ q} idf(t) · tf(t, d) / (tf(t, d) + k1 · (1 − b + b · |d| / avgdl))
    idf(t)      = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))

with |d| and avgdl counted in tokens after stop-word removal, and a token repeated in the query
counted again.
k1 = 0.9 and b = 0.4 are Lucene/Pyserini's defaults, the BM25 that Search-R1 and FlashRAG use.
Text is lower-cased, split into words of two or more characters, English stop words removed, no
stemming (no stemmer ships with the core install). Documents that share no term with the query
score 0 and are never returned, so a query of unknown words yields no passages.

A saved index is a directory: ``bm25s/`` (the index), ``documents.jsonl`` (the corpus) and
``at2po_index.json``, which records the size and SHA-256 of every other file. Loading checks
them, so a file swapped in from another index (which would load and answer ``[]`` or the wrong
passages to everything) is refused with a message naming it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np

from at2po.models.packaged import sha256_of
from at2po.tasks.retrieval.base import Passage, check_search_args
from at2po.tasks.retrieval.corpus import Document, load_corpus, write_corpus

INDEX_FORMAT = 2
"""Format 2 added the per-file sizes and SHA-256 sums; format 1 indexes must be rebuilt."""
_METADATA_FILE = "at2po_index.json"
_DOCUMENTS_FILE = "documents.jsonl"
_BM25S_DIR = "bm25s"
_STOPWORDS = "en"


def _tokenize(texts: list[str], *, as_ids: bool):
    return bm25s.tokenize(texts, stopwords=_STOPWORDS, return_ids=as_ids, show_progress=False)


class BM25Retriever:
    """BM25 over a fixed list of documents; ``search`` is thread-safe (it only reads the index)."""

    def __init__(self, documents: Sequence[Document], *, k1: float = 0.9, b: float = 0.4):
        if not documents:
            raise ValueError("BM25Retriever needs at least one document")
        self.documents = list(documents)
        self._index = bm25s.BM25(k1=k1, b=b, method="lucene")
        corpus_tokens = _tokenize([d.contents for d in self.documents], as_ids=True)
        self._index.index(corpus_tokens, show_progress=False)

    @classmethod
    def from_jsonl(cls, path: str | Path, *, k1: float = 0.9, b: float = 0.4) -> BM25Retriever:
        """Build from a Search-R1 JSONL corpus file (see :mod:`at2po.tasks.retrieval.corpus`)."""
        return cls(load_corpus(path), k1=k1, b=b)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """For each query, at most ``k`` passages with a positive BM25 score, best first."""
        check_search_args(queries, k)
        if not queries:
            return []
        query_tokens = _tokenize(list(queries), as_ids=False)
        return [self._top_passages(tokens, k) for tokens in query_tokens]

    def _top_passages(self, tokens: list[str], k: int) -> list[Passage]:
        token_ids = self._index.get_tokens_ids(tokens)
        if not token_ids:
            return []
        score_D = self._index.get_scores_from_ids(token_ids)
        # Select among matching documents only: argpartition over a mostly-zero vector is slow.
        match_M = np.flatnonzero(score_D > 0.0)
        if len(match_M) > k:
            match_M = match_M[np.argpartition(score_D[match_M], -k)[-k:]]
        best_M = match_M[np.lexsort((match_M, -score_D[match_M]))]  # score desc, then corpus order
        return [
            Passage(self.documents[i].doc_id, self.documents[i].contents, float(score_D[i]))
            for i in best_M.tolist()
        ]

    def save(self, directory: str | Path) -> None:
        """Write the index and its documents to ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._index.save(str(directory / _BM25S_DIR), show_progress=False)
        write_corpus(self.documents, directory / _DOCUMENTS_FILE)
        metadata = {
            "format": INDEX_FORMAT,
            "kind": "bm25",
            "num_documents": len(self.documents),
            "k1": self._index.k1,
            "b": self._index.b,
            "stopwords": _STOPWORDS,
            "files": _file_records(directory),
        }
        # Written last: a directory with metadata holds a complete index.
        (directory / _METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> BM25Retriever:
        """Load an index written by :meth:`save`; the corpus is not re-tokenised.

        Every file is checked against the size and SHA-256 recorded when it was saved; a
        ValueError names the first that differs (reading the files once more costs about a
        second per GB).
        """
        directory = Path(directory)
        metadata = _read_metadata(directory)
        if metadata.get("kind") != "bm25" or metadata.get("format") != INDEX_FORMAT:
            raise ValueError(
                f"{directory} holds a {metadata.get('kind')!r} index of format "
                f"{metadata.get('format')!r}; this version reads bm25 format {INDEX_FORMAT}. "
                f"{_REBUILD.format(directory=directory)}"
            )
        _check_files(directory, metadata.get("files"))
        retriever = cls.__new__(cls)
        retriever.documents = load_corpus(directory / _DOCUMENTS_FILE)
        retriever._index = bm25s.BM25.load(str(directory / _BM25S_DIR), show_progress=False)
        if retriever._index.scores["num_docs"] != len(retriever.documents):
            raise ValueError(
                f"{directory}: the index covers {retriever._index.scores['num_docs']} documents "
                f"but {_DOCUMENTS_FILE} holds {len(retriever.documents)}; rebuild the index"
            )
        return retriever


_REBUILD = (
    "Rebuild it: delete {directory} and run `at2po retriever serve --corpus CORPUS.jsonl "
    "--index {directory}`"
)


def _file_records(directory: Path) -> dict[str, dict[str, int | str]]:
    """Size and SHA-256 of every file of a saved index but the metadata, by relative path."""
    paths = sorted(path for path in directory.rglob("*") if path.is_file())
    return {
        path.relative_to(directory).as_posix(): {
            "bytes": path.stat().st_size,
            "sha256": sha256_of(path),
        }
        for path in paths
        if path.name != _METADATA_FILE
    }


def _check_files(directory: Path, recorded: object) -> None:
    """ValueError naming the first file of the index that is missing or differs from the record
    in its metadata (e.g. a file copied from another index)."""
    if not isinstance(recorded, dict) or not recorded:
        raise ValueError(
            f"{directory / _METADATA_FILE} lists no index files. "
            f"{_REBUILD.format(directory=directory)}"
        )
    for name, record in recorded.items():
        path = directory / name
        if not path.is_file():
            raise ValueError(f"{path} is missing. {_REBUILD.format(directory=directory)}")
        same_size = isinstance(record, dict) and record.get("bytes") == path.stat().st_size
        if not same_size or record.get("sha256") != sha256_of(path):
            raise ValueError(
                f"{path} is not the file this index was saved with (its size or SHA-256 "
                f"differs from {_METADATA_FILE}; a file from another index?). "
                f"{_REBUILD.format(directory=directory)}"
            )


def _read_metadata(directory: str | Path) -> dict:
    """The metadata of a saved index; ``FileNotFoundError`` with a hint when there is none,
    ValueError when it is not a JSON object."""
    path = Path(directory) / _METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} holds no at2po index ({_METADATA_FILE} is missing); "
            "build one with `at2po retriever serve --corpus FILE --index DIR`"
        )
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} is not index metadata ({error}). {_REBUILD.format(directory=directory)}"
        ) from error
    if not isinstance(metadata, dict):
        raise ValueError(
            f"{path} is not index metadata (a JSON {type(metadata).__name__}, not an object). "
            f"{_REBUILD.format(directory=directory)}"
        )
    return metadata


def has_saved_index(directory: str | Path) -> bool:
    """True when ``directory`` holds an index written by :meth:`BM25Retriever.save`."""
    return (Path(directory) / _METADATA_FILE).is_file()
