"""``at2po bootstrap`` options map onto BootstrapConfig; --help works."""

from __future__ import annotations

import argparse

import pytest

from at2po.cli import bootstrap as cli
from at2po.models.bootstrap import BootstrapConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="at2po")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_options_override_only_what_is_given(tmp_path):
    args = _parser().parse_args(
        ["bootstrap", "--cache-dir", str(tmp_path), "--steps", "7", "--seed", "3", "--force"]
    )
    assert args.func is cli.run and args.force and args.cache_dir == str(tmp_path)
    cfg = cli.config_from_args(args)
    default = BootstrapConfig()
    assert cfg.sft.steps == 7 and cfg.seed == 3
    assert cfg.sft.lr == default.sft.lr and cfg.demo_worlds == default.demo_worlds
    assert cli.config_from_args(_parser().parse_args(["bootstrap"])) == default


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as stop:
        _parser().parse_args(["bootstrap", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for option in ("--force", "--cache-dir", "--steps", "--seed", "--smollm2"):
        assert option in text


def test_task_twc_options_map_onto_the_game_bootstrap():
    from at2po.models.game_bootstrap import GameBootstrapConfig

    args = _parser().parse_args(
        ["bootstrap", "--task", "twc", "--demo-games", "9", "--steps", "4", "--eval-questions", "2"]
    )
    cfg = cli.game_config_from_args(args)
    default = GameBootstrapConfig()
    assert (cfg.demo_games, cfg.sft.steps, cfg.eval_games) == (9, 4, 2)
    assert cfg.sft.lr == default.sft.lr and cfg.seed == default.seed
    assert args.task == "twc"
    assert _parser().parse_args(["bootstrap"]).task == "search"
