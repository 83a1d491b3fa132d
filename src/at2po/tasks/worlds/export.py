"""Write worlds to disk in the layouts the rest of the library (and Search-R1/FlashRAG) read.

``export_splits(worlds, out_dir)`` writes::

    out_dir/corpus.jsonl      every split's documents, {"id", "contents"} per line (one index
                              serves all splits: their names never overlap)
    out_dir/train.jsonl       questions, {"id", "question", "golden_answers", "data_source",
    out_dir/train.parquet     "metadata"} per row, as JSONL and as Parquet
    out_dir/dev.jsonl …       (one pair per split)
    out_dir/manifest.json     each split's WorldConfig, counts, and question-type counts

Read them back with :func:`at2po.tasks.retrieval.corpus.load_corpus` and
:func:`at2po.tasks.datasets.load_questions`.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from at2po.tasks.datasets import QAExample
from at2po.tasks.retrieval.corpus import write_corpus
from at2po.tasks.worlds.generator import World

FORMATS = ("jsonl", "parquet")

_FACT = pa.struct([("subject", pa.string()), ("relation", pa.string()), ("value", pa.string())])
_HOP = pa.struct([("subject", pa.string()), ("subject_ref", pa.int32()), ("relation", pa.string())])
_COMBINE = pa.struct([("op", pa.string()), ("hops", pa.list_(pa.int32())), ("value", pa.string())])
QUESTION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("golden_answers", pa.list_(pa.string())),
        ("data_source", pa.string()),
        (
            "metadata",
            pa.struct(
                [
                    ("type", pa.string()),
                    ("corpus", pa.string()),
                    ("hops", pa.int32()),
                    ("supporting_docs", pa.list_(pa.string())),
                    ("supporting_facts", pa.list_(_FACT)),
                    ("plan", pa.struct([("hops", pa.list_(_HOP)), ("combine", _COMBINE)])),
                ]
            ),
        ),
    ]
)
"""Parquet schema of a question file: the FlashRAG fields plus the world metadata as a struct."""


def question_record(example: QAExample) -> dict[str, Any]:
    """One question as a plain dict in the Search-R1/FlashRAG layout."""
    return {
        "id": example.id,
        "question": example.question,
        "golden_answers": list(example.golden_answers),
        "data_source": example.data_source,
        "metadata": example.metadata,
    }


def write_questions_jsonl(questions: Iterable[QAExample], path: str | Path) -> None:
    """One JSON object per line (:func:`question_record`)."""
    with Path(path).open("w", encoding="utf-8") as out:
        for example in questions:
            out.write(json.dumps(question_record(example), ensure_ascii=False) + "\n")


def write_questions_parquet(questions: Sequence[QAExample], path: str | Path) -> None:
    """A Parquet file with :data:`QUESTION_SCHEMA`."""
    table = pa.Table.from_pylist([question_record(q) for q in questions], schema=QUESTION_SCHEMA)
    pq.write_table(table, Path(path))


def export_splits(
    worlds: Mapping[str, World], out_dir: str | Path, formats: Sequence[str] = FORMATS
) -> dict[str, Path]:
    """Write the corpus, the question files and a manifest (layout in the module docstring).

    Returns the written paths by name (``corpus``, ``manifest``, ``train.jsonl``, …).
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"unknown question formats {unknown or formats}; choose from {FORMATS}")
    if not worlds:
        raise ValueError("no worlds to export; give at least one split with questions")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"corpus": out / "corpus.jsonl", "manifest": out / "manifest.json"}
    write_corpus((d for world in worlds.values() for d in world.documents), written["corpus"])
    manifest: dict[str, Any] = {"corpus": "corpus.jsonl", "splits": {}}
    for split, world in worlds.items():
        for fmt in formats:
            path = out / f"{split}.{fmt}"
            if fmt == "jsonl":
                write_questions_jsonl(world.questions, path)
            else:
                write_questions_parquet(world.questions, path)
            written[f"{split}.{fmt}"] = path
        manifest["splits"][split] = {
            "config": dataclasses.asdict(world.config),
            "documents": len(world.documents),
            "entities": len(world.entities),
            "questions": len(world.questions),
            "question_types": dict(Counter(q.metadata["type"] for q in world.questions)),
            "files": [f"{split}.{fmt}" for fmt in formats],
        }
    written["manifest"].write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return written
