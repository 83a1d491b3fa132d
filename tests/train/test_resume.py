"""What resume promises (docs/training.md, "What resume promises"), one test per promise.

A run is resumed from its newest usable checkpoint and continues exactly: the metrics and the final
weights equal those of the run never interrupted. A damaged newest checkpoint is skipped, named and
deleted; a torn last metrics line is dropped; leftovers of an interrupted save are removed; a
directory with no run, or with no usable checkpoint, is refused and left as it was.
"""

from __future__ import annotations

import io
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from train_helpers import MOVING, fast_overrides, run_cli

from at2po.train.checkpoint import list_checkpoints
from at2po.train.config import load_config
from at2po.train.run_dir import read_metrics
from at2po.train.trainer import Trainer


def _overrides(policy: Path, out: Path) -> list[str]:
    """Four steps, checkpoints at steps 2 and 4, both kept."""
    return [
        *fast_overrides(policy, out),
        *MOVING,
        "train.steps=4",
        "train.save_every=2",
        "train.keep_last=5",
    ]


@pytest.fixture(scope="module")
def whole_run(tiny_policy_dir, tmp_path_factory) -> Path:
    """The uninterrupted run the resumed ones are compared with."""
    out = tmp_path_factory.mktemp("whole") / "run"
    Trainer(load_config("at2po", _overrides(tiny_policy_dir, out))).train()
    return out


def _without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "time" and not k.startswith("perf/")}


def _metrics(run: Path) -> list[dict]:
    return [_without_timing(r) for r in read_metrics(run / "metrics.jsonl")]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "model.safetensors")


def _assert_same_run(run: Path, whole: Path, last: str) -> None:
    """Every metric of every step and the weights of checkpoint ``last`` equal ``whole``'s."""
    resumed, expected = _metrics(run), _metrics(whole)
    assert [r["step"] for r in resumed] == [r["step"] for r in expected]
    assert resumed == expected
    assert resumed[3]["policy/grad_norm"] > 0  # the weights really moved after the checkpoint
    ours, theirs = _weights(run / "checkpoints" / last), _weights(whole / "checkpoints" / last)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


def _resume(policy: Path, run: Path) -> str:
    """Resume the run in ``run`` in this process until it ends; returns what it printed."""
    printed = io.StringIO()
    console = Console(file=printed, width=100)
    Trainer(load_config("at2po", _overrides(policy, run)), resume=True, console=console).train()
    return printed.getvalue()


def _copy_cut_after_step_3(whole: Path, copy: Path) -> list[str]:
    """``whole`` as a run killed during step 4 leaves it: checkpoints up to step 2, metrics up to
    step 3; returns the metrics lines of ``whole``."""
    shutil.copytree(whole, copy)
    shutil.rmtree(copy / "checkpoints" / "step_000004")
    lines = (whole / "metrics.jsonl").read_text().splitlines(keepends=True)
    (copy / "metrics.jsonl").write_text("".join(lines[:4]))
    return lines


def test_resuming_from_a_checkpoint_reproduces_the_rest_of_the_run(
    tiny_policy_dir, whole_run, tmp_path
):
    cut = tmp_path / "cut"
    _copy_cut_after_step_3(whole_run, cut)
    printed = _resume(tiny_policy_dir, cut)
    assert f"resuming from step 2 (checkpoint {cut / 'checkpoints' / 'step_000002'})" in printed
    _assert_same_run(cut, whole_run, "step_000004")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "empty model.safetensors": ("model.safetensors", lambda p: p.write_bytes(b"")),
    "truncated model.safetensors": ("model.safetensors", _truncate),
    "truncated optimizer.pt": ("optimizer.pt", _truncate),
    "truncated trainer_state.json": ("trainer_state.json", _truncate),
    "missing trainer_state.json": ("trainer_state.json", Path.unlink),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_newest_checkpoint_is_skipped_named_and_replaced(
    tiny_policy_dir, whole_run, tmp_path, damage
):
    """Every metrics line kept (0..4), the step-4 checkpoint damaged: the run resumes from step 2,
    says which checkpoint it skipped and why, and ends as the uninterrupted run did."""
    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    name, spoil = DAMAGE[damage]
    damaged = run / "checkpoints" / "step_000004"
    spoil(damaged / name)
    printed = _resume(tiny_policy_dir, run)
    lines = [line for line in printed.splitlines() if str(damaged) in line]
    assert len(lines) == 1 and "damaged" in lines[0] and name in lines[0]
    assert f"resuming from step 2 (checkpoint {run / 'checkpoints' / 'step_000002'})" in printed
    _assert_same_run(run, whole_run, "step_000004")


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tiny_policy_dir, whole_run, tmp_path):
    """A kill while step 4's metrics line was being written leaves half of it, no newline."""
    run = tmp_path / "run"
    lines = _copy_cut_after_step_3(whole_run, run)
    torn = lines[4][: len(lines[4]) // 2]
    with (run / "metrics.jsonl").open("a") as metrics:
        metrics.write(torn)
    printed = _resume(tiny_policy_dir, run)
    assert f"{run / 'metrics.jsonl'} ends in a partial line" in printed and "dropped" in printed
    _assert_same_run(run, whole_run, "step_000004")


def test_leftovers_of_an_interrupted_save_are_removed_and_named(
    tiny_policy_dir, whole_run, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    leftover = run / "checkpoints" / ".step_000005-building-k3j2"
    shutil.copytree(run / "checkpoints" / "step_000004", leftover)
    (leftover / "trainer_state.json").unlink()
    printed = _resume(tiny_policy_dir, run)  # the run had ended: nothing more is trained
    assert not leftover.exists()
    assert f"removed {leftover}" in printed
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_000002",
        "step_000004",
    ]


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_resume_without_a_usable_checkpoint_refuses_and_changes_nothing(
    tiny_policy_dir, whole_run, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    (run / "checkpoints" / "step_000004" / "optimizer.pt").write_bytes(b"")
    (run / "checkpoints" / "step_000002" / "trainer_state.json").unlink()
    before = _snapshot(run)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", "at2po", *_overrides(tiny_policy_dir, run), "--resume")
    message = str(exit_info.value)
    assert f"{run} has no usable checkpoint" in message and "\n" not in message
    assert "step_000004: optimizer.pt" in message and "step_000002: trainer_state.json" in message
    assert f"delete {run}" in message
    assert _snapshot(run) == before


# ``at2po train`` in a new process. argv[1] names a checkpoint (or is empty): the process SIGKILLs
# itself inside that checkpoint's save, once every file is written into the hidden building
# directory and before the rename that completes the checkpoint. The save is the real one; only
# the moment of death is chosen.
_CHILD = """
import argparse, contextlib, os, signal, sys
from at2po.cli.train import add_parser
from at2po.train import checkpoint

die_in_save, argv = sys.argv[1], sys.argv[2:]
real_staged_dir = checkpoint.staged_dir

@contextlib.contextmanager
def staged_dir_that_dies(target):
    with real_staged_dir(target) as staging:
        yield staging
        if target.name == die_in_save:
            os.kill(os.getpid(), signal.SIGKILL)

checkpoint.staged_dir = staged_dir_that_dies
parser = argparse.ArgumentParser()
add_parser(parser.add_subparsers())
args = parser.parse_args(argv)
sys.exit(args.func(args))
"""

CHAOS_SEED = 16


def _train(*args: str, die_in_save: str = "") -> list[str]:
    return [sys.executable, "-c", _CHILD, die_in_save, "train", "at2po", *args]


def _newest_step(run: Path) -> int:
    return max((step for step, _ in list_checkpoints(run / "checkpoints")), default=0)


def _kill_after_next_checkpoint(command: list[str], run: Path, delay: float) -> str:
    """Start ``command`` (a resume of ``run``), SIGKILL it ``delay`` seconds after it writes a
    checkpoint newer than the one it resumed from; returns its stderr."""
    resumed_from = _newest_step(run)
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while _newest_step(run) <= resumed_from and child.poll() is None:
        assert time.monotonic() < deadline, "the resumed run wrote no checkpoint in 300 s"
        time.sleep(0.02)
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    return child.communicate()[1]


def test_a_run_killed_at_random_points_resumes_exactly(tiny_policy_dir, tmp_path):
    """As in real use, each run its own process: an uninterrupted run, and the same run SIGKILLed
    first inside the save of its step-2 checkpoint, then twice at seeded random moments after a
    resume has written its next checkpoint, each time continued by ``--resume``, which finishes it.
    Its metrics and final weights equal the uninterrupted run's."""
    overrides = [
        *fast_overrides(tiny_policy_dir, tmp_path / "unused"),
        *MOVING,
        "train.steps=6",
        "train.save_every=1",
        "train.eval_every=2",
        "train.keep_last=1",
    ]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_train(*overrides, f"out_dir={whole}"), check=True)
    run = [*overrides, f"out_dir={killed}"]

    died = subprocess.run(_train(*run, die_in_save="step_000002"))
    assert died.returncode == -signal.SIGKILL
    names = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert len(names) == 2 and names[0].startswith(".step_000002-building-")
    assert names[1] == "step_000001"
    leftover = killed / "checkpoints" / names[0]

    rng = random.Random(CHAOS_SEED)
    printed = [_kill_after_next_checkpoint(_train(*run, "--resume"), killed, rng.uniform(0, 2))]
    assert f"removed {leftover}" in printed[0]
    printed.append(_kill_after_next_checkpoint(_train(*run, "--resume"), killed, rng.uniform(0, 2)))
    final = subprocess.run(_train(*run, "--resume"), stderr=subprocess.PIPE, text=True, check=True)
    printed.append(final.stderr)

    assert "resuming from step 1 (checkpoint" in printed[0]
    assert all("resuming from step" in text for text in printed)
    assert [p.name for p in (killed / "checkpoints").iterdir()] == ["step_000006"]
    _assert_same_run(killed, whole, "step_000006")
