"""`at2po bootstrap --task twc` on a tiny scale: demonstrations, tokenizer, SFT, held-out check,
cache and the `tiny-twc` name."""

from __future__ import annotations

import json

import pytest

from at2po.models.game_bootstrap import GAME_MODEL_NAME, GameBootstrapConfig, bootstrap_game
from at2po.models.registry import resolve_model
from at2po.models.sft import SFTConfig
from at2po.models.tiny import TinyModelConfig

SMALL = GameBootstrapConfig(
    demo_games=6,
    model=TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2),
    sft=SFTConfig(steps=2, batch_size=2, lr=1e-3),
    vocab_size=400,
    device="cpu",
    eval_games=1,
    eval_max_turn_tokens=8,
)


def test_tiny_twc_is_missing_until_bootstrapped_then_built_and_cached(tmp_path):
    with pytest.raises(FileNotFoundError, match="at2po bootstrap --task twc"):
        resolve_model("tiny-twc", tmp_path)
    directory = bootstrap_game(tmp_path, config=SMALL)
    assert directory.name == GAME_MODEL_NAME and resolve_model("tiny-twc", tmp_path) == directory
    record = json.loads((directory / "bootstrap.json").read_text())
    assert record["demonstrations"] == {"episodes": 6, "expert_success": 1.0}
    assert record["held_out"]["success"] in (0.0, 1.0)
    assert record["sft"]["final_policy_nll"] > 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert len(tokenizer.encode("<action>", add_special_tokens=False)) == 1
    assert bootstrap_game(tmp_path, config=SMALL) == directory  # cached: returned as is
    with pytest.raises(ValueError, match="other settings"):
        bootstrap_game(tmp_path, config=GameBootstrapConfig(demo_games=7))


def test_a_damaged_tiny_twc_names_the_command_that_rebuilds_it(tmp_path):
    from at2po.models.registry import repair_hint

    assert repair_hint("tiny-twc", tmp_path) == (
        f"re-run `at2po bootstrap --task twc --force --cache-dir {tmp_path}` to rebuild the "
        "tiny-twc model"
    )
