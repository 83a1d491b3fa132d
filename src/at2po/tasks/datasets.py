"""Question files in the Search-R1 / FlashRAG layout, read into :class:`QAExample` rows.

One question per row (JSONL line or Parquet row)::

    {"id": "dev_17", "question": "Where was ...?", "golden_answers": ["Porto", "Oporto"],
     "data_source": "hotpotqa", "metadata": {...}}

``question`` and ``golden_answers`` are required. ``golden_answers`` may be a list of strings or
one string (numbers are turned into strings); when it is missing, Search-R1's
``reward_model.ground_truth.target`` is used (the Parquet files its scripts write keep both).
``id`` (string or integer) defaults to ``<data_source>-<row>``. ``data_source`` defaults to the
``data_source`` argument, else the file's name: ``hotpotqa/dev.jsonl`` (FlashRAG's layout, where
the file is named after its split) gives ``hotpotqa``, ``bamboogle.jsonl`` gives ``bamboogle``.
``metadata`` must be an object if present. Other fields are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUFFIXES = (".jsonl", ".parquet")
_SPLIT_NAMES = frozenset({"train", "dev", "val", "valid", "validation", "test"})


class DatasetError(ValueError):
    """A question file that cannot be read; the message names the file, the row and the field."""


@dataclass(frozen=True)
class QAExample:
    """One question with its accepted answers.

    id: unique within its file. question: the question text. golden_answers: every accepted
    answer (aliases). data_source: the dataset name, for per-dataset metrics. metadata: anything
    else (e.g. a synthetic question's type, hops and plan); not part of the hash.
    """

    id: str
    question: str
    golden_answers: tuple[str, ...]
    data_source: str
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.question.strip():
            raise ValueError(f"example {self.id!r}: the question is empty")
        if not isinstance(self.golden_answers, tuple) or not self.golden_answers:
            raise TypeError(
                f"example {self.id!r}: golden_answers must be a non-empty tuple of strings, "
                f"got {self.golden_answers!r}"
            )
        if not all(isinstance(answer, str) and answer.strip() for answer in self.golden_answers):
            raise ValueError(f"example {self.id!r}: every golden answer must be a non-empty string")


def load_questions(
    path: str | Path,
    *,
    limit: int | None = None,
    data_source: str | None = None,
    ensure_question_mark: bool = True,
) -> list[QAExample]:
    """Read questions from a ``.jsonl`` or ``.parquet`` file (layout in the module docstring).

    limit: keep only the first ``limit`` rows. data_source: used for rows without one.
    ensure_question_mark: strip the question and append ``?`` if it does not end with one (what
    the AT²PO and Search-R1 data scripts do). Raises :class:`DatasetError` naming the file, row
    and field for any malformed row, a duplicate id, or a file with no questions.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise DatasetError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r}; "
            f"question files must end with {' or '.join(SUFFIXES)}"
        )
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be at least 1 (or None), got {limit}")
    default_source = data_source or _source_from_path(path)
    rows = _jsonl_rows(path) if path.suffix == ".jsonl" else _parquet_rows(path)
    examples: list[QAExample] = []
    first_row_of: dict[str, int] = {}
    for row_number, record in rows:
        where = f"{path}, row {row_number}"
        example = _example(record, where, row_number, default_source, ensure_question_mark)
        if example.id in first_row_of:
            raise DatasetError(
                f"{where}: field 'id': {example.id!r} already used by row "
                f"{first_row_of[example.id]}; ids must be unique within a file"
            )
        first_row_of[example.id] = row_number
        examples.append(example)
        if limit is not None and len(examples) == limit:
            break
    if not examples:
        raise DatasetError(f"{path}: the file holds no questions")
    return examples


def _source_from_path(path: Path) -> str:
    if path.stem.lower() in _SPLIT_NAMES and path.parent.name:
        return path.parent.name
    return path.stem


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) per non-blank line; the row number is the line number."""
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(
                    f"{path}, row {line_number}: not valid JSON ({error.msg} at column "
                    f"{error.colno}); each line must hold one JSON object"
                ) from error


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based row number, row as a dict) per Parquet row, read in batches."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:
        raise DatasetError(f"{path}: not a readable Parquet file ({error})") from error
    row_number = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row_number += 1
            yield row_number, record


def _example(
    record: Any, where: str, row_number: int, default_source: str, ensure_question_mark: bool
) -> QAExample:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected an object, got {type(record).__name__}")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DatasetError(
            f"{where}: field 'question' must be a non-empty string, got {_describe(question)}"
        )
    question = question.strip()
    if ensure_question_mark and not question.endswith("?"):
        question += "?"
    source = record.get("data_source", default_source)
    if not isinstance(source, str) or not source:
        raise DatasetError(
            f"{where}: field 'data_source' must be a non-empty string, got {_describe(source)}"
        )
    raw_id = record.get("id", f"{source}-{row_number}")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or raw_id == "":
        raise DatasetError(
            f"{where}: field 'id' must be a non-empty string or an integer, got {_describe(raw_id)}"
        )
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise DatasetError(
            f"{where}: field 'metadata' must be an object, got {_describe(metadata)}"
        )
    return QAExample(
        id=str(raw_id),
        question=question,
        golden_answers=_golden_answers(record, where),
        data_source=source,
        metadata=metadata,
    )


def _golden_answers(record: dict[str, Any], where: str) -> tuple[str, ...]:
    field_name = "golden_answers"
    answers = record.get(field_name)
    if answers is None:
        target = _search_r1_target(record)
        if target is None:
            raise DatasetError(
                f"{where}: field 'golden_answers' is missing; give a list of accepted answers"
            )
        field_name, answers = "reward_model.ground_truth.target", target
    if isinstance(answers, str | int | float) and not isinstance(answers, bool):
        answers = [answers]
    if not isinstance(answers, list) or not answers:
        raise DatasetError(
            f"{where}: field '{field_name}' must be a non-empty list of strings, "
            f"got {_describe(answers)}"
        )
    cleaned = []
    for position, answer in enumerate(answers):
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise DatasetError(
                f"{where}: field '{field_name}[{position}]' must be a string, "
                f"got {_describe(answer)}"
            )
        if not str(answer).strip():
            raise DatasetError(f"{where}: field '{field_name}[{position}]' is an empty string")
        cleaned.append(str(answer).strip())
    return tuple(cleaned)


def _search_r1_target(record: dict[str, Any]) -> Any:
    reward_model = record.get("reward_model")
    if not isinstance(reward_model, dict):
        return None
    ground_truth = reward_model.get("ground_truth")
    return ground_truth.get("target") if isinstance(ground_truth, dict) else None


def _describe(value: Any) -> str:
    if value is None:
        return "no value"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"
