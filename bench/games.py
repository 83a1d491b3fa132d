"""Benchmark: environment steps per second of the text-game adapter (:class:`GameEnv`).

Plays random valid actions (each written as an agent turn, so every step also parses the turn
and renders the observation) on the small settings of each game, resetting at the end of every
episode (after an untimed warm-up of 300 steps: JVM start, JIT), and prints one JSON line per game:

    {"bench": "games", "game": "twc", "steps": 2000, "episodes": ..., "seconds": ...,
     "cpu_seconds": ..., "steps_per_s": ..., "resets_per_s": ...}

``seconds`` is wall time (the JVM works in its own process, so CPU time of this one would miss
it); ``steps_per_s`` counts env steps only, ``resets_per_s`` new games. Also one line for the
turn parser at n and 10·n characters of adversarial text (a linear parser: ratio about 10).

Usage: python bench/games.py [--steps 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import time

from at2po.tasks.games import SMALL_SETTINGS, GameEnv, GameEnvConfig, GameExample, parse_turn
from at2po.tasks.games.expert import turn_text
from timing import best_seconds


def play(game: str, steps: int, seed: int) -> dict[str, float | int | str]:
    """Random valid actions for ``steps`` env steps on ``game`` (train seeds, in order)."""
    env = GameEnv(GameEnvConfig(max_turns=20))
    rng = random.Random(seed)
    episodes = reset_seconds = 0.0
    state = None
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        if state is None or state.done:
            clock = time.perf_counter()
            state = env.reset(GameExample(game, SMALL_SETTINGS[game], "train", int(episodes)))
            reset_seconds += time.perf_counter() - clock
            episodes += 1
        command = rng.choice(state.view.valid_actions)
        state = env.step(state, turn_text("next", command)).state
    seconds = time.perf_counter() - wall - reset_seconds
    return {
        "bench": "games",
        "game": game,
        "steps": steps,
        "episodes": int(episodes),
        "seconds": round(seconds, 4),
        "cpu_seconds": round(time.process_time() - cpu, 4),
        "steps_per_s": round(steps / seconds, 1),
        "resets_per_s": round(episodes / reset_seconds, 1),
    }


def parser_line(n: int = 16_000) -> dict[str, float | int | str]:
    """Best CPU seconds of :func:`parse_turn` on an open action block followed by ``<action``
    fragments, at n and 10·n fragments."""

    def text(k: int) -> str:
        return "<think>x</think><action>" + "<action" * k

    small, large = text(n), text(10 * n)
    best = best_seconds(
        {"n": lambda: parse_turn(small), "10n": lambda: parse_turn(large)}, 5, time.process_time
    )
    seconds, seconds_10x = best["n"], best["10n"]
    return {
        "bench": "games",
        "parser": "parse_turn",
        "chars": len(small),
        "chars_10x": len(large),
        "seconds": seconds,
        "seconds_10x": seconds_10x,
        "ratio": round(seconds_10x / seconds, 2),
        "target_ratio": 15,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for game in ("twc", "cookingworld"):
        play(game, 300, args.seed + 1)  # warm-up: the JVM's start and just-in-time compilation
        print(json.dumps(play(game, args.steps, args.seed)), flush=True)
    print(json.dumps(parser_line()), flush=True)


if __name__ == "__main__":
    main()
