"""Benchmark: synthetic world generation, export, and the scripted expert over BM25.

Target: a world with 100k questions (about 100k documents) in under a minute on the project's
2-core machine. Prints one JSON line per measurement:

    {"bench": "worlds.generate", "questions": ..., "seconds": ..., "questions_per_s": ..., ...}
    {"bench": "worlds.export", ...}   corpus + JSONL and Parquet questions of the largest world
    {"bench": "worlds.expert", ...}   the expert solving questions through SearchQAEnv + BM25

Usage: python bench/worlds.py [--sizes 1000 10000 100000] [--expert-questions 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from at2po.tasks.retrieval.bm25 import BM25Retriever
from at2po.tasks.search_env import SearchQAEnv
from at2po.tasks.search_tool import SearchTool
from at2po.tasks.worlds import WorldConfig, export_splits, generate_world, solve_batch


def bench_generate(n_questions: int, seed: int):
    started = time.perf_counter()
    world = generate_world(WorldConfig.sized_for(n_questions, seed=seed))
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "bench": "worlds.generate",
                "questions": len(world.questions),
                "documents": len(world.documents),
                "entities": len(world.entities),
                "seconds": round(seconds, 3),
                "questions_per_s": round(len(world.questions) / seconds),
                "target_s": 60 if n_questions >= 100_000 else None,
            }
        ),
        flush=True,
    )
    return world


def bench_export(world) -> None:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        export_splits({"train": world}, out)
        seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "bench": "worlds.export",
                "questions": len(world.questions),
                "documents": len(world.documents),
                "formats": ["jsonl", "parquet"],
                "seconds": round(seconds, 3),
            }
        ),
        flush=True,
    )


def bench_expert(n_questions: int, seed: int) -> None:
    world = generate_world(WorldConfig.sized_for(n_questions, seed=seed))
    started = time.perf_counter()
    env = SearchQAEnv(SearchTool(BM25Retriever(world.documents)))
    index_seconds = time.perf_counter() - started
    started = time.perf_counter()
    episodes = solve_batch(env, world.questions)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "bench": "worlds.expert",
                "questions": len(episodes),
                "documents": len(world.documents),
                "index_seconds": round(index_seconds, 3),
                "solve_seconds": round(seconds, 3),
                "questions_per_s": round(len(episodes) / seconds),
                "searches_per_question": round(
                    statistics.mean(e.state.tool_calls for e in episodes), 3
                ),
                "solved": sum(e.reward == 1 for e in episodes) / len(episodes),
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--expert-questions", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    world = None
    for size in args.sizes:
        world = bench_generate(size, args.seed)
    if world is not None:
        bench_export(world)
    if args.expert_questions:
        bench_expert(args.expert_questions, args.seed)


if __name__ == "__main__":
    main()
