"""What resume promises (docs/training.md, "What resume promises"), one test per promise.

A run is resumed from its newest usable checkpoint and continues exactly: the metrics and the final
weights equal those of the run never interrupted, also after SIGKILLs at random points and inside a
checkpoint save. A damaged newest checkpoint is skipped, named and deleted; a torn last metrics line
is dropped; leftovers of an interrupted save are removed; a directory with no usable checkpoint is
refused and left as it was (no run at all, and bad ``--out`` paths: ``test_cli.py``).
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

from at2po.train.checkpoint import list_checkpoints, newest_usable_checkpoint
from at2po.train.config import ConfigError, load_config
from at2po.train.run_dir import read_metrics
from at2po.train.trainer import Trainer


def _overrides(policy: Path, out: Path) -> list[str]:
    """Four steps, evaluated at steps 2 and 4, a checkpoint after each step, the last two kept."""
    return [
        *fast_overrides(policy, out),
        *MOVING,
        "train.steps=4",
        "train.eval_every=2",
        "train.save_every=1",
        "train.keep_last=2",
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


def _assert_same_run(run: Path, whole: Path) -> None:
    """Every metric of every step and the final weights equal ``whole``'s."""
    resumed, expected = _metrics(run), _metrics(whole)
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4]
    assert resumed == expected
    assert resumed[4]["policy/grad_norm"] > 0  # the weights really moved after the checkpoint
    last = Path("checkpoints") / "step_000004"
    ours, theirs = _weights(run / last), _weights(whole / last)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


def _resume(policy: Path, run: Path) -> str:
    """Resume the run in ``run`` in this process until it ends; returns what it printed."""
    printed = io.StringIO()
    console = Console(file=printed, width=100)
    Trainer(load_config("at2po", _overrides(policy, run)), resume=True, console=console).train()
    return printed.getvalue()


def test_a_run_resumes_exactly_and_drops_a_torn_last_metrics_line(
    tiny_policy_dir, whole_run, tmp_path
):
    """The files a run killed while writing step 4's metrics line leaves behind: checkpoint 3,
    metrics up to step 3 and half of step 4's line, without its newline."""
    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    shutil.rmtree(run / "checkpoints" / "step_000004")
    lines = (whole_run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])
    printed = _resume(tiny_policy_dir, run)
    assert f"{run / 'metrics.jsonl'} ends in a partial line" in printed and "dropped" in printed
    assert f"resuming from step 3 (checkpoint {run / 'checkpoints' / 'step_000003'})" in printed
    _assert_same_run(run, whole_run)


def test_a_bad_metrics_line_before_the_last_is_an_error_naming_it(tmp_path):
    """Not a kill's doing (a kill tears only the last line), so it is not dropped silently."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 0}\n{"step": 1, "loss\n{"step": 2}\n')
    with pytest.raises(ConfigError, match=f"{metrics} line 2 is not JSON; delete or repair"):
        read_metrics(metrics)


def test_a_damaged_newest_checkpoint_and_a_save_leftover_are_named_and_removed(
    tiny_policy_dir, whole_run, tmp_path
):
    """Every metrics line kept (0..4), the step-4 checkpoint's weights emptied and a building
    directory of an interrupted save left behind: the run resumes from step 3, says which
    checkpoint it skipped and why and what it removed, and ends as the uninterrupted run did."""
    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    damaged = run / "checkpoints" / "step_000004"
    leftover = run / "checkpoints" / ".step_000005-building-k3j2"
    shutil.copytree(damaged, leftover)
    (damaged / "model.safetensors").write_bytes(b"")
    printed = _resume(tiny_policy_dir, run)
    lines = [line for line in printed.splitlines() if str(damaged) in line]
    assert len(lines) == 1 and "damaged" in lines[0] and "model.safetensors" in lines[0]
    assert f"removed {leftover}" in printed and not leftover.exists()
    assert f"resuming from step 3 (checkpoint {run / 'checkpoints' / 'step_000003'})" in printed
    _assert_same_run(run, whole_run)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "empty model.safetensors": ("model.safetensors", lambda p: p.write_bytes(b"")),
    "truncated model.safetensors": ("model.safetensors", _truncate),
    "truncated optimizer.pt": ("optimizer.pt", _truncate),
    "truncated trainer_state.json": ("trainer_state.json", _truncate),
    "missing trainer_state.json": ("trainer_state.json", Path.unlink),
    "truncated tokenizer.json": ("tokenizer.json", _truncate),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_passed_over_with_the_file_named(whole_run, tmp_path, damage):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(whole_run / "checkpoints", checkpoints)
    name, spoil = DAMAGE[damage]
    spoil(checkpoints / "step_000004" / name)
    usable, skipped = newest_usable_checkpoint(checkpoints)
    assert usable is not None and usable.path == checkpoints / "step_000003"
    assert usable.state["step"] == 3
    assert [path for path, _ in skipped] == [checkpoints / "step_000004"]
    assert skipped[0][1].startswith(name)


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_resume_without_a_usable_checkpoint_refuses_and_changes_nothing(
    tiny_policy_dir, whole_run, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    (run / "checkpoints" / "step_000004" / "optimizer.pt").write_bytes(b"")
    (run / "checkpoints" / "step_000003" / "trainer_state.json").unlink()
    before = _snapshot(run)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", "at2po", *_overrides(tiny_policy_dir, run), "--resume")
    message = str(exit_info.value)
    assert f"{run} has no usable checkpoint" in message and "\n" not in message
    assert "step_000004: optimizer.pt" in message and "step_000003: trainer_state.json" in message
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


@pytest.mark.slow
def test_a_run_killed_at_random_points_resumes_exactly(tiny_policy_dir, whole_run, tmp_path):
    """As in real use, each its own process: the run of ``whole_run`` SIGKILLed inside the save of
    its step-2 checkpoint, then twice at a seeded random moment after a resume has written its next
    checkpoint, each time continued by ``--resume``, which finishes it. Its metrics and final
    weights equal the uninterrupted run's."""
    killed = tmp_path / "killed"
    run = _overrides(tiny_policy_dir, killed)

    died = subprocess.run(_train(*run, die_in_save="step_000002"))
    assert died.returncode == -signal.SIGKILL
    names = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert len(names) == 2 and names[0].startswith(".step_000002-building-")
    assert names[1] == "step_000001"
    leftover = killed / "checkpoints" / names[0]

    rng = random.Random(CHAOS_SEED)
    printed = [
        _kill_after_next_checkpoint(_train(*run, "--resume"), killed, rng.uniform(0, 2))
        for _ in range(2)
    ]
    final = subprocess.run(_train(*run, "--resume"), stderr=subprocess.PIPE, text=True, check=True)
    printed.append(final.stderr)

    assert f"removed {leftover}" in printed[0]
    first = killed / "checkpoints" / "step_000001"
    assert f"resuming from step 1 (checkpoint {first})" in printed[0]
    assert all("resuming from step" in text for text in printed[1:])
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == [
        "step_000003",
        "step_000004",
    ]
    _assert_same_run(killed, whole_run)
