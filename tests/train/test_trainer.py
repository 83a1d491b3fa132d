"""End to end on a tiny random policy: every preset trains, a checkpoint evaluates to the numbers
logged with it, checkpoints rotate, budgets stop runs (resume: ``test_resume.py``)."""

from __future__ import annotations

import json
import math

import pytest
from train_helpers import MOVING, fast_overrides

from at2po.core.tree import TurnTree
from at2po.train.checkpoint import list_checkpoints
from at2po.train.config import load_config
from at2po.train.evaluate import evaluate_checkpoint
from at2po.train.presets import ALGORITHMS
from at2po.train.run_dir import read_metrics
from at2po.train.trainer import Trainer

PRESET_EXTRAS = {"dapo": ["credit.overlong_buffer=20"]}


def _finite(record: dict) -> bool:
    return all(math.isfinite(v) for k, v in record.items() if k not in ("step", "time"))


@pytest.mark.parametrize("preset", ALGORITHMS)
def test_every_preset_trains_two_steps_with_finite_metrics(tiny_policy_dir, tmp_path, preset):
    overrides = fast_overrides(tiny_policy_dir, tmp_path / "run") + PRESET_EXTRAS.get(preset, [])
    result = Trainer(load_config(preset, overrides)).train()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    assert all(_finite(r) for r in records)
    for record in records[1:]:
        assert record["policy/rollout_logp_diff_max"] <= 1e-4
        assert {"loss/policy", "policy/grad_norm", "reward/mean", "perf/seconds_update"} <= set(
            record
        )
    assert "eval/em" in records[0] and "eval/em" in records[2]
    assert records[0]["eval_novel/n"] == 4 and "eval_novel/em" in records[2]
    if preset == "grpo":
        assert "loss/kl" in records[1]
    assert result.steps == 2 and result.generated_tokens > 0
    assert [step for step, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [2]
    trees = json.loads((tmp_path / "run" / "trees" / "step_000002.json").read_text())
    assert len(trees["groups"]) == 2
    tree = TurnTree.from_dict(trees["groups"][0]["tree"])
    assert all(tree.is_leaf(leaf) for leaf in trees["groups"][0]["row_leaves"])


def test_a_checkpoint_evaluates_to_the_numbers_logged_with_it(tiny_policy_dir, tmp_path):
    overrides = [*fast_overrides(tiny_policy_dir, tmp_path / "run"), *MOVING]
    Trainer(load_config("at2po", overrides)).train()
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000002"
    logged = json.loads((checkpoint / "trainer_state.json").read_text())["eval"]
    _, metrics = evaluate_checkpoint(checkpoint)
    assert metrics["eval/n"] == 4
    assert {k: v for k, v in metrics.items()} == logged
    # the test split is another set of questions, evaluated the same way
    _, test_metrics = evaluate_checkpoint(checkpoint, split="test")
    assert test_metrics["eval/n"] == 4


def test_checkpoints_rotate_atomically_and_the_token_budget_stops_the_run(
    tiny_policy_dir, tmp_path
):
    overrides = [
        *fast_overrides(tiny_policy_dir, tmp_path / "run"),
        "train.steps=10",
        "train.save_every=1",
        "train.keep_last=2",
        "train.token_budget=300",
        "train.tensorboard=true",
    ]
    result = Trainer(load_config("grpo", overrides)).train()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    totals = [r["rollout/generated_tokens_total"] for r in records[1:]]
    assert totals[-1] >= 300 > totals[-2]  # stopped by the step that crossed the budget
    assert result.steps == len(totals) < 10
    assert "eval/em" in records[-1]
    steps = [step for step, _ in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert steps == [result.steps - 1, result.steps]
    leftovers = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
    assert sorted(leftovers) == [f"step_{s:06d}" for s in steps]
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
