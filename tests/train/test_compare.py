"""``compare``: every preset and seed trained on one budget; table, JSON curves and the plot."""

from __future__ import annotations

import json

from rich.console import Console
from train_helpers import fast_overrides

from at2po.train.compare import compare, comparison_table


def test_compare_two_presets_over_two_seeds(tiny_policy_dir, tmp_path):
    overrides = [
        o for o in fast_overrides(tiny_policy_dir, tmp_path) if not o.startswith("out_dir")
    ] + ["train.steps=4"]
    out = tmp_path / "cmp"
    runs = compare(["at2po", "grpo"], 2, out, token_budget=200, overrides=overrides)
    assert [(r.preset, r.seed) for r in runs] == [
        ("at2po", 0),
        ("at2po", 1),
        ("grpo", 0),
        ("grpo", 1),
    ]
    for run in runs:
        assert run.result.generated_tokens >= 200 or run.result.steps == 4
        assert run.result.before is not None and run.result.after is not None
        assert (out / run.preset / f"seed{run.seed}" / "metrics.jsonl").is_file()
    record = json.loads((out / "compare.json").read_text())
    assert len(record) == 4 and all(r["evals"][0]["step"] == 0 for r in record)
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    console = Console(record=True, width=120)
    console.print(comparison_table(runs))
    text = console.export_text()
    assert "at2po" in text and "grpo" in text and "final EM" in text
