"""Splitting one rollout into chunks for parallel workers, and merging the chunks' outputs.

A step's prompt groups are cut into contiguous, near-equal chunks (:func:`split_chunks`); chunk
``i`` is rolled out with its own seed :func:`chunk_seed` ``(seed, i)``, a pure function of the
step's rollout seed, so a run is reproducible for a given number of chunks. The outputs are merged
back in the original order (:func:`merge_outputs`): the groups concatenated, the metrics combined
by :func:`merge_chunk_metrics`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from at2po.rollout.rollouts import RolloutOutput

T = TypeVar("T")

ROLLOUT_COUNTERS = (
    "rollout/generated_tokens",
    "rollout/prefill_tokens",
    "rollout/cached_tokens",
    "rollout/tool_calls",
    "rollout/tool_errors",
    "rollout/tool_failures",
    "rollout/rounds",
    "rollout/requests",
    "rollout/rows",
)
"""Rollout counters: they add up over DAPO's generation batches and over chunks."""

CHUNK_TOTALS = (
    *ROLLOUT_COUNTERS,
    "tree/row_tokens",
    "tree/unique_tokens",
    "t2po/forced_tokens",
    "t2po/tds_redraw_tokens",
)
"""Metrics that are totals over a rollout's groups, so a batch's value is the sum of its chunks'."""


def split_chunks(items: Sequence[T], n: int) -> list[list[T]]:
    """``items`` cut into ``min(n, len(items))`` contiguous chunks whose sizes differ by at most
    one, the larger first; concatenated they are ``items`` again."""
    if n < 1:
        raise ValueError(f"n={n} chunks: need at least one")
    count = min(n, len(items))
    size, extra = divmod(len(items), count) if count else (0, 0)
    chunks, start = [], 0
    for index in range(count):
        end = start + size + (index < extra)
        chunks.append(list(items[start:end]))
        start = end
    return chunks


def chunk_seed(seed: int, index: int) -> int:
    """The rollout seed of chunk ``index`` of a rollout seeded ``seed`` (the same in every process:
    a string seed goes through SHA-512, not Python's salted hash)."""
    return random.Random(f"at2po-rollout-chunk/{seed}/{index}").randrange(2**31)


def merge_chunk_metrics(
    metrics: Sequence[dict[str, float]], groups: Sequence[int]
) -> dict[str, float]:
    """One rollout's metrics from its chunks' (``groups[i]`` prompt groups in chunk ``i``).

    Totals (:data:`CHUNK_TOTALS`) are summed; ``perf/seconds_*`` and ``*_max`` take the largest
    value (the chunks ran side by side, so the slowest is the wall-clock time); every other metric
    is a mean, weighted by the groups of the chunks that report it (every group has the same number
    of rows, so this is the mean over rows where the metric is one).
    """
    out = {}
    for key in sorted({k for m in metrics for k in m}):
        present = [(m[key], g) for m, g in zip(metrics, groups, strict=True) if key in m]
        values = [value for value, _ in present]
        if key in CHUNK_TOTALS:
            out[key] = sum(values)
        elif key.startswith("perf/seconds") or key.endswith("_max"):
            out[key] = max(values)
        else:
            out[key] = sum(value * g for value, g in present) / sum(g for _, g in present)
    return out


def merge_outputs(outputs: Sequence[RolloutOutput]) -> RolloutOutput:
    """The chunks' outputs as one: groups concatenated in chunk order, metrics merged."""
    groups = [group for out in outputs for group in out.groups]
    sizes = [len(out.groups) for out in outputs]
    return RolloutOutput(groups, merge_chunk_metrics([out.metrics for out in outputs], sizes))
