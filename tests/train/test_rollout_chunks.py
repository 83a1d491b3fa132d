"""Chunks of a parallel rollout: how prompts are split, seeded and merged back (values by hand)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from at2po.rollout.rollouts import RolloutOutput
from at2po.train.rollout_chunks import chunk_seed, merge_chunk_metrics, merge_outputs, split_chunks


@pytest.mark.parametrize(
    ("length", "n", "sizes"),
    [(8, 2, [4, 4]), (7, 2, [4, 3]), (10, 4, [3, 3, 2, 2]), (3, 5, [1, 1, 1]), (5, 1, [5])],
)
def test_chunks_are_contiguous_near_equal_and_larger_first(length, n, sizes):
    items = list(range(length))
    chunks = split_chunks(items, n)
    assert [len(c) for c in chunks] == sizes
    assert [x for c in chunks for x in c] == items


def test_zero_chunks_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        split_chunks([1, 2], 0)


def test_chunk_seeds_differ_by_chunk_and_by_seed_and_not_by_process():
    seeds = {chunk_seed(seed, index) for seed in (0, 1, 2**31 - 1) for index in range(4)}
    assert len(seeds) == 12 and all(0 <= s < 2**31 for s in seeds)
    code = "from at2po.train.rollout_chunks import chunk_seed; print(chunk_seed(7, 1))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == str(chunk_seed(7, 1))


def test_metrics_sum_totals_take_the_slowest_time_and_weight_means_by_groups():
    first = {
        "rollout/generated_tokens": 100.0,
        "tree/row_tokens": 40.0,
        "perf/seconds_generate": 2.0,
        "tree/depth_max": 3.0,
        "reward/mean": 0.5,
        "tree/picked_entropy": 1.0,
    }
    second = {
        "rollout/generated_tokens": 60.0,
        "tree/row_tokens": 20.0,
        "perf/seconds_generate": 5.0,
        "tree/depth_max": 2.0,
        "reward/mean": -1.0,
    }
    merged = merge_chunk_metrics([first, second], [3, 1])
    assert merged == {
        "rollout/generated_tokens": 160.0,
        "tree/row_tokens": 60.0,
        "perf/seconds_generate": 5.0,
        "tree/depth_max": 3.0,
        "reward/mean": (3 * 0.5 + 1 * -1.0) / 4,
        "tree/picked_entropy": 1.0,  # only the first chunk picked anything
    }


def test_outputs_merge_in_chunk_order():
    a = RolloutOutput(["g0", "g1"], {"reward/mean": 1.0})  # type: ignore[list-item]
    b = RolloutOutput(["g2"], {"reward/mean": 0.0})  # type: ignore[list-item]
    merged = merge_outputs([a, b])
    assert merged.groups == ["g0", "g1", "g2"]
    assert merged.metrics == {"reward/mean": 2 / 3}
