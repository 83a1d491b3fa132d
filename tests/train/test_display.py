"""Progress when the output is redirected: a line per step, per evaluation and for the rollout
workers' start, with the time."""

from __future__ import annotations

import io
import re

from rich.console import Console

from at2po.train.display import TrainDisplay, summary_table


def test_redirected_runs_print_a_line_per_step_and_evaluation():
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=False, width=200)
    with TrainDisplay(console, enabled=True, total_steps=2, done_steps=0) as display:
        display.phase("workers")
        display.workers_ready(2, 3.14)
        display.phase("eval")
        display.evaluated({"eval/em": 0.32, "eval/f1": 0.325, "eval/tool_calls": 1.0})
        display.phase("rollout")
        display.step_done({"reward/mean": 0.5, "rollout/generated_tokens_total": 3141.0})
    lines = stream.getvalue().splitlines()
    assert [re.sub(r"^\[\s*\d+\.\d s\] ", "", line) for line in lines] == [
        "workers: 2 rollout workers started in 3.1 s",
        "eval: evaluating",
        "held-out EM 0.320, F1 0.325, searches 1.000",
        "step 1/2: reward +0.500, 3,141 generated tokens",
    ]


def test_a_disabled_display_shows_nothing():
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=False)
    with TrainDisplay(console, enabled=False, total_steps=1, done_steps=0) as display:
        display.step_done({"reward/mean": 0.5})
    assert stream.getvalue() == ""


def test_the_summary_has_both_held_out_sets_before_and_after():
    before = {"eval/em": 0.32, "eval/tool_calls": 1.0, "eval_novel/em": 0.01}
    after = {"eval/em": 0.955, "eval/tool_calls": 1.68, "eval_novel/em": 0.015}
    stream = io.StringIO()
    Console(file=stream, width=120).print(
        summary_table("quickstart", before, after, (10, 0.955), 20, 64000, 600.0, "runs/x")
    )
    text = stream.getvalue()
    assert re.search(r"held-out EM\s+│\s+0\.320\s+│\s+0\.955\s+│\s+\+0\.635", text)
    assert re.search(r"held-out searches / question\s+│\s+1\.000\s+│\s+1\.680", text)
    assert re.search(r"novel names EM\s+│\s+0\.010\s+│\s+0\.015", text)
    assert "format valid" not in text  # rows without values are left out
