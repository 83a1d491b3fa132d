"""Turn segmentation of a batch of training rows, vectorised over the whole batch.

A *loss turn* is a maximal run of consecutive trained tokens (loss mask 1) in a row: the tokens the
policy generated between two observations (reference spec §1.6). Turns are numbered 0, 1, 2, … from
the left of each row; tokens outside the mask get turn −1.

Callers that already know the turn of every token (rows built from turn trees carry a
``turn_index`` per token) may pass it instead of deriving it from the mask: any non-negative ids per
row are accepted, gaps included, and two runs sharing one id form one turn. Ids on tokens outside
the mask are ignored.

The batch is cut into *stretches*, the maximal runs of consecutive tokens of one row that share the
mask state and (inside the mask) the turn id, so that the flattened batch is the concatenation of
its stretches and each stretch lies in one turn or outside every turn. Per-(row, turn) sums reduce
each stretch with one ``segment_reduce`` over the flattened batch and add the stretch sums into
their turns; broadcasting back is one ``index_select`` through the stretch of every token (a
running count of stretch starts). The per-stretch bookkeeping (a few entries per turn) comes from
one ``nonzero`` over the stretch starts. No Python loop ever visits a row or a token.
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
        max_turns: K, one more than the largest turn id in the batch (at least 1); per-turn tensors
            have shape ``(B, K)``.
        lengths_BK: number of trained tokens in each (row, turn); 0 for ids no token uses.
        stretch_len_S: length of every stretch, in the order of the flattened batch (sums to B·T).
        stretch_slot_S: ``row · K + turn`` of every stretch, B·K (a spare slot) outside every turn.
        stretch_BT: the stretch of every token (int32), an index into the ``*_S`` tensors.
    """

    max_turns: int
    lengths_BK: Tensor
    stretch_len_S: Tensor
    stretch_slot_S: Tensor
    stretch_BT: Tensor = field(repr=False)

    @classmethod
    def from_mask(cls, mask_BT: Tensor, turn_BT: Tensor | None = None) -> TurnSegments:
        """Segments of ``mask_BT``; turns come from ``turn_BT`` when given, else from the mask runs.

        Raises:
            ValueError: the mask is not 2-D, the shapes differ, ``turn_BT`` is not an integer
                tensor, or a token inside the mask has a negative turn id.
        """
        if mask_BT.dim() != 2:
            raise ValueError(f"mask must be 2-D (batch, tokens); got shape {tuple(mask_BT.shape)}")
        if turn_BT is not None:
            if turn_BT.shape != mask_BT.shape:
                raise ValueError(
                    f"turn_BT has shape {tuple(turn_BT.shape)} but the mask has shape "
                    f"{tuple(mask_BT.shape)}; pass one turn id per token"
                )
            if turn_BT.dtype.is_floating_point or turn_BT.dtype == torch.bool:
                raise ValueError(f"turn_BT must hold integer turn ids; got dtype {turn_BT.dtype}")
        batch, length = mask_BT.shape
        on_BT = mask_BT.bool().contiguous()
        new_BT = torch.ones_like(on_BT)  # where a stretch starts
        torch.ne(on_BT[:, 1:], on_BT[:, :-1], out=new_BT[:, 1:])
        if turn_BT is not None:
            new_BT[:, 1:] |= turn_BT[:, 1:] != turn_BT[:, :-1]
        index_dtype = torch.int32 if batch * length < 2**31 else torch.int64
        stretch_BT = new_BT.view(-1).cumsum(0, dtype=index_dtype).sub_(1).view(batch, length)
        start_S = new_BT.view(-1).nonzero().squeeze(1)
        stretch_len_S = torch.diff(start_S, append=start_S.new_full((1,), batch * length))
        on_S = on_BT.view(-1)[start_S]
        row_S = torch.div(start_S, length, rounding_mode="floor")
        if turn_BT is None:
            # a turn is one stretch: its id counts the trained stretches before it in its row
            turns_B = torch.bincount(row_S[on_S], minlength=batch)
            earlier_S = (turns_B.cumsum(0) - turns_B)[row_S]
            turn_S = on_S.cumsum(0) - 1 - earlier_S
        else:
            turn_S = turn_BT.reshape(-1)[start_S].long()
            if bool((turn_S[on_S] < 0).any()):
                raise ValueError(
                    "turn_BT is negative on a token inside the loss mask; give every trained token "
                    "its turn id (0, 1, …) and use −1 only where the mask is 0"
                )
        top = int(torch.where(on_S, turn_S, -1).max()) if start_S.numel() else -1
        max_turns = max(1, top + 1)
        spare = batch * max_turns
        stretch_slot_S = torch.where(on_S, row_S * max_turns + turn_S, spare)
        lengths = stretch_len_S.new_zeros(spare + 1).index_add_(0, stretch_slot_S, stretch_len_S)
        return cls(
            max_turns=max_turns,
            lengths_BK=lengths[:spare].view(batch, max_turns),
            stretch_len_S=stretch_len_S,
            stretch_slot_S=stretch_slot_S,
            stretch_BT=stretch_BT,
        )

    @property
    def valid_BK(self) -> Tensor:
        """True for every (row, turn) that holds at least one token."""
        return self.lengths_BK > 0

    @property
    def num_turns_B(self) -> Tensor:
        """Number of turns in each row (long)."""
        return self.valid_BK.sum(dim=1)

    @property
    def turn_BT(self) -> Tensor:
        """Turn id of every token (long), −1 for tokens outside the loss mask."""
        spare = self.lengths_BK.numel()
        turn_S = torch.where(self.stretch_slot_S < spare, self.stretch_slot_S % self.max_turns, -1)
        return self._per_token(turn_S)

    def sum(self, x_BT: Tensor) -> Tensor:
        """Σ of ``x`` over the tokens of each (row, turn); tokens outside every turn are dropped
        (whatever they hold, NaN included)."""
        spare = self.lengths_BK.numel()
        out = x_BT.new_zeros(spare + 1)
        if self.stretch_len_S.numel():
            stretch_sums = torch.segment_reduce(
                x_BT.reshape(-1), "sum", lengths=self.stretch_len_S, unsafe=True
            )
            out = out.index_add(0, self.stretch_slot_S, stretch_sums)
        return out[:spare].view_as(self.lengths_BK)

    def mean(self, x_BT: Tensor) -> Tensor:
        """Mean of ``x`` over the tokens of each (row, turn); 0 for a (row, turn) without tokens."""
        return self.sum(x_BT) / self.lengths_BK.clamp(min=1)

    def broadcast(self, x_BK: Tensor) -> Tensor:
        """Per-token view of a per-turn tensor: token t gets ``x[row, turn(t)]``, 0 off-turn."""
        padded = torch.cat([x_BK.reshape(-1), x_BK.new_zeros(1)])
        return self._per_token(padded[self.stretch_slot_S])

    def _per_token(self, x_S: Tensor) -> Tensor:
        """(B, T) tensor holding each stretch's value on each of its tokens."""
        return x_S.index_select(0, self.stretch_BT.view(-1)).view_as(self.stretch_BT)
