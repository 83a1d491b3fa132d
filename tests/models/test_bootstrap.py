"""The bootstrap end to end at toy size: what it writes, the cache hit, settings checks."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from at2po.models.bootstrap import BOOTSTRAP_FILE, TINY_MODEL_NAME, BootstrapConfig, bootstrap
from at2po.models.registry import resolve_model
from at2po.models.sft import SFTConfig
from at2po.models.tiny import TinyModelConfig
from at2po.models.tokenizer import TAG_TOKENS
from at2po.tasks.search_env import SearchEnvConfig
from at2po.tasks.worlds.names import name_inventory

TOY = BootstrapConfig(
    demo_worlds=2,
    demos_per_world=8,
    env=SearchEnvConfig(max_tool_calls=2, max_turns=3),
    tokenizer_worlds=1,
    tokenizer_name_words=500,
    vocab_size=1300,
    model=TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2),
    sft=SFTConfig(steps=3, batch_size=4),
    device="cpu",
    eval_questions=3,
    eval_max_turn_tokens=8,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    directory = bootstrap(cache, config=TOY, console=Console(quiet=True))
    return cache, directory


def test_writes_a_loadable_model_and_its_record(built):
    cache, directory = built
    assert directory == cache / "models" / TINY_MODEL_NAME
    assert resolve_model("tiny", cache_dir=cache) == directory
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    assert len(tokenizer) == TOY.vocab_size == model.config.vocab_size
    assert all(len(tokenizer.encode(tag, add_special_tokens=False)) == 1 for tag in TAG_TOKENS)
    assert all(len(tokenizer.encode(w, add_special_tokens=False)) == 1 for w in name_inventory())
    record = json.loads((directory / BOOTSTRAP_FILE).read_text())
    assert record["settings"]["sft"]["steps"] == 3
    assert record["world_seeds"] == TOY.world_seeds()
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert record["demonstrations"]["episodes"] == 16
    assert set(record["held_out"]) == {"dev", "novel"}
    for held_out in record["held_out"].values():
        assert held_out["n"] == TOY.eval_questions
        assert 0.0 <= held_out["em"] <= 1.0
    assert set(record["copy_accuracy"]) == {"query", "answer", "n_query", "n_answer"}
    assert set(record["seconds"]) == {"tokenizer", "demonstrations", "sft", "eval"}
    assert [p.name for p in directory.parent.iterdir()] == [TINY_MODEL_NAME]


def test_second_call_is_a_cache_hit(built):
    cache, directory = built
    written = (directory / BOOTSTRAP_FILE).stat().st_mtime_ns
    started = time.perf_counter()
    assert bootstrap(cache, config=TOY, console=Console(quiet=True)) == directory
    assert time.perf_counter() - started < 1.0
    assert (directory / BOOTSTRAP_FILE).stat().st_mtime_ns == written


def test_other_settings_need_force(built):
    cache, _ = built
    other = replace(TOY, sft=replace(TOY.sft, steps=4))
    with pytest.raises(ValueError, match=r"\(sft differ\).*--force"):
        bootstrap(cache, config=other, console=Console(quiet=True))


def test_force_rebuilds_the_same_model(built):
    """Runs last: rebuilds in place; the same settings and seed give the same weights."""
    cache, directory = built
    before = AutoModelForCausalLM.from_pretrained(directory).state_dict()
    written = (directory / BOOTSTRAP_FILE).stat().st_mtime_ns
    assert bootstrap(cache, force=True, config=TOY, console=Console(quiet=True)) == directory
    assert (directory / BOOTSTRAP_FILE).stat().st_mtime_ns > written
    after = AutoModelForCausalLM.from_pretrained(directory).state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
