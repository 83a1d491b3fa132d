"""The policy update of one training step: PPO epochs over shuffled mini-batches.

Each epoch shuffles the rows (``optim.shuffle``) and splits them into ``optim.mini_batches``
near-equal mini-batches; each mini-batch is one AdamW update. A mini-batch is run in micro-batches
(tree-packed ones of at most ``optim.packed_micro_batch_tokens`` distinct tokens with
``optim.packing``, :mod:`at2po.train.packing`; else at most ``optim.micro_batch_tokens`` padded
tokens) whose losses are normalised by the
mini-batch's trained tokens and non-empty rows (``num_tokens`` / ``num_rows`` of
:func:`at2po.core.losses.policy_loss`), so the accumulated gradient is the gradient of the
mini-batch loss whatever the micro-batching. The global gradient norm is clipped to
``optim.grad_clip``; a non-finite norm skips that update (the gradient is dropped).

Metrics: ``loss/*`` are mini-batch losses (micro-batch terms summed) averaged over updates;
fractions and means of :func:`policy_loss` are weighted by trained tokens (``turn/*``
per-row means by non-empty rows); ``*_min`` / ``*_max``
are the extremes; plus ``policy/grad_norm`` (mean pre-clip norm), ``policy/skipped_updates`` and
``policy/lr``.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass

import torch

from at2po.core.losses import PolicyLossConfig, policy_loss
from at2po.core.rows import Rows
from at2po.train.config import OptimConfig
from at2po.train.logprobs import row_micro_batches, rows_logprobs


@dataclass(frozen=True)
class UpdateBatch:
    """The rows of a step with the log-probs the loss compares against."""

    rows: Rows
    old_logp_BT: torch.Tensor
    ref_logp_BT: torch.Tensor | None


def split_evenly(items: list[int], parts: int) -> list[list[int]]:
    """``items`` in ``parts`` consecutive chunks whose sizes differ by at most one (no empty
    chunk when there are fewer items than parts)."""
    parts = min(parts, len(items))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (k < extra)
        out.append(items[start:end])
        start = end
    return out


def policy_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: UpdateBatch,
    loss_cfg: PolicyLossConfig,
    cfg: OptimConfig,
    temperature: float,
    rng: random.Random,
) -> dict[str, float]:
    """Run the update of the module docstring on ``batch``; returns its metrics."""
    rows = batch.rows
    n_rows = rows.input_ids_BT.shape[0]
    lengths = rows.attention_mask_BT.sum(dim=1).tolist()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    device = params[0].device
    entropy_mode = (
        "grad"
        if loss_cfg.entropy_coef != 0
        else "detached"
        if loss_cfg.entropy_adv_beta
        else "none"
    )
    tracker = _MetricTracker()
    skipped = 0
    for _ in range(cfg.ppo_epochs):
        order = list(range(n_rows))
        if cfg.shuffle:
            rng.shuffle(order)
        for mini in split_evenly(order, cfg.mini_batches):
            mini_mask_BT = rows.loss_mask_BT[mini]
            num_tokens = float(mini_mask_BT.sum())
            num_rows = float((mini_mask_BT.sum(dim=1) > 0).sum())
            optimizer.zero_grad(set_to_none=True)
            losses: dict[str, float] = defaultdict(float)
            groups = row_micro_batches(
                rows.input_ids_BT[mini],
                [lengths[i] for i in mini],
                cfg.micro_batch_tokens,
                cfg.packed_tokens,
            )
            for group in groups:
                index = torch.tensor([mini[i] for i in group])
                loss, metrics = _micro_batch_loss(
                    model,
                    batch,
                    index,
                    lengths,
                    loss_cfg,
                    temperature,
                    entropy_mode,
                    (num_tokens, num_rows),
                    cfg.packing,
                    device,
                )
                loss.backward()
                mask_BT = rows.loss_mask_BT[index]
                weights = {
                    "tokens": float(mask_BT.sum()),
                    "rows": float((mask_BT.sum(dim=1) > 0).sum()),
                }
                for key, value in metrics.items():
                    if key.startswith("loss/"):
                        losses[key] += float(value)
                    else:
                        per = "rows" if key.startswith("turn/") else "tokens"
                        tracker.add(key, float(value), weights[per])
            for key, value in losses.items():
                tracker.add(key, value, 1.0)
            norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            if math.isfinite(norm):
                optimizer.step()
                tracker.add("policy/grad_norm", norm, 1.0)
            else:
                skipped += 1
            optimizer.zero_grad(set_to_none=True)
    out = tracker.result()
    out["policy/skipped_updates"] = float(skipped)
    out["policy/lr"] = float(optimizer.param_groups[0]["lr"])
    return out


def _micro_batch_loss(
    model: torch.nn.Module,
    batch: UpdateBatch,
    index: torch.Tensor,
    lengths: list[int],
    loss_cfg: PolicyLossConfig,
    temperature: float,
    entropy_mode: str,
    normalisers: tuple[float, float],
    packed: bool,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of the rows ``index`` (normalised by the mini-batch's trained tokens and non-empty
    rows, ``normalisers``) and its metrics."""
    rows = batch.rows
    width = int(max(lengths[i] for i in index.tolist()))

    def take(tensor_BT: torch.Tensor) -> torch.Tensor:
        return tensor_BT[index, :width].to(device)

    logp_BT, entropy_BT = rows_logprobs(
        model,
        take(rows.input_ids_BT),
        take(rows.attention_mask_BT),
        rows.prompt_len_B[index],
        temperature,
        entropy_mode,  # type: ignore[arg-type]
        packed,
    )
    num_tokens, num_rows = normalisers
    return policy_loss(
        logp_BT,
        take(batch.old_logp_BT),
        take(rows.adv_BT),
        take(rows.loss_mask_BT),
        loss_cfg,
        turn_BT=take(rows.turn_BT),
        ref_logp_BT=None if batch.ref_logp_BT is None else take(batch.ref_logp_BT),
        entropy_BT=entropy_BT,
        num_tokens=num_tokens,
        num_rows=num_rows,
    )


class _MetricTracker:
    """Weighted means of metrics, with minima for ``*_min`` and maxima for ``*_max`` keys."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.weights: dict[str, float] = defaultdict(float)
        self.extremes: dict[str, float] = {}

    def add(self, key: str, value: float, weight: float) -> None:
        if key.endswith("_min") or key.endswith("_max"):
            pick = min if key.endswith("_min") else max
            self.extremes[key] = pick(self.extremes.get(key, value), value)
            return
        self.sums[key] += value * weight
        self.weights[key] += weight

    def result(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.weights[k] for k in self.sums if self.weights[k] > 0}
        return out | self.extremes
