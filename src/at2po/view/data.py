"""What the report shows, read from run directories: metrics and tree records, as one JSON object.

    {"runs": [{"name": "quickstart", "path": "runs/quickstart",
               "metrics": [metrics.jsonl records, numbers only],
               "trees": [tree records (:mod:`at2po.train.tree_record`), by step]}],
     "step": the step to show first (``--step``, else the newest step with trees)}

A directory given on the command line is a run when it holds ``metrics.jsonl``; otherwise the runs
are the directories below it (two levels at most) that do, as ``at2po compare`` lays them out
(``<out>/<preset>/seed<k>``), named by their path under it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from at2po.train.run_dir import RunDir


class ViewError(ValueError):
    """A run directory or file the report cannot be made from (the message says which and why)."""


def find_runs(directories: Sequence[Path]) -> list[tuple[str, Path]]:
    """(name, path) of every run under ``directories`` (module docstring), in the order given."""
    runs: list[tuple[str, Path]] = []
    for directory in directories:
        if not directory.is_dir():
            raise ViewError(f"{directory} is not a directory; give a run directory (runs/NAME)")
        if RunDir(directory).metrics.is_file():
            runs.append((directory.name or str(directory), directory))
            continue
        patterns = ("*/metrics.jsonl", "*/*/metrics.jsonl")
        below = sorted({p.parent for pattern in patterns for p in directory.glob(pattern)})
        if not below:
            raise ViewError(
                f"{directory} holds no run (no metrics.jsonl in it or below it); give a run "
                "directory such as runs/quickstart"
            )
        runs += [(p.relative_to(directory).as_posix(), p) for p in below]
    return runs


def load_metrics(path: Path) -> list[dict[str, float]]:
    """The numeric fields of each record of a ``metrics.jsonl`` (non-finite values dropped);
    a line that is not JSON is an error naming the file and the line."""
    records = []
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for number, line in enumerate(lines, start=1):
        try:
            records += [json.loads(line)] if line.strip() else []
        except json.JSONDecodeError as error:
            raise ViewError(
                f"{path}: line {number} is not JSON ({error.msg}); remove or repair that line"
            ) from None
    return [
        {
            key: value
            for key, value in record.items()
            if isinstance(value, (int, float)) and math.isfinite(value)
        }
        for record in records
    ]


def tree_files(run: Path) -> dict[int, Path]:
    """The run's tree records by step."""
    files = sorted(RunDir(run).trees.glob("step_*.json"))
    return {int(p.stem.removeprefix("step_")): p for p in files if p.stem[5:].isdigit()}


def load_tree_record(path: Path) -> dict[str, Any]:
    """One ``trees/step_*.json`` record; a damaged file is an error naming it."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ViewError(f"{path} is not JSON ({error}); delete it or rerun the step") from None
    if not isinstance(record, dict) or not isinstance(record.get("groups"), list):
        raise ViewError(f"{path} is not a tree record (no 'groups' list); delete it")
    return record


def load_run(name: str, path: Path, step: int | None) -> dict[str, Any]:
    """One run's metrics and tree records (only ``step``'s when given)."""
    files = tree_files(path)
    if step is not None:
        files = {s: f for s, f in files.items() if s == step}
    return {
        "name": name,
        "path": str(path),
        "metrics": load_metrics(RunDir(path).metrics),
        "trees": [load_tree_record(f) for _, f in sorted(files.items())],
    }


def report_data(directories: Sequence[Path], step: int | None = None) -> dict[str, Any]:
    """Everything the report shows (module docstring)."""
    runs = [load_run(name, path, step) for name, path in find_runs(directories)]
    steps = sorted({record["step"] for run in runs for record in run["trees"]})
    if step is not None and not steps:
        available = sorted({s for _, path in find_runs(directories) for s in tree_files(path)})
        raise ViewError(
            f"no run has trees for step {step}; steps with trees: "
            f"{', '.join(map(str, available)) or 'none (train.log_trees_every=0?)'}"
        )
    return {"runs": runs, "step": step if step is not None else (steps[-1] if steps else None)}
