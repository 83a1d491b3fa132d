"""``at2po worlds generate``: write synthetic multi-hop QA splits and their corpus.

    at2po worlds generate --out data/worlds --seed 0 --n-train 10000 --n-dev 500 --n-test 1000

Writes ``corpus.jsonl``, ``{split}.jsonl``, ``{split}.parquet`` and ``manifest.json`` (see
:mod:`at2po.tasks.worlds.export`). Serve the corpus with ``at2po retriever serve --corpus
OUT/corpus.jsonl``, or load it in-process with ``BM25Retriever.from_jsonl``.

At most :data:`MAX_QUESTIONS` questions in all: generation is held in memory and grows linearly
(100,000 questions took 38 s, 0.45 GB of memory and 82 MB of JSONL on one CPU core), so larger
requests are refused before anything starts.
"""

from __future__ import annotations

import argparse
import time

MAX_QUESTIONS = 1_000_000
"""Most questions one ``worlds generate`` writes (about 6 minutes and 4.5 GB of memory)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    worlds = subparsers.add_parser(
        "worlds", help="synthetic multi-hop QA worlds (corpus + questions) for search agents"
    )
    commands = worlds.add_subparsers(dest="worlds_command", metavar="COMMAND", required=True)
    generate = commands.add_parser(
        "generate",
        help="generate train/dev/test worlds and write them to a directory",
        description="Generate disjoint train/dev/test worlds and write corpus.jsonl, one question "
        "file per split (JSONL and Parquet) and manifest.json.",
    )
    generate.add_argument("--out", required=True, metavar="DIR", help="output directory")
    generate.add_argument("--seed", type=int, default=0, help="run seed (default: 0)")
    generate.add_argument("--n-train", type=int, default=10_000, help="train questions (10000)")
    generate.add_argument("--n-dev", type=int, default=500, help="dev questions (500)")
    generate.add_argument("--n-test", type=int, default=1_000, help="test questions (1000)")
    generate.add_argument(
        "--formats",
        default="jsonl,parquet",
        help="question file formats, comma-separated: jsonl, parquet (default: both)",
    )
    generate.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    """Generate the splits and write them; print one line per split."""
    from at2po.tasks.worlds.export import export_splits
    from at2po.tasks.worlds.splits import build_splits

    formats = [fmt.strip() for fmt in args.formats.split(",") if fmt.strip()]
    started = time.perf_counter()
    try:
        check_sizes(args.n_train, args.n_dev, args.n_test)
        worlds = build_splits(args.seed, args.n_train, args.n_dev, args.n_test)
        written = export_splits(worlds, args.out, formats)
    except (OSError, ValueError) as error:
        raise SystemExit(f"at2po worlds generate: {error}") from error
    for split, world in worlds.items():
        print(
            f"{split}: {len(world.questions)} questions, {len(world.documents)} documents, "
            f"{len(world.entities)} entities"
        )
    print(f"wrote {written['corpus'].parent} in {time.perf_counter() - started:.1f} s")
    return 0


def check_sizes(n_train: int, n_dev: int, n_test: int) -> None:
    """ValueError when the question counts add up to more than MAX_QUESTIONS (negative counts
    are refused by ``build_splits``)."""
    counts = {"--n-train": n_train, "--n-dev": n_dev, "--n-test": n_test}
    total = sum(counts.values())
    if total > MAX_QUESTIONS:
        given = ", ".join(f"{flag} {count}" for flag, count in counts.items())
        raise ValueError(
            f"{given} ask for {total:,} questions; at most {MAX_QUESTIONS:,} in one run "
            "(generation is held in memory, about 4.5 KB a question). Ask for fewer, or "
            "generate several runs with different --seed values"
        )
