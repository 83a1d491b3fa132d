"""What a run shows on the terminal: a progress bar with the current phase, live reward and EM, and
a one-screen summary at the end. When the console is not a terminal (output redirected to a file
or a CI log) the bar is replaced by one line per step and per evaluation, each with the elapsed
time. Everything goes to stderr; ``enabled=False`` shows nothing."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


class TrainDisplay:
    """Progress of the steps of one run, with the phase being run and the latest numbers."""

    def __init__(self, console: Console, enabled: bool, total_steps: int, done_steps: int) -> None:
        self._console = console
        self._lines = enabled and not console.is_terminal
        self._total = total_steps
        self._step = done_steps
        self._start = time.perf_counter()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[phase]:<14}"),
            TextColumn("reward {task.fields[reward]}"),
            TextColumn("EM {task.fields[em]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled or self._lines,
        )
        self._task = self._progress.add_task(
            "train", total=total_steps, completed=done_steps, phase="", reward="–", em="–"
        )

    def __enter__(self) -> TrainDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def phase(self, name: str) -> None:
        self._progress.update(self._task, phase=name)
        if name.startswith("eval"):
            self._line(f"{name}: evaluating")

    def workers_ready(self, count: int, seconds: float) -> None:
        """One line saying how long the rollout workers took to start (redirected output only)."""
        self._line(f"workers: {count} rollout workers started in {seconds:.1f} s")

    def evaluated(self, metrics: Mapping[str, float]) -> None:
        """One line with the held-out numbers just measured (redirected output only)."""
        parts = [
            f"{label} {metrics[key]:.3f}"
            for key, label in (
                ("eval/em", "held-out EM"),
                ("eval/f1", "F1"),
                ("eval/tool_calls", "searches"),
                ("eval_novel/em", "novel-name EM"),
            )
            if key in metrics
        ]
        if parts:
            self._line(", ".join(parts))

    def eval_progress(self, done: int, total: int) -> None:
        self._progress.update(self._task, phase=f"eval {done}/{total}")

    def step_done(self, metrics: Mapping[str, float]) -> None:
        fields: dict[str, Any] = {"phase": ""}
        if "reward/mean" in metrics:
            fields["reward"] = f"{metrics['reward/mean']:+.3f}"
        if "eval/em" in metrics:
            fields["em"] = f"{metrics['eval/em']:.3f}"
        self._progress.update(self._task, advance=1, **fields)
        self._step += 1
        tokens = metrics.get("rollout/generated_tokens_total")
        self._line(
            f"step {self._step}/{self._total}: reward {fields.get('reward', '–')}"
            + (f", {tokens:,.0f} generated tokens" if tokens is not None else "")
        )

    def _line(self, text: str) -> None:
        if self._lines:
            elapsed = time.perf_counter() - self._start
            self._console.print(f"[{elapsed:7.1f} s] {text}", highlight=False, soft_wrap=True)


SUMMARY_ROWS: tuple[tuple[str, str], ...] = tuple(
    (f"{prefix}/{name}", f"{label} {what}")
    for prefix, label in (("eval", "held-out"), ("eval_novel", "novel names"))
    for name, what in (
        ("em", "EM"),
        ("f1", "F1"),
        ("format_ok", "format valid"),
        ("tool_calls", "searches / question"),
    )
)
"""Rows of the before/after table: metric key and label (rows without values are left out)."""


def summary_table(
    name: str,
    before: Mapping[str, float] | None,
    after: Mapping[str, float] | None,
    best: tuple[int, float] | None,
    steps: int,
    generated_tokens: int,
    seconds: float,
    run_dir: str,
) -> Table:
    """Held-out EM and F1 before and after, the best EM, tokens, steps and time of a run."""
    table = Table(title=f"at2po train · {name}", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change", justify="right")
    for key, label in SUMMARY_ROWS:
        first = None if before is None else before.get(key)
        last = None if after is None else after.get(key)
        if first is None and last is None:
            continue
        change = f"{last - first:+.3f}" if first is not None and last is not None else ""
        table.add_row(label, _fmt(first), _fmt(last), change)
    if best is not None:
        table.add_row("best EM", "", f"{best[1]:.3f}", f"step {best[0]}")
    table.add_row("steps", "", str(steps), "")
    table.add_row("generated tokens", "", f"{generated_tokens:,}", "")
    table.add_row("wall time", "", f"{seconds / 60:.1f} min", "")
    table.caption = f"run directory: {run_dir}"
    return table


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
