"""The text game through the training loop: configs/twc.yaml trains two steps on the real game,
a JVM killed mid-rollout ends only the trajectories it held, and the game JVM does not outlive
the trainer's process."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from rich.console import Console
from train_helpers import fast_overrides
from transformers import AutoModelForCausalLM

from at2po.core.tree import TurnTree
from at2po.models.game_bootstrap import GameBootstrapConfig, build_game_policy
from at2po.models.sft import SFTConfig
from at2po.models.tiny import TinyModelConfig
from at2po.rollout.codec import Codec
from at2po.rollout.config import RolloutConfig
from at2po.rollout.hf_engine import HFEngine
from at2po.rollout.rollouts import rollout
from at2po.rollout.turns import intervention_ids
from at2po.tasks.games import SMALL_SETTINGS, GameEnv, GameEnvConfig, GameExample, JvmHost
from at2po.train.config import load_config
from at2po.train.policy import load_tokenizer
from at2po.train.run_dir import read_metrics
from at2po.train.trainer import Trainer

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "twc.yaml"


@pytest.fixture(scope="module")
def game_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny policy with the game tokenizer (game tags as tokens; a twc prompt is ~300 tokens,
    a view ~250) and a 2,048-token context, after one SFT step on six expert games: it still
    writes mostly nonsense, which is all these tests need."""
    directory = tmp_path_factory.mktemp("game_policy")
    cfg = GameBootstrapConfig(
        demo_games=6,
        model=TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2),
        sft=SFTConfig(steps=1, batch_size=2),
        vocab_size=400,
        device="cpu",
        eval_games=0,
    )
    build_game_policy(directory, cfg, Console(stderr=True))
    return directory


def game_overrides(model_dir: Path, out_dir: Path) -> list[str]:
    """The trainer tests' fast settings, with room for game observations after a turn."""
    return [
        *fast_overrides(model_dir, out_dir),
        "task.game.n_train=8",
        "task.game.n_test=2",
        "task.max_turns=3",
        "rollout.n_rows=4",
        "rollout.max_response_tokens=1000",
        "rollout.max_context_tokens=2048",
        "optim.micro_batch_tokens=2048",
        "train.eval_size=2",
    ]


def test_twc_config_trains_two_steps_on_the_game(game_policy_dir, tmp_path):
    cfg = load_config(str(CONFIG), game_overrides(game_policy_dir, tmp_path / "run"))
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
    assert any(node.finish == "tool_call" for node in tree.nodes)  # the game answered turns
    assert any(node.obs_ids for node in tree.nodes)


def test_no_game_jvm_outlives_the_trainer_process(game_policy_dir, tmp_path):
    mark = uuid.uuid4().hex
    overrides = [*game_overrides(game_policy_dir, tmp_path / "run"), "train.steps=1"]
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


class KillingEngine(HFEngine):
    """The real engine; after generating round ``kill_after`` it kills the game JVM for real
    (SIGKILL), so the env steps of that round find it dead."""

    def __init__(self, model, tokenizer, host: JvmHost, kill_after: int) -> None:
        super().__init__(model, tokenizer)
        self.host, self.kill_after, self.rounds = host, kill_after, 0

    def generate(self, requests):
        results = super().generate(requests)
        self.rounds += 1
        if self.rounds == self.kill_after:
            os.kill(self.host.pid, signal.SIGKILL)
            while self.host.alive:
                time.sleep(0.05)
        return results


def test_a_jvm_killed_mid_rollout_ends_only_its_trajectories(game_policy_dir):
    host = JvmHost()
    try:
        env = GameEnv(GameEnvConfig(max_turns=3, require_think=True), host=host)
        tokenizer = load_tokenizer(game_policy_dir)
        model = AutoModelForCausalLM.from_pretrained(game_policy_dir).eval()
        codec = Codec.from_tokenizer(tokenizer)
        cfg = RolloutConfig(
            mode="chain", n_rows=2, max_turn_tokens=8, max_response_tokens=1000,
            max_context_tokens=2048, seed=0,
        )  # fmt: skip
        games = [GameExample("twc", SMALL_SETTINGS["twc"], "train", seed) for seed in (0, 1)]
        with torch.no_grad():
            killed = rollout(KillingEngine(model, tokenizer, host, 1), codec, env, games, cfg)
            after = rollout(HFEngine(model, tokenizer), codec, env, games, cfg)
        ends = [g.tree.nodes[leaf].finish for g in killed.groups for leaf in g.tree.leaves()]
        assert ends == ["error"] * 4  # every trajectory lived in the killed JVM
        assert killed.metrics["rollout/tool_errors"] == 4 and host.generation == 1
        firsts = [g.tree.nodes[n] for g in after.groups for n in g.tree.children(0)]
        assert len(firsts) == 4 and all(node.finish != "error" for node in firsts)
        assert after.metrics["rollout/tool_errors"] == 0
    finally:
        host.close()


def test_t2po_trains_two_steps_on_the_game(game_policy_dir, tmp_path):
    """T²PO on the game: TTI forces `</think>`, a newline and `<action>` (each one token of the
    game tokenizer), TDS redraws turns, and the step logs the t2po/* metrics."""
    t2po = ["rollout.tti=true", "rollout.tds=true", "credit.invalid_action_penalty=0.1"]
    cfg = load_config(str(CONFIG), [*game_overrides(game_policy_dir, tmp_path / "run"), *t2po])
    trainer = Trainer(cfg)
    tokenizer = trainer.tokenizer
    forced, think_start = intervention_ids(trainer.codec, trainer.task.env)
    assert tokenizer.convert_ids_to_tokens([think_start]) == ["<think>"]
    assert tokenizer.decode(list(forced)) == "</think>\n<action>"
    assert forced[0] == tokenizer.convert_tokens_to_ids("</think>")
    assert forced[-1] == tokenizer.convert_tokens_to_ids("<action>")
    trainer.train()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in records if r["step"] > 0]
    assert len(steps) == 2
    assert all(0.0 <= r["t2po/tds_resample_rate"] <= 1.0 for r in steps)
