"""``at2po compare``: several presets on the same task, seeds and generated-token budget.

Every (preset, seed) run gets the same overrides, ``train.seed`` = seed and, when given, the same
``train.token_budget``; runs go to ``<out>/<preset>/seed<k>``. The task is built once and shared by
runs whose ``task`` settings agree. Results: a table (final and best held-out EM as mean ± std
over seeds, initial EM, generated tokens, wall time), ``compare.json`` with every run's eval
curve, and ``compare.png``: held-out EM against generated training tokens, one line per preset
(mean over seeds after interpolating each seed's curve onto a common token grid) with the band
between the lowest and highest seed.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from at2po.train.config import ConfigError, load_config
from at2po.train.run_dir import RunDir
from at2po.train.task import Task, build_task
from at2po.train.trainer import Trainer, TrainResult


@dataclass(frozen=True)
class CompareRun:
    preset: str
    seed: int
    result: TrainResult


def compare(
    presets: Sequence[str],
    seeds: int,
    out_dir: Path,
    token_budget: int | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    console: Console | None = None,
) -> list[CompareRun]:
    """Train every preset with every seed (module docstring); returns the runs in order."""
    if not presets or seeds < 1:
        raise ConfigError("compare needs at least one preset (--presets a,b) and --seeds >= 1")
    console = console or Console(stderr=True)
    configs = []
    for preset in presets:
        for seed in range(seeds):
            extra = [f"train.seed={seed}", f"out_dir={out_dir / preset / f'seed{seed}'}"]
            if token_budget is not None:
                extra.append(f"train.token_budget={token_budget}")
            configs.append((preset, seed, load_config(preset, [*overrides, *extra])))
    tasks: dict[str, Task] = {}
    runs = []
    for preset, seed, cfg in configs:
        key = cfg.task.model_dump_json()
        if key not in tasks:
            tasks[key] = build_task(cfg.task)
        console.rule(f"{preset} · seed {seed}")
        trainer = Trainer(
            cfg, resume=resume and RunDir(cfg.run_dir).holds_run(), task=tasks[key], console=console
        )
        runs.append(CompareRun(preset, seed, trainer.train()))
    write_results(runs, out_dir)
    console.print(comparison_table(runs))
    return runs


def comparison_table(runs: Sequence[CompareRun]) -> Table:
    """Per preset: final, best and initial held-out EM (mean ± std over seeds), tokens, time."""
    table = Table(title="at2po compare · held-out EM", header_style="bold")
    for column in ("preset", "seeds", "final EM", "best EM", "initial EM", "tokens", "time"):
        table.add_column(column, justify="left" if column == "preset" else "right")
    for preset, members in _by_preset(runs).items():
        results = [r.result for r in members]
        final = [r.after["eval/em"] for r in results if r.after]
        best = [r.best[1] for r in results if r.best]
        initial = [r.before["eval/em"] for r in results if r.before]
        table.add_row(
            preset,
            str(len(members)),
            _mean_std(final),
            _mean_std(best),
            _mean_std(initial),
            f"{statistics.mean(r.generated_tokens for r in results):,.0f}",
            f"{statistics.mean(r.seconds for r in results) / 60:.1f} min",
        )
    return table


def write_results(runs: Sequence[CompareRun], out_dir: Path) -> tuple[Path, Path]:
    """``compare.json`` (every run's eval curve) and ``compare.png`` (the plot)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = [
        {
            "preset": r.preset,
            "seed": r.seed,
            "run_dir": str(r.result.run_dir),
            "steps": r.result.steps,
            "generated_tokens": r.result.generated_tokens,
            "seconds": r.result.seconds,
            "evals": [
                {"step": step, "generated_tokens": tokens, **metrics}
                for step, tokens, metrics in r.result.evals
            ],
        }
        for r in runs
    ]
    json_path = out_dir / "compare.json"
    json_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    png_path = out_dir / "compare.png"
    plot_em_against_tokens(runs, png_path)
    return json_path, png_path


def plot_em_against_tokens(runs: Sequence[CompareRun], path: Path) -> None:
    """Held-out EM against generated training tokens: mean over seeds and min–max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for preset, members in _by_preset(runs).items():
        curves = [
            (
                np.array([t for _, t, _ in r.result.evals], dtype=float),
                np.array([m["eval/em"] for _, _, m in r.result.evals], dtype=float),
            )
            for r in members
            if r.result.evals
        ]
        if not curves:
            continue
        grid = np.linspace(0.0, max(tokens[-1] for tokens, _ in curves), 60)
        stacked = np.stack([np.interp(grid, tokens, em) for tokens, em in curves])
        (line,) = axes.plot(grid, stacked.mean(axis=0), label=f"{preset} (n={len(curves)})")
        if len(curves) > 1:
            axes.fill_between(
                grid, stacked.min(axis=0), stacked.max(axis=0), color=line.get_color(), alpha=0.2
            )
        for tokens, em in curves:
            axes.plot(tokens, em, "o", color=line.get_color(), markersize=3, alpha=0.6)
    axes.set_xlabel("generated training tokens")
    axes.set_ylabel("held-out EM (greedy)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _by_preset(runs: Sequence[CompareRun]) -> dict[str, list[CompareRun]]:
    out: dict[str, list[CompareRun]] = {}
    for run in runs:
        out.setdefault(run.preset, []).append(run)
    return out


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
