"""The text game through the training loop: configs/twc.yaml trains two steps on the real game,
and the game JVM does not outlive the trainer's process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from train_helpers import fast_overrides

from at2po.core.tree import TurnTree
from at2po.tasks.games import GameEnv
from at2po.train.config import load_config
from at2po.train.run_dir import read_metrics
from at2po.train.trainer import Trainer

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "twc.yaml"


def game_overrides(model_dir: Path, out_dir: Path) -> list[str]:
    """The trainer tests' fast settings, with room for a game observation after a turn."""
    return [
        *fast_overrides(model_dir, out_dir),
        "task.game.n_train=8",
        "task.game.n_test=2",
        "task.max_turns=3",
        "rollout.n_rows=4",
        "rollout.max_response_tokens=600",
        "train.eval_size=2",
    ]


@pytest.mark.slow
def test_twc_config_trains_two_steps_on_the_game(tiny_policy_dir, tmp_path):
    cfg = load_config(str(CONFIG), game_overrides(tiny_policy_dir, tmp_path / "run"))
    assert cfg.task.source == "game" and cfg.credit.estimator == "gigpo"
    trainer = Trainer(cfg)
    assert isinstance(trainer.task.env, GameEnv)
    result = trainer.train()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    assert all(math.isfinite(v) for r in records for k, v in r.items() if k != "time")
    for record in records[1:]:
        assert {"reward/success", "reward/invalid_turns", "policy/grad_norm"} <= set(record)
        assert record["policy/rollout_logp_diff_max"] <= 1e-4
    assert records[2]["eval/n"] == 2 and "eval/em" in records[2]
    assert result.steps == 2
    trees = json.loads((tmp_path / "run" / "trees" / "step_000002.json").read_text())
    tree = TurnTree.from_dict(trees["groups"][0]["tree"])
    assert len(tree.nodes) > 1


@pytest.mark.slow
def test_no_game_jvm_outlives_the_trainer_process(tiny_policy_dir, tmp_path):
    mark = uuid.uuid4().hex
    overrides = [*game_overrides(tiny_policy_dir, tmp_path / "run"), "train.steps=1"]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "at2po"), "train", str(CONFIG), *overrides],
        env={**os.environ, "AT2PO_TEST_MARK": mark},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["step"] == 1
    assert _processes_marked(mark) == []


def _processes_marked(mark: str) -> list[int]:
    """Processes that inherited ``AT2PO_TEST_MARK=mark`` (the trainer's children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"AT2PO_TEST_MARK={mark}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def test_game_settings_twx_refuses_stop_the_run_with_a_config_error(tmp_path):
    from at2po.train.config import ConfigError
    from at2po.train.task import build_task

    cfg = load_config(str(CONFIG), ["task.game.params=numLocations=0", f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"task\.game\.params='numLocations=0'.*greater than"):
        build_task(cfg.task)
