"""Learning results of finished runs as JSON lines (bench/results/learning.jsonl), one per run.

Reads run directories laid out as ``at2po compare`` writes them (``<root>/<preset>/seed<k>/``,
each with ``metrics.jsonl``) and prints, per run: ``preset``, ``seed``, ``generated_tokens``
(training rollouts), ``em_before``, ``em_after``, ``em_best`` (greedy held-out EM on the run's
eval split), ``novel_em_before``, ``novel_em_after`` (the novel-name world), ``wall_s`` (from
the run's first to last metrics record), ``tokens_to_reach`` (generated tokens at the first
evaluation whose EM reaches ``--reference``'s mean final EM; null if never), ``task`` and
``commit``.

Usage: ``python bench/learning.py runs/compare [--reference grpo] [--label quickstart]
[--task search] [--commit HASH]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path


def _records(run: Path) -> list[dict]:
    with (run / "metrics.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def summarise(run: Path) -> dict:
    """The fields of the module docstring (except ``tokens_to_reach`` and ``commit``)."""
    records = _records(run)
    evals = [r for r in records if "eval/em" in r]
    if not evals:
        raise ValueError(f"{run} has no evaluation in its metrics.jsonl")
    tokens = [r.get("rollout/generated_tokens_total", 0.0) for r in records]
    return {
        "preset": run.parent.name,
        "seed": int(run.name.removeprefix("seed")),
        "steps": int(records[-1]["step"]),
        "generated_tokens": int(max(tokens)),
        "em_before": evals[0]["eval/em"],
        "em_after": evals[-1]["eval/em"],
        "em_best": max(r["eval/em"] for r in evals),
        "novel_em_before": evals[0].get("eval_novel/em"),
        "novel_em_after": evals[-1].get("eval_novel/em"),
        "searches_before": evals[0].get("eval/tool_calls"),
        "searches_after": evals[-1].get("eval/tool_calls"),
        "wall_s": round(records[-1]["time"] - records[0]["time"], 1),
        "curve": [(int(r.get("rollout/generated_tokens_total", 0.0)), r["eval/em"]) for r in evals],
    }


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """Generated tokens at the first evaluation with EM >= ``target`` (None if none)."""
    return next((tokens for tokens, em in curve if em >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="directory holding <preset>/seed<k>/ runs")
    parser.add_argument("--reference", default="grpo", help="preset whose final EM is the bar")
    parser.add_argument("--label", default=None, help="a name for this experiment, stored as-is")
    parser.add_argument(
        "--task", default="search", help="the task the runs trained on (search, twc)"
    )
    parser.add_argument("--commit", default=None, help="the commit the runs ran (default: HEAD)")
    args = parser.parse_args()
    commit = (
        args.commit
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    )
    runs = [summarise(run) for run in sorted(args.root.glob("*/seed*")) if run.is_dir()]
    reference = [r["em_after"] for r in runs if r["preset"] == args.reference]
    target = statistics.mean(reference) if reference else None
    for run in runs:
        curve = run.pop("curve")
        run["tokens_to_reach"] = None if target is None else tokens_to_reach(curve, target)
        run["reference_em"] = target
        run["label"] = args.label
        run["task"] = args.task
        run["commit"] = commit
        print(json.dumps(run))


if __name__ == "__main__":
    main()
