"""Supervised rows from finished search episodes, token for token as a rollout builds them.

A row is ``prompt ids + (turn ids, observation ids) per turn [+ EOS]``:

- prompt: :meth:`Codec.encode_prompt` of the episode's prompt messages (chat template with the
  assistant header), loss mask 0;
- each agent turn: the turn text encoded without special tokens, loss mask 1 (what the policy
  writes, ending with ``</search>`` or ``</answer>``);
- each observation: :meth:`Codec.encode_observation` of the text the environment appended, loss
  mask 0 (marked in ``observation_mask``, which SFT may use for an auxiliary language-modelling
  loss; the policy never writes these tokens);
- after a final answer, the tokenizer's EOS (``<|im_end|>``), loss mask 1. A rollout stops at the
  ``</answer>`` stop string before sampling it; training it anyway closes the assistant message for
  callers that do not use stop strings.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from at2po.rollout.codec import Codec
from at2po.tasks.search_env import EnvState


@dataclass(frozen=True)
class SFTExample:
    """One training row: token ids, which of them the policy wrote (``loss_mask`` 1) and which
    the environment inserted (``observation_mask`` 1); prompt tokens have 0 in both."""

    input_ids: tuple[int, ...]
    loss_mask: tuple[int, ...]
    observation_mask: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.input_ids)
        if len(self.loss_mask) != n or len(self.observation_mask) != n:
            raise ValueError(
                f"input_ids has {n} ids but loss_mask {len(self.loss_mask)} and "
                f"observation_mask {len(self.observation_mask)}"
            )
        if any(a and b for a, b in zip(self.loss_mask, self.observation_mask, strict=True)):
            raise ValueError("a token cannot be both the policy's (loss_mask) and an observation")

    def __len__(self) -> int:
        return len(self.input_ids)


def render_episode(codec: Codec, state: EnvState) -> SFTExample:
    """The row of a finished episode (see the module docstring)."""
    if not state.turns:
        raise ValueError(f"the episode on {state.example.id!r} has no turns to train on")
    ids = list(codec.encode_prompt(state.prompt_messages()))
    mask = [0] * len(ids)
    observed = [0] * len(ids)
    for turn in state.turns:
        act = codec.tokenizer.encode(turn.text, add_special_tokens=False)
        obs = codec.encode_observation(turn.observation) if turn.observation else []
        ids += act + obs
        mask += [1] * len(act) + [0] * len(obs)
        observed += [0] * len(act) + [1] * len(obs)
    if state.finish == "answer":
        ids.append(codec.tokenizer.eos_token_id)
        mask.append(1)
        observed.append(0)
    return SFTExample(tuple(ids), tuple(mask), tuple(observed))


@dataclass(frozen=True)
class Batch:
    """Right-padded rows: ``input_ids_BT``, ``attention_mask_BT`` (0 on padding),
    ``loss_mask_BT`` and ``observation_mask_BT`` (0 on padding)."""

    input_ids_BT: torch.Tensor
    attention_mask_BT: torch.Tensor
    loss_mask_BT: torch.Tensor
    observation_mask_BT: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        """The same batch on ``device``."""
        return Batch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def collate(rows: Sequence[SFTExample], pad_id: int) -> Batch:
    """Pad ``rows`` on the right to the longest of them."""
    if not rows:
        raise ValueError("collate() needs at least one row")
    width = max(len(row) for row in rows)
    input_ids_BT = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask_BT = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask_BT = torch.zeros((len(rows), width), dtype=torch.long)
    observation_mask_BT = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row)
        input_ids_BT[b, :n] = torch.tensor(row.input_ids)
        attention_mask_BT[b, :n] = 1
        loss_mask_BT[b, :n] = torch.tensor(row.loss_mask)
        observation_mask_BT[b, :n] = torch.tensor(row.observation_mask)
    return Batch(input_ids_BT, attention_mask_BT, loss_mask_BT, observation_mask_BT)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, group: int = 16
) -> list[list[int]]:
    """One epoch of batches (row indices) with little padding and a random order.

    The rows are shuffled, cut into windows of ``group · batch_size`` rows, sorted by length inside
    each window and cut into batches; the batches are shuffled again.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = group * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches
