"""Which training questions each step sees: seeded epochs, each a fresh permutation.

Epoch e is the permutation of ``range(n)`` drawn by ``random.Random(f"{seed}/{e}")``; prompts are
taken in that order and a request that runs past the end of an epoch continues into the next.
The whole state is (epoch, position), so a checkpoint restores the exact stream.
"""

from __future__ import annotations

import random


class PromptSampler:
    """Endless seeded epochs over ``n`` question indices (module docstring)."""

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("the training split is empty; give at least one training question")
        self.n, self.seed = n, seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        random.Random(f"{self.seed}/{epoch}").shuffle(order)
        return order

    def next(self, k: int) -> list[int]:
        """The next ``k`` question indices."""
        out: list[int] = []
        while len(out) < k:
            if self.position == self.n:
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            take = min(k - len(out), self.n - self.position)
            out += self._order[self.position : self.position + take]
            self.position += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
