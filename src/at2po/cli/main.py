"""The ``at2po`` command: a thin dispatcher over subcommand modules.

Each subcommand module exposes ``add_parser(subparsers)``, which registers its parser and sets
``func`` (called with the parsed arguments) as a default. Modules are imported here, but heavy
dependencies (torch, transformers, uvicorn) are imported inside the ``func`` they serve, so
``at2po --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from at2po import __version__
from at2po.cli import bootstrap, retriever, train, view, worlds

SUBCOMMANDS = (bootstrap, train, worlds, retriever, view)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="at2po",
        description="Turn-level RL for multi-turn, tool-using LLM agents (AT²PO and baselines).",
    )
    parser.add_argument("--version", action="version", version=f"at2po {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
