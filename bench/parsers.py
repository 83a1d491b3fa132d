"""Benchmark: every public parser of the agent format on adversarial text, at n and 10·n.

A linear parser takes about 10× as long on 10× the text; a quadratic one about 100×. For each
parser × input this prints one JSON line with the best CPU time at both sizes and their ratio
(target: ratio ≤ 15):

    {"bench": "parsers", "parser": "extract_final_answer", "input": "think", "chars": ...,
     "chars_10x": ..., "seconds": ..., "seconds_10x": ..., "ratio": ..., "target_ratio": 15}

Each input repeats a unit (a tag or a broken fragment) to about ``--chars`` characters (the
default, 112,000, is ``'<think>' * 16000``, which took the earlier regexes 12.6 s), then ten
times as often: the shapes that made those regexes backtrack, and shapes that keep the state
machine busy (every tag opening a block, closed blocks, unknown closing tags).

Usage: python bench/parsers.py [--chars 112000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from at2po.tasks.agent_format import (
    check_response,
    count_tool_calls,
    extract_final_answer,
    parse_action,
    read_response,
    unwrap_boxed,
)
from timing import best_seconds

PARSERS: dict[str, Callable[[str], object]] = {
    "parse_action": parse_action,
    "check_response": check_response,
    "extract_final_answer": extract_final_answer,
    "count_tool_calls": count_tool_calls,
    "read_response": read_response,
    "unwrap_boxed": unwrap_boxed,
}
UNITS = {
    "think": "<think>",
    "answer": "<answer>",
    "search": "<search>",
    "result": "<result>",
    "slash": "</",
    "boxed": "\\boxed{",
    "mixed": "<think><answer><search><result></think>x</answer></search>",
    "closed_blocks": "<search>q</search> <result>p</result><answer>a</answer>",
    "unknown_close": "</a> ",
}
TARGET_RATIO = 15


def measure(parser: Callable[[str], object], unit: str, n: int, repeats: int) -> dict[str, float]:
    """Best CPU seconds of ``parser`` on ``unit * n`` and on ``unit * (10 * n)`` (CPU time, so
    that waiting for a CPU shared with other work does not count)."""
    small, large = unit * n, unit * (10 * n)
    runs = {"n": lambda: parser(small), "10n": lambda: parser(large)}
    return best_seconds(runs, repeats, clock=time.process_time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=112_000, help="size of the smaller input")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per size (best kept)")
    args = parser.parse_args()
    for parser_name, parse in PARSERS.items():
        for input_name, unit in UNITS.items():
            n = max(1, args.chars // len(unit))
            seconds = measure(parse, unit, n, args.repeats)
            record = {
                "bench": "parsers",
                "parser": parser_name,
                "input": input_name,
                "chars": len(unit) * n,
                "chars_10x": len(unit) * n * 10,
                "seconds": round(seconds["n"], 6),
                "seconds_10x": round(seconds["10n"], 6),
                "ratio": round(seconds["10n"] / seconds["n"], 2),
                "target_ratio": TARGET_RATIO,
            }
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
