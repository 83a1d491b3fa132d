"""Wall-clock timing shared by the benchmarks.

Scripts run as ``python bench/<script>.py`` have ``bench/`` on ``sys.path``, so they import this
module as ``from timing import best_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def best_seconds(
    runs: dict[str, Callable[[], object]],
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Best time of each callable after one warm-up call of each, by ``clock`` (wall time unless
    e.g. ``time.process_time`` is given, which leaves out time spent waiting for a busy CPU).

    The runs are interleaved (every callable once per repeat) so that a change of machine load
    hits all of them alike.
    """
    for run in runs.values():
        run()
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = clock()
            run()
            timings[name].append(clock() - start)
    return {name: min(values) for name, values in timings.items()}
