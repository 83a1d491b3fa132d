"""Supervised fine-tuning on loss-masked rows: AdamW, linear warm-up then cosine decay.

Loss of a batch, with m the loss mask (1 on the policy's own tokens) and o the observation mask
(1 on the tool output the environment inserted):

    NLL_m = Σ_{b,t} m[b,t] · (−log p_θ(x[b,t] | x[b,<t])) / Σ_{b,t} m[b,t]
    L     = NLL_m + λ · NLL_o

The first term is the SFT loss proper. The second, weighted by λ = ``observation_weight``, is an
auxiliary language-modelling loss on the retrieved passages: a model trained from scratch has
never read text, and predicting passages full of repeated names teaches it to copy a name it has
seen earlier in the context — the skill every search, bridge and answer needs — many times
faster than the policy's own few tokens do. ``observation_weight=0`` gives plain SFT. Prompt
tokens are never targets.

Two savings keep it cheap on a CPU without changing the loss or its gradient
(:func:`batch_loss`): the prefix that every row of a batch shares (the instruction of the prompt,
about 300 tokens) is run once and its keys/values repeated over the batch, with gradients flowing
through them; and the output head and softmax run only at the positions that predict a target.

Where the hardware multiplies bf16 natively (``bf16``), the forward and backward run under bf16
autocast with fp32 weights, AdamW state and loss reduction: 1.4–1.6× the fp32 tokens/s of
:func:`train_sft` on one AMX CPU core.

Learning rate at step s (0-based) of S, with W = round(warmup_ratio · S) warm-up steps and
floor r:

    lr(s) = lr_max · (s + 1) / W                                          for s < W
    lr(s) = lr_max · (r + (1 − r) · ½ (1 + cos(π (s − W) / (S − W))))     otherwise
"""

from __future__ import annotations

import inspect
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import DynamicCache

from at2po.models.sft_data import Batch, SFTExample, collate, length_grouped_batches


@dataclass(frozen=True)
class SFTConfig:
    """How the warm start is trained."""

    steps: int = 400
    """Optimizer steps (the rows are cycled through in length-grouped epochs)."""
    batch_size: int = 8
    """Rows per step."""
    lr: float = 3e-3
    """Peak learning rate."""
    warmup_ratio: float = 0.05
    """Fraction of the steps spent in linear warm-up (W = round(warmup_ratio · steps))."""
    min_lr_ratio: float = 0.1
    """The cosine decays to lr · min_lr_ratio at the last step."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay (applied to every parameter)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW moment decay rates."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value."""
    observation_weight: float = 0.5
    """λ: weight of the auxiliary language-modelling loss on observation tokens (0: plain SFT)."""
    bf16: bool | None = None
    """Forward and backward under bfloat16 autocast (the weights and the optimizer stay fp32).
    ``None``: on where bf16 matrix products are native (CUDA, or a CPU with AVX-512 BF16 / AMX),
    where they are 1.4–1.6× faster; off elsewhere, where they would be slower."""
    seed: int = 0
    """Seeds the batch order."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"SFTConfig.steps={self.steps} and batch_size={self.batch_size} must be >= 1"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"SFTConfig.warmup_ratio={self.warmup_ratio} must lie in [0, 1)")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.observation_weight < 0:
            raise ValueError(
                "SFTConfig needs lr > 0, min_lr_ratio in [0, 1] and observation_weight >= 0"
            )


@dataclass(frozen=True)
class SFTLoss:
    """The loss to minimise and its two parts (the NLL of the policy's tokens and of the
    observation tokens; the latter is 0 when the weight is 0)."""

    total: torch.Tensor
    policy_nll: torch.Tensor
    observation_nll: torch.Tensor


@dataclass(frozen=True)
class SFTResult:
    """What training did: the policy-token NLL of every step, the tokens seen, the time."""

    policy_nll: tuple[float, ...]
    tokens: int
    policy_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        """Row tokens (padding excluded) through forward and backward per second."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def target_positions(
    input_ids_BT: torch.Tensor, target_mask_BT: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows ``b_N`` and positions ``t_N`` whose output predicts a target token, and those tokens.

    Position t predicts token t + 1, so it is selected when ``target_mask_BT[b, t + 1]`` is 1;
    token 0 of a row is never a target.
    """
    b_N, t_N = target_mask_BT[:, 1:].nonzero(as_tuple=True)
    return b_N, t_N, input_ids_BT[b_N, t_N + 1]


def shared_prefix_length(batch: Batch, target_mask_BT: torch.Tensor) -> int:
    """Leading tokens that every row holds, that are no row's padding and whose next token is not
    a target either, so no target lies inside the prefix or right after it."""
    ids_BT = batch.input_ids_BT
    same_T = (ids_BT == ids_BT[:1]).all(dim=0) & batch.attention_mask_BT.bool().all(dim=0)
    common = int(same_T.long().cumprod(dim=0).sum())
    targeted_T = target_mask_BT.bool().any(dim=0)
    first_target = int(targeted_T.long().argmax()) if bool(targeted_T.any()) else ids_BT.shape[1]
    return max(0, min(common, first_target - 1, ids_BT.shape[1] - 1))


def batch_loss(model: torch.nn.Module, batch: Batch, observation_weight: float) -> SFTLoss:
    """The loss of the module docstring for one batch.

    The decoder runs the shared prefix once; the output head runs only where a target is
    predicted, so the ``B × T × V`` logits of the batch are never formed. This needs a model whose
    logits are its output embedding applied to the decoder's last hidden state (Llama, Qwen2,
    SmolLM2 …; not models with logit soft-capping).
    """
    policy_BT = batch.loss_mask_BT.bool()
    observation_BT = batch.observation_mask_BT.bool() & (observation_weight > 0)
    target_BT = policy_BT | observation_BT
    prefix = shared_prefix_length(batch, target_BT)
    hidden_BTD = _decoder_states(model, batch, prefix)
    b_N, t_N, targets_N = target_positions(batch.input_ids_BT[:, prefix:], target_BT[:, prefix:])
    logits_NV = model.get_output_embeddings()(hidden_BTD[b_N, t_N])
    logits_NV = logits_NV.to(torch.promote_types(logits_NV.dtype, torch.float32))
    nll_N = F.cross_entropy(logits_NV, targets_N, reduction="none")
    is_policy_N = policy_BT[:, prefix + 1 :][b_N, t_N]
    policy_nll = _mean(nll_N[is_policy_N])
    observation_nll = _mean(nll_N[~is_policy_N])
    return SFTLoss(policy_nll + observation_weight * observation_nll, policy_nll, observation_nll)


def _mean(values_N: torch.Tensor) -> torch.Tensor:
    """Mean of a possibly empty vector (0 when empty, keeping the graph)."""
    return values_N.sum() / max(1, values_N.numel())


def _decoder_states(model: torch.nn.Module, batch: Batch, prefix: int) -> torch.Tensor:
    """Last hidden states at positions ``prefix…T−1`` of every row, with the first ``prefix``
    tokens (the same in every row) run once and their keys/values repeated over the batch."""
    decoder = model.get_decoder()
    if prefix == 0:
        return decoder(
            input_ids=batch.input_ids_BT, attention_mask=batch.attention_mask_BT
        ).last_hidden_state
    n_rows, width = batch.input_ids_BT.shape
    parameters = inspect.signature(decoder.forward).parameters
    cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
    cache = DynamicCache()
    decoder(input_ids=batch.input_ids_BT[:1, :prefix], use_cache=True, **{cache_kwarg: cache})
    cache.batch_repeat_interleave(n_rows)
    return decoder(
        input_ids=batch.input_ids_BT[:, prefix:],
        attention_mask=batch.attention_mask_BT,
        position_ids=torch.arange(prefix, width, device=batch.input_ids_BT.device).expand(
            n_rows, -1
        ),
        use_cache=True,
        **{cache_kwarg: cache},
    ).last_hidden_state


def use_bf16(cfg: SFTConfig, device: torch.device) -> bool:
    """Whether training runs under bf16 autocast: ``cfg.bf16``, or where it is native if None."""
    if cfg.bf16 is not None:
        return cfg.bf16
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def lr_at(step: int, cfg: SFTConfig) -> float:
    """The learning rate of a 0-based step (module docstring)."""
    warmup = round(cfg.warmup_ratio * cfg.steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def sft_step(
    model: torch.nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    cfg: SFTConfig,
    autocast: torch.autocast,
) -> SFTLoss:
    """One optimizer step on ``batch``: the loss under ``autocast``, backward, gradient clipping
    at ``cfg.grad_clip``, AdamW; returns the loss (its graph is freed by the backward)."""
    with autocast:
        loss = batch_loss(model, batch, cfg.observation_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss


def train_sft(
    model: torch.nn.Module,
    rows: Sequence[SFTExample],
    cfg: SFTConfig,
    *,
    pad_id: int,
    show_progress: bool = True,
    console: Console | None = None,
) -> SFTResult:
    """Train ``model`` in place on ``rows`` for ``cfg.steps`` steps; leaves it in eval mode.

    Batches go to the model's device. Progress is a bar on a terminal; when ``console`` is not
    one (output redirected), a line every 5 % of the steps with the elapsed time instead.
    """
    if not rows:
        raise ValueError("train_sft() needs at least one row")
    if not any(any(row.loss_mask) for row in rows):
        raise ValueError("no row has a token with loss mask 1; there is nothing to train on")
    console = console or Console(stderr=True)
    rng = random.Random(cfg.seed)
    lengths = [len(row) for row in rows]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    model.train()
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(cfg, device))
    policy_nll_S = torch.zeros(cfg.steps, device=device)
    tokens = policy_tokens = 0
    queue: list[list[int]] = []
    report_every = max(1, cfg.steps // 20)
    lines = show_progress and not console.is_terminal
    start = time.perf_counter()
    with _progress(show_progress and not lines, console) as progress:
        task = progress.add_task("SFT", total=cfg.steps, nll=float("nan"), tps=0.0)
        for step in range(cfg.steps):
            if not queue:
                queue = length_grouped_batches(lengths, cfg.batch_size, rng)
            batch = collate([rows[i] for i in queue.pop()], pad_id)
            tokens += int(batch.attention_mask_BT.sum())
            policy_tokens += int(batch.loss_mask_BT[:, 1:].sum())
            batch = batch.to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss = sft_step(model, batch, optimizer, cfg, autocast)
            policy_nll_S[step] = loss.policy_nll.detach()
            if (step + 1) % report_every == 0 or step + 1 == cfg.steps:
                elapsed = time.perf_counter() - start
                nll = policy_nll_S[max(0, step + 1 - report_every) : step + 1].mean().item()
                progress.update(task, completed=step + 1, nll=nll, tps=tokens / elapsed)
                if lines:
                    console.print(
                        f"[{elapsed:7.1f} s] SFT step {step + 1}/{cfg.steps}: policy NLL "
                        f"{nll:.3f}, {tokens / elapsed:,.0f} tok/s",
                        highlight=False,
                        soft_wrap=True,
                    )
    model.eval()
    seconds = time.perf_counter() - start
    return SFTResult(tuple(policy_nll_S.tolist()), tokens, policy_tokens, seconds)


def _progress(enabled: bool, console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("policy NLL {task.fields[nll]:.3f}"),
        TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )
