"""End to end on a tiny random policy: every preset trains, a killed run resumes exactly, a
checkpoint evaluates to the numbers logged with it, checkpoints rotate, budgets stop runs."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from train_helpers import fast_overrides

from at2po.core.tree import TurnTree
from at2po.train.checkpoint import list_checkpoints
from at2po.train.config import load_config
from at2po.train.evaluate import evaluate_checkpoint
from at2po.train.presets import ALGORITHMS
from at2po.train.run_dir import read_metrics
from at2po.train.trainer import Trainer

PRESET_EXTRAS = {"dapo": ["credit.overlong_buffer=20"]}
# Leaf rewards used as values directly: the random policy always scores −1, so z-scored rewards
# would be 0 and nothing would move; raw −1 advantages make every step update the weights.
MOVING = ["credit.leaf_norm=none", "optim.lr=1e-3"]


def _finite(record: dict) -> bool:
    return all(math.isfinite(v) for k, v in record.items() if k not in ("step", "time"))


def _without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "time" and not k.startswith("perf/")}


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


def _cli(*args: str) -> list[str]:
    code = (
        "import argparse, sys\n"
        "from at2po.cli.train import add_parser\n"
        "parser = argparse.ArgumentParser()\n"
        "add_parser(parser.add_subparsers())\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "sys.exit(args.func(args))\n"
    )
    return [sys.executable, "-c", code, *args]


def test_resuming_from_a_checkpoint_reproduces_the_rest_of_the_run(tiny_policy_dir, tmp_path):
    """The files a run killed during step 4 leaves behind (checkpoints up to step 2, metrics up to
    step 3), resumed by a new trainer, give the metrics of the uninterrupted run."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    overrides = [
        *fast_overrides(tiny_policy_dir, whole),
        *MOVING,
        "train.steps=4",
        "train.save_every=2",
        "train.keep_last=5",
    ]
    Trainer(load_config("at2po", overrides)).train()
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "step_000004")
    lines = (cut / "metrics.jsonl").read_text().splitlines(keepends=True)
    (cut / "metrics.jsonl").write_text("".join(lines[:4]))  # steps 0..3

    Trainer(load_config("at2po", [*overrides, f"out_dir={cut}"]), resume=True).train()
    resumed = [_without_timing(r) for r in read_metrics(cut / "metrics.jsonl")]
    expected = [_without_timing(r) for r in read_metrics(whole / "metrics.jsonl")]
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4]
    assert resumed == expected
    assert resumed[3]["policy/grad_norm"] > 0  # the weights really moved after the checkpoint


def test_a_killed_run_resumes_exactly(tiny_policy_dir, tmp_path):
    """Three processes, as in real use: an uninterrupted run, a run killed (SIGKILL) after its
    step-2 checkpoint, and ``--resume`` of the killed run."""
    overrides = [
        *fast_overrides(tiny_policy_dir, tmp_path / "unused"),
        *MOVING,
        "train.steps=5",
        "train.save_every=2",
        "train.eval_every=2",
        "train.keep_last=1",
    ]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_cli("train", "at2po", *overrides, f"out_dir={whole}"), check=True)

    child = subprocess.Popen(_cli("train", "at2po", *overrides, f"out_dir={killed}"))
    marker = killed / "checkpoints" / "step_000002" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert marker.exists()
    assert max(r["step"] for r in read_metrics(killed / "metrics.jsonl")) < 5  # it was cut short

    subprocess.run(_cli("train", "at2po", *overrides, f"out_dir={killed}", "--resume"), check=True)
    resumed = [_without_timing(r) for r in read_metrics(killed / "metrics.jsonl")]
    expected = [_without_timing(r) for r in read_metrics(whole / "metrics.jsonl")]
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4, 5]
    assert resumed == expected
    assert resumed[3]["policy/grad_norm"] > 0  # the weights really moved after the checkpoint


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
