"""Turn segmentation of a batch of training rows, vectorised over the whole batch.

A *loss turn* is a maximal run of consecutive trained tokens (loss mask 1) in a row: the tokens the
policy generated between two observations (reference spec §1.6). Turns are numbered 0, 1, 2, … from
the left of each row; tokens outside the mask get turn −1.

Callers that already know the turn of every token (rows built from turn trees carry a
``turn_index`` per token) may pass it instead of deriving it from the mask: any non-negative ids per
row are accepted, gaps included, and two runs sharing one id form one turn. Ids on tokens outside
the mask are ignored.

Per-(row, turn) reductions use a single ``scatter_add`` (and ``bincount`` for the lengths) over flat
ids ``row · K + turn`` (K = the largest number of turns in a row); broadcasting back is one gather
over the same ids. No Python loop ever visits a row or a token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["TurnSegments", "turn_index"]


def turn_index(mask_BT: Tensor) -> Tensor:
    """Turn id of every token: 0, 1, 2, … for each maximal run of non-zero mask, −1 elsewhere.

    A run starts where the mask is on and the previous token (or the row start) is off; the running
    count of starts, minus one, is the turn id.

    Example: mask ``[0, 1, 1, 0, 1, 0, 1, 1]`` gives ``[-1, 0, 0, -1, 1, -1, 2, 2]``.
    """
    if mask_BT.dim() != 2:
        raise ValueError(f"mask must be 2-D (batch, tokens); got shape {tuple(mask_BT.shape)}")
    on_BT = mask_BT != 0
    starts_BT = on_BT.clone()
    starts_BT[:, 1:] &= ~on_BT[:, :-1]
    return torch.where(on_BT, starts_BT.long().cumsum(dim=1) - 1, -1)


@dataclass(frozen=True)
class TurnSegments:
    """The turns of a batch of rows and reductions over them.

    Attributes:
        turn_BT: turn id of every token (long), −1 for tokens outside the loss mask.
        max_turns: K, one more than the largest turn id in the batch (at least 1); per-turn tensors
            have shape ``(B, K)``.
        lengths_BK: number of trained tokens in each (row, turn); 0 for ids no token uses.
        flat_BT: ``row · K + turn`` for every token, B·K (a spare slot) outside every turn.
    """

    turn_BT: Tensor
    max_turns: int
    lengths_BK: Tensor
    flat_BT: Tensor = field(repr=False)

    @classmethod
    def from_mask(cls, mask_BT: Tensor, turn_BT: Tensor | None = None) -> TurnSegments:
        """Segments of ``mask_BT``; turns come from ``turn_BT`` when given, else from the mask runs.

        Raises:
            ValueError: the shapes differ, ``turn_BT`` is not an integer tensor, or a token inside
                the mask has a negative turn id.
        """
        if turn_BT is None:
            turn_BT = turn_index(mask_BT)
        else:
            if turn_BT.shape != mask_BT.shape:
                raise ValueError(
                    f"turn_BT has shape {tuple(turn_BT.shape)} but the mask has shape "
                    f"{tuple(mask_BT.shape)}; pass one turn id per token"
                )
            if turn_BT.dtype.is_floating_point or turn_BT.dtype == torch.bool:
                raise ValueError(f"turn_BT must hold integer turn ids; got dtype {turn_BT.dtype}")
            on_BT = mask_BT != 0
            if bool((turn_BT[on_BT] < 0).any()):
                raise ValueError(
                    "turn_BT is negative on a token inside the loss mask; give every trained token "
                    "its turn id (0, 1, …) and use −1 only where the mask is 0"
                )
            turn_BT = torch.where(on_BT, turn_BT.long(), -1)
        batch = turn_BT.shape[0]
        max_turns = max(1, int(turn_BT.max()) + 1) if turn_BT.numel() else 1
        spare = batch * max_turns
        rows_B1 = torch.arange(batch, device=turn_BT.device).unsqueeze(1)
        flat_BT = torch.where(turn_BT >= 0, rows_B1 * max_turns + turn_BT, spare)
        counts = torch.bincount(flat_BT.reshape(-1), minlength=spare + 1)
        lengths_BK = counts[:spare].view(batch, max_turns)
        return cls(turn_BT=turn_BT, max_turns=max_turns, lengths_BK=lengths_BK, flat_BT=flat_BT)

    @property
    def valid_BK(self) -> Tensor:
        """True for every (row, turn) that holds at least one token."""
        return self.lengths_BK > 0

    @property
    def num_turns_B(self) -> Tensor:
        """Number of turns in each row (long)."""
        return self.valid_BK.sum(dim=1)

    def sum(self, x_BT: Tensor) -> Tensor:
        """Σ of ``x`` over the tokens of each (row, turn); tokens outside every turn are dropped."""
        spare = self.lengths_BK.numel()
        out = x_BT.new_zeros(spare + 1)
        out = out.scatter_add(0, self.flat_BT.reshape(-1), x_BT.reshape(-1))
        return out[:spare].view_as(self.lengths_BK)

    def mean(self, x_BT: Tensor) -> Tensor:
        """Mean of ``x`` over the tokens of each (row, turn); 0 for a (row, turn) without tokens."""
        return self.sum(x_BT) / self.lengths_BK.clamp(min=1)

    def broadcast(self, x_BK: Tensor) -> Tensor:
        """Per-token view of a per-turn tensor: token t gets ``x[row, turn(t)]``, 0 off-turn."""
        padded = torch.cat([x_BK.reshape(-1), x_BK.new_zeros(1)])
        return padded[self.flat_BT]
