"""Damaged model directories and configs: a one-line error naming the file and the fix.

Each case damages a real file the way a disk or an interrupted copy does (an empty or truncated
``model.safetensors``, a deleted or cut ``tokenizer.json``, a YAML file in Latin-1) and checks
the message at the function level and through ``at2po train`` / ``at2po eval``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
from train_helpers import fast_overrides

from at2po.cli.train import add_parser
from at2po.models.bootstrap import BOOTSTRAP_FILE, TINY_MODEL_NAME
from at2po.train.config import ConfigError, ModelConfig, load_config
from at2po.train.policy import (
    check_model_directory,
    load_model,
    load_tokenizer,
    model_directory,
)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="at2po")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def truncate(path: Path) -> None:
    """Keep the first half of the file, as an interrupted copy does."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def delete(path: Path) -> None:
    path.unlink()


# (file, damage, what the message must say about it)
DAMAGES = [
    ("model.safetensors", empty, "is damaged"),
    ("model.safetensors", truncate, "is damaged"),
    ("model.safetensors", delete, "is missing"),
    ("tokenizer.json", delete, "is missing"),
    ("tokenizer.json", truncate, "is damaged"),
    ("config.json", truncate, "is damaged"),
]
DAMAGE_IDS = [f"{name}-{damage.__name__}" for name, damage, _ in DAMAGES]


@pytest.fixture
def model_copy(tiny_policy_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_policy_dir, tmp_path / "model"))


def test_an_intact_directory_passes(model_copy):
    check_model_directory(model_copy)


@pytest.mark.parametrize(("name", "damage", "says"), DAMAGES, ids=DAMAGE_IDS)
def test_check_model_directory_names_the_file_and_the_fix(model_copy, name, damage, says):
    damage(model_copy / name)
    with pytest.raises(ConfigError) as error:
        check_model_directory(model_copy)
    message = str(error.value)
    assert f"{model_copy / name} {says}" in message
    assert "replace the directory with an intact copy" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "damage", "loader"),
    [
        ("model.safetensors", truncate, "model"),
        ("model.safetensors", empty, "model"),
        ("tokenizer.json", delete, "tokenizer"),
    ],
)
def test_loaders_refuse_damaged_files(model_copy, name, damage, loader):
    damage(model_copy / name)
    with pytest.raises(ConfigError, match=str(model_copy / name)):
        if loader == "model":
            load_model(model_copy, ModelConfig(path=str(model_copy), device="cpu"))
        else:
            load_tokenizer(model_copy)


def test_a_damaged_tiny_model_says_to_rebootstrap(tiny_policy_dir, tmp_path):
    directory = Path(shutil.copytree(tiny_policy_dir, tmp_path / "models" / TINY_MODEL_NAME))
    (directory / BOOTSTRAP_FILE).write_text("{}")
    truncate(directory / "model.safetensors")
    with pytest.raises(ConfigError) as error:
        model_directory(ModelConfig(path="tiny", cache_dir=str(tmp_path)))
    assert f"re-run `at2po bootstrap --force --cache-dir {tmp_path}`" in str(error.value)


@pytest.mark.parametrize(("name", "damage", "says"), DAMAGES, ids=DAMAGE_IDS)
def test_train_reports_a_damaged_model_in_one_line(model_copy, tmp_path, name, damage, says):
    damage(model_copy / name)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", "at2po", *fast_overrides(model_copy, tmp_path / "run"))
    message = str(exit_info.value)
    assert message.startswith(f"at2po train: {model_copy / name} {says}")
    assert "\n" not in message


LATIN1_YAML = "name: café\ntrain:\n  steps: 2\n".encode("latin-1")


def test_a_non_utf8_config_names_the_file_and_the_fix(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_bytes(LATIN1_YAML)
    with pytest.raises(ConfigError) as error:
        load_config(config)
    message = str(error.value)
    assert message == f"{config} is not UTF-8 text (byte 9 cannot be decoded); re-save it as UTF-8"


def test_train_reports_a_non_utf8_config_in_one_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_bytes(LATIN1_YAML)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", str(config), "--out", str(tmp_path / "run"))
    assert str(exit_info.value) == (
        f"at2po train: {config} is not UTF-8 text (byte 9 cannot be decoded); re-save it as UTF-8"
    )
    assert not (tmp_path / "run").exists()


def test_eval_reports_a_non_utf8_checkpoint_config_in_one_line(tmp_path):
    checkpoint = tmp_path / "step_000001"
    checkpoint.mkdir()
    (checkpoint / "config.yaml").write_bytes(LATIN1_YAML)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("eval", "--checkpoint", str(checkpoint))
    assert str(exit_info.value).startswith(
        f"at2po eval: {checkpoint / 'config.yaml'} is not UTF-8 text"
    )
