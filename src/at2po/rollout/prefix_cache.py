"""Keys and values of sequences the engine already ran, found again by longest common prefix.

Each entry holds one sequence's token ids and the keys/values of exactly those tokens for every
layer, as one tensor ``kv_L2HTD`` (layers × {key, value} × kv-heads × tokens × head-dim). A lookup
returns the entry that shares the longest common prefix with the query and that prefix's slice of
its keys/values: a turn that continues a trajectory finds the trajectory's own entry, a branch
re-sampled from an earlier turn finds the entry of the trajectory it branches from, cut at the
branch point. Keys/values of a prefix do not depend on what follows it (causal attention), which is
what makes the cut exact.

Storage is bounded by ``capacity_tokens`` (least recently used entries go first). An entry that is
a prefix of a newer one is dropped, since the newer one answers every lookup it could. Memory per
cached token: ``2 × layers × kv_heads × head_dim × bytes per element``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count

import numpy as np
import torch


def common_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    """Number of leading positions where two id arrays agree."""
    m = min(len(a), len(b))
    differ = np.flatnonzero(a[:m] != b[:m])
    return int(differ[0]) if differ.size else m


@dataclass(frozen=True)
class _Entry:
    ids: np.ndarray
    kv_L2HTD: torch.Tensor


class PrefixCache:
    """LRU store of per-sequence keys/values, searched by longest common prefix.

    Args:
        capacity_tokens: most tokens held over all entries; 0 stores nothing.
    """

    def __init__(self, capacity_tokens: int) -> None:
        if capacity_tokens < 0:
            raise ValueError(f"capacity_tokens={capacity_tokens} must be >= 0")
        self.capacity_tokens = capacity_tokens
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next_key = count()
        self.tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry (call when the model's weights change)."""
        self._entries.clear()
        self.tokens = 0

    def longest_prefix(self, ids: np.ndarray, max_length: int) -> tuple[int, torch.Tensor | None]:
        """The longest cached prefix of ``ids``, at most ``max_length`` tokens.

        Returns its length and its keys/values ``kv_L2HTD`` (a view, ``T`` = that length), or
        ``(0, None)`` when nothing matches.
        """
        best_key, best_length = None, 0
        for key, entry in self._entries.items():
            length = min(common_prefix_length(ids, entry.ids), max_length)
            if length > best_length:
                best_key, best_length = key, length
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        return best_length, self._entries[best_key].kv_L2HTD[:, :, :, :best_length]

    def insert(self, ids: Sequence[int] | np.ndarray, kv_L2HTD: torch.Tensor) -> None:
        """Store the keys/values of sequence ``ids`` (``kv_L2HTD`` covers exactly those tokens)."""
        ids = np.asarray(ids, dtype=np.int64)
        if kv_L2HTD.shape[3] != len(ids):
            raise ValueError(
                f"kv_L2HTD covers {kv_L2HTD.shape[3]} tokens but ids has {len(ids)}; "
                "they must describe the same sequence"
            )
        if not 0 < len(ids) <= self.capacity_tokens:
            return
        for key, entry in list(self._entries.items()):
            shared = common_prefix_length(ids, entry.ids)
            if shared == len(ids):
                self._entries.move_to_end(key)
                return
            if shared == len(entry.ids):
                self._remove(key)
        while self.tokens + len(ids) > self.capacity_tokens:
            self._remove(next(iter(self._entries)))
        self._entries[next(self._next_key)] = _Entry(ids, kv_L2HTD)
        self.tokens += len(ids)

    def _remove(self, key: int) -> None:
        self.tokens -= len(self._entries.pop(key).ids)
