"""AdamW and its learning-rate schedule, stepped once per training step.

With W warm-up steps, S training steps, floor r = ``min_lr_ratio`` and p = (s − W) / (S − W) the
progress after warm-up, the learning rate of step s (0-based) is lr · f(s):

    f(s) = (s + 1) / W                                  for s < W
    f(s) = 1                                            constant
    f(s) = r + (1 − r) · (1 − p)                        linear
    f(s) = r + (1 − r) · ½ (1 + cos(π p))               cosine
"""

from __future__ import annotations

import math

import torch

from at2po.train.config import OptimConfig


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """f(step) of the module docstring."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    if cfg.schedule == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def build_optimizer(
    model: torch.nn.Module, cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters and a scheduler applying :func:`lr_factor`."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg, total_steps)
    )
    return optimizer, scheduler
