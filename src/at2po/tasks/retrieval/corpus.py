"""Search corpora in the Search-R1 JSONL layout: one ``{"id": str, "contents": str}`` per line.

``contents`` starts with the quoted title line, e.g.
``"\\"Maren Tolvik\\"\\nMaren Tolvik was born in …"`` (the layout of Search-R1's
``wiki-18.jsonl``). Lines that carry ``title`` and ``text`` instead of ``contents`` (the BEIR
layout) are accepted and joined into that form. Other fields are ignored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Document:
    """One searchable document: its corpus id and its full text (title line first)."""

    doc_id: str
    contents: str


def load_corpus(path: str | Path) -> list[Document]:
    """Read a JSONL corpus; raise ``ValueError`` naming the line when a record is malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"corpus file {path} does not exist; pass a JSONL file with one "
            '{"id": ..., "contents": ...} object per line'
        )
    documents: list[Document] = []
    seen_ids: set[str] = set()
    with path.open(encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            document = _parse_record(line, where=f"{path}:{line_no}")
            if document.doc_id in seen_ids:
                raise ValueError(
                    f"{path}:{line_no}: duplicate document id {document.doc_id!r}; "
                    "every document needs its own id"
                )
            seen_ids.add(document.doc_id)
            documents.append(document)
    if not documents:
        raise ValueError(f"corpus file {path} holds no documents")
    return documents


def write_corpus(documents: Iterable[Document], path: str | Path) -> None:
    """Write documents as Search-R1 JSONL (``id``, ``contents``), read by :func:`load_corpus`."""
    with Path(path).open("w", encoding="utf-8") as out:
        for document in documents:
            record = {"id": document.doc_id, "contents": document.contents}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def documents_fingerprint(documents: Sequence[Document]) -> str:
    """SHA-256 over every (id, contents) pair in order: equal fingerprints mean the same corpus."""
    digest = hashlib.sha256()
    for document in documents:
        digest.update(document.doc_id.encode("utf-8"))
        digest.update(b"\x00")
        digest.update(document.contents.encode("utf-8"))
        digest.update(b"\x01")
    return digest.hexdigest()


def _parse_record(line: str, where: str) -> Document:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error.msg})") from error
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    doc_id = record.get("id")
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if not isinstance(doc_id, str) or not doc_id:
        raise ValueError(f'{where}: every document needs a non-empty "id" (a string)')
    contents = record.get("contents")
    if contents is None and isinstance(record.get("text"), str):
        title = record.get("title")
        contents = f'"{title}"\n{record["text"]}' if isinstance(title, str) else record["text"]
    if not isinstance(contents, str):
        raise ValueError(
            f'{where}: document {doc_id!r} needs a "contents" string '
            '(or "title" and "text" strings)'
        )
    return Document(doc_id=doc_id, contents=contents)
