"""``at2po train``, ``at2po eval`` and ``at2po compare``.

    at2po train quickstart                              # the ~8-minute CPU demo
    at2po train grpo optim.lr=1e-4 rollout.n_rows=8     # a preset with overrides
    at2po train my_run.yaml --out runs/mine --resume    # continue a killed run exactly
    at2po train at2po --print-config                    # the resolved config, documented
    at2po eval --checkpoint runs/quickstart/checkpoints/step_000030 --split test
    at2po compare --presets at2po,grpo --seeds 3 --token-budget 200000 train.steps=100

Overrides are ``section.key=value`` with YAML values. User mistakes (an unknown key, a missing
model, an unreachable retrieval server) stop with a message that says how to fix them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_OVERRIDES_HELP = "config overrides section.key=value (YAML values), e.g. optim.lr=1e-4"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a policy with a preset or YAML config (AT²PO, GRPO, DAPO, …)",
        description="Train a policy with RL on the search task. CONFIG is a preset name "
        "(quickstart, at2po, grpo, dapo, gspo, aepo, tree_grpo, gigpo) or a YAML file.",
    )
    train.add_argument("config", metavar="CONFIG", help="preset name or YAML file")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    train.add_argument("--out", metavar="DIR", help="run directory (default: runs/<name>)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the run directory from its newest usable checkpoint (with the "
        "config saved there, plus any overrides); refuses a directory with no run or no usable "
        "checkpoint",
    )
    train.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config with every field's help and exit",
    )
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on held-out questions (greedy, one chain each)",
        description="Evaluate a saved checkpoint with its run's config: exact match and F1 "
        "overall, per question type and per data source. Prints JSON on stdout.",
    )
    evaluate.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="<run>/checkpoints/step_NNNNNN"
    )
    evaluate.add_argument(
        "--split", choices=("dev", "test"), help="held-out split (default: the run's eval split)"
    )
    evaluate.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    evaluate.set_defaults(func=run_eval)

    comparison = subparsers.add_parser(
        "compare",
        help="train several presets on the same task, seeds and token budget; table and plot",
        description="Train every preset with seeds 0..N-1 on the same task and generated-token "
        "budget, then print a table (final and best held-out EM, tokens, time) and save "
        "compare.png (held-out EM against generated tokens) and compare.json.",
    )
    comparison.add_argument(
        "--presets", required=True, help="comma-separated presets, e.g. at2po,grpo"
    )
    comparison.add_argument("--seeds", type=int, default=1, help="seeds per preset (default 1)")
    comparison.add_argument(
        "--token-budget", type=int, metavar="N", help="generated training tokens per run"
    )
    comparison.add_argument(
        "--out", default="runs/compare", metavar="DIR", help="output directory (runs/compare)"
    )
    comparison.add_argument(
        "--resume", action="store_true", help="continue runs whose directories hold a run"
    )
    comparison.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    comparison.set_defaults(func=run_compare)


def _quiet_transformers() -> None:
    """No per-file progress bars from transformers when checkpoints are written or read."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def run_train(args: argparse.Namespace) -> int:
    from at2po.train.config import ConfigError, describe, load_config

    _quiet_transformers()
    overrides = list(args.overrides) + ([f"out_dir={args.out}"] if args.out else [])
    try:
        cfg = load_config(args.config, overrides)
        saved = cfg.run_dir / "config.yaml"
        if args.resume and saved.is_file():
            cfg = load_config(saved, overrides)
        if args.print_config:
            sys.stdout.write(describe(cfg))
            return 0
        from at2po.train.trainer import Trainer

        Trainer(cfg, resume=args.resume).train()
    except (ConfigError, FileNotFoundError) as error:
        raise SystemExit(f"at2po train: {error}") from None
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from at2po.train.config import ConfigError
    from at2po.train.evaluate import evaluate_checkpoint

    _quiet_transformers()
    try:
        cfg, metrics = evaluate_checkpoint(Path(args.checkpoint), args.split, args.overrides)
    except (ConfigError, FileNotFoundError) as error:
        raise SystemExit(f"at2po eval: {error}") from None
    table = Table(title=f"{args.checkpoint} · {cfg.train.eval_split}", header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if key != "eval/n" else f"{value:.0f}")
    Console(stderr=True).print(table)
    print(json.dumps(metrics))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from at2po.train.compare import compare
    from at2po.train.config import ConfigError

    _quiet_transformers()
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    try:
        compare(
            presets,
            args.seeds,
            Path(args.out),
            token_budget=args.token_budget,
            overrides=args.overrides,
            resume=args.resume,
        )
    except (ConfigError, FileNotFoundError) as error:
        raise SystemExit(f"at2po compare: {error}") from None
    return 0
