"""A scripted expert for the text games: the gold path, with deliberate, seeded mistakes.

The expert plays the real :class:`~at2po.tasks.games.env.GameEnv` (so its observations are
exactly what a policy is shown) and writes each turn in the agent format,
``<think>short reason</think>\\n<action>command</action>``. Before a gold step it makes a mistake
with probability ``p_mistake`` (at most ``max_mistakes`` per episode, and never so many that the
gold path no longer fits in ``max_turns``), one of:

* ``noop``: a valid action that changes nothing (``look around``, ``inventory``, ``examine …``);
* ``not_valid``: a command that is not in the valid list (a gold command with a wrong object);
* ``format``: a turn without its action block (the env answers with the format note).

None of these moves the game off the gold path, so every episode ends in success when the turn
budget allows the path (the demonstrations show a mistake and the way on after it).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from at2po.tasks.games.env import GameEnv, GameExample, GameState

MISTAKES = ("noop", "not_valid", "format")


@dataclass(frozen=True)
class GameExpertConfig:
    """How often and how the expert errs (module docstring); ``seed`` seeds its choices."""

    p_mistake: float = 0.2
    max_mistakes: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_mistake <= 1.0 or self.max_mistakes < 0:
            raise ValueError(
                f"p_mistake={self.p_mistake} must be in [0, 1] and max_mistakes="
                f"{self.max_mistakes} >= 0"
            )


def reason_for(command: str) -> str:
    """A short thought that leads to ``command``."""
    if command.startswith("take "):
        return f"I should pick up the {command[5:]}."
    if command.startswith("put ") and " in " in command:
        item, place = command[4:].split(" in ", 1)
        return f"The {item} belongs in the {place}."
    if command == "look around":
        return "I look around to see what is here."
    return f"Next I {command}."


def turn_text(thought: str, command: str | None) -> str:
    """One turn in the agent format (``command=None``: the thought only, a format mistake)."""
    if command is None:
        return f"<think>{thought}</think>"
    return f"<think>{thought}</think>\n<action>{command}</action>"


class GameExpert:
    """Plays games along the gold path with the mistakes of :class:`GameExpertConfig`."""

    def __init__(self, config: GameExpertConfig | None = None) -> None:
        self.config = config or GameExpertConfig()

    def play(self, env: GameEnv, example: GameExample) -> GameState:
        """One finished episode on ``example`` (its own random stream: game id and seed)."""
        rng = random.Random(f"{self.config.seed}/{example.id}")
        gold = env.expert_path(example)
        state = env.reset(example)
        spare = max(0, env.config.max_turns - len(gold))
        budget = min(self.config.max_mistakes, spare)
        for command in gold:
            while budget and not state.done and rng.random() < self.config.p_mistake:
                budget -= 1
                state = env.step(state, self._mistake(state, command, rng)).state
            if state.done:
                break
            state = env.step(state, turn_text(reason_for(command), command)).state
        return state

    def play_all(self, env: GameEnv, examples: Sequence[GameExample]) -> list[GameState]:
        return [self.play(env, example) for example in examples]

    @staticmethod
    def _mistake(state: GameState, command: str, rng: random.Random) -> str:
        kind = rng.choice(MISTAKES)
        if kind == "noop":
            noops = [a for a in state.view.valid_actions if a in ("look around", "inventory")]
            noops += [a for a in state.view.valid_actions if a.startswith("examine ")]
            if noops:
                choice = rng.choice(noops)
                return turn_text(reason_for(choice), choice)
        if kind == "not_valid":
            wrong = command.rsplit(" ", 1)[0] + " shelf"
            return turn_text(reason_for(wrong), wrong)
        return turn_text(reason_for(command), None)
