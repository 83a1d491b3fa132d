"""Benchmark: the turn-level (ATPO) loss, forward + backward, at the authors' mini-batch shape.

Compares, on the same tensors (176 rows × 4096 tokens, 6 turns per row by default):

* ``vectorised``: :func:`at2po.core.losses.policy_loss` with the ``turn`` preset;
* ``token``: the same call with the token-level PPO preset (target: turn ≤ 1.5 × token);
* ``loop``: the same turn loss written the straightforward way, as the authors' ``gspo_turn`` is:
  turns found by reading the mask token by token, then one ratio, clip and loss per row and turn
  on tensor slices (target: vectorised ≥ 20 × faster).

``logp`` is a leaf tensor that requires grad: this measures the loss math, not a model. Prints one
JSON object per measurement. Usage: ``python bench/core_losses.py [--rows 176 --tokens 4096 ...]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from at2po.core.losses import policy_loss
from at2po.core.segments import TurnSegments

CLIP_LOW, CLIP_HIGH, LOG_RATIO_CAP = 3e-3, 4e-3, 10.0


def make_batch(rows: int, tokens: int, turns: int, seed: int = 0):
    """Rows of ``turns`` generated segments separated by observations, then padding.

    Each row is cut into ``turns`` equal slots; a slot holds an observation of 5–25 % of the slot
    (mask 0) then a generation (mask 1); the last slot ends with 0–10 % padding.
    """
    gen = torch.Generator().manual_seed(seed)
    mask_BT = torch.zeros(rows, tokens)
    slot = tokens // turns
    for b in range(rows):
        for k in range(turns):
            obs = int(slot * (0.05 + 0.2 * torch.rand((), generator=gen).item()))
            end = (k + 1) * slot
            if k == turns - 1:
                end -= int(slot * 0.1 * torch.rand((), generator=gen).item())
            mask_BT[b, k * slot + obs : end] = 1.0
    logp_BT = -torch.rand(rows, tokens, generator=gen) * 3
    old_logp_BT = logp_BT + 0.005 * torch.randn(rows, tokens, generator=gen)
    turn_adv_BK = torch.randn(rows, turns, generator=gen)
    adv_BT = turn_adv_BK.repeat_interleave(slot, dim=1)
    adv_BT = torch.cat([adv_BT, adv_BT[:, -1:].expand(rows, tokens - adv_BT.shape[1])], dim=1)
    return logp_BT, old_logp_BT, adv_BT, mask_BT


def loop_turns(mask_row: list[float]) -> list[tuple[int, int]]:
    """(start, stop) of each run of 1s, read token by token as the authors' loop does."""
    turns, start = [], None
    for t, m in enumerate(mask_row):
        if m and start is None:
            start = t
        elif not m and start is not None:
            turns.append((start, t))
            start = None
    if start is not None:
        turns.append((start, len(mask_row)))
    return turns


def loop_turn_log_ratio(log_ratio_BT, mask_BT):
    """Per-token turn log-ratio ℓ, one Python iteration per row and per turn."""
    turn_log_ratio_BT = torch.zeros_like(log_ratio_BT)
    for b, mask_row in enumerate(mask_BT.tolist()):
        for start, stop in loop_turns(mask_row):
            turn_log_ratio_BT[b, start:stop] = log_ratio_BT[b, start:stop].mean()
    return turn_log_ratio_BT


def vectorised_turn_log_ratio(log_ratio_BT, mask_BT):
    """Per-token turn log-ratio ℓ through :class:`TurnSegments` (what ``policy_loss`` does)."""
    segments = TurnSegments.from_mask(mask_BT)
    return segments.broadcast(segments.mean(log_ratio_BT))


def loop_turn_loss(logp_BT, old_logp_BT, adv_BT, mask_BT):
    """The ATPO loss written straightforwardly: per row, per turn, ratio → clip → loss on a slice.

    This is the shape of the authors' ``compute_policy_loss_gspo_turn`` (a Python loop over rows
    and turns); the baseline the vectorised loss is measured against.
    """
    row_losses = []
    for b, mask_row in enumerate(mask_BT.tolist()):
        turns = loop_turns(mask_row)
        if not turns:
            continue
        total = logp_BT.new_zeros(())
        for start, stop in turns:
            logp_T = logp_BT[b, start:stop]
            turn_log_ratio = (logp_T - old_logp_BT[b, start:stop]).mean().detach()
            s_T = (turn_log_ratio + logp_T - logp_T.detach()).clamp(max=LOG_RATIO_CAP).exp()
            adv_T = adv_BT[b, start:stop]
            clipped_T = s_T.clamp(1 - CLIP_LOW, 1 + CLIP_HIGH)
            total = total + torch.maximum(-adv_T * s_T, -adv_T * clipped_T).sum()
        row_losses.append(total / sum(stop - start for start, stop in turns))
    return torch.stack(row_losses).mean()


def time_calls(fn: Callable[[], object], reps: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds per call, after one warm-up call. On a shared machine the CPU
    time (with ``--threads 1``) is the steadier number."""
    wall, cpu = [], []
    for i in range(reps + 1):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        if i:
            wall.append(time.perf_counter() - start_wall)
            cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def fwd_bwd(loss_fn: Callable[[torch.Tensor], torch.Tensor], logp_BT: torch.Tensor):
    """A call that runs the loss forward and backward from a fresh leaf copy of ``logp_BT``."""
    return lambda: loss_fn(logp_BT.clone().requires_grad_()).backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=176)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--loop-reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    logp_BT, old_BT, adv_BT, mask_BT = make_batch(args.rows, args.tokens, args.turns)
    log_ratio_BT = old_BT - logp_BT
    impls = {
        "vectorised": (
            fwd_bwd(lambda lp: policy_loss(lp, old_BT, adv_BT, mask_BT, "turn")[0], logp_BT),
            args.reps,
        ),
        "token": (
            fwd_bwd(lambda lp: policy_loss(lp, old_BT, adv_BT, mask_BT, "token")[0], logp_BT),
            args.reps,
        ),
        "loop": (
            fwd_bwd(lambda lp: loop_turn_loss(lp, old_BT, adv_BT, mask_BT), logp_BT),
            args.loop_reps,
        ),
        "turn_ratio_vectorised": (
            lambda: vectorised_turn_log_ratio(log_ratio_BT, mask_BT),
            args.reps,
        ),
        "turn_ratio_loop": (lambda: loop_turn_log_ratio(log_ratio_BT, mask_BT), args.loop_reps),
    }
    shape = {
        "rows": args.rows,
        "tokens": args.tokens,
        "turns_per_row": args.turns,
        "threads": torch.get_num_threads(),
    }
    cpu_median = {}
    for name, (fn, reps) in impls.items():
        wall, cpu = time_calls(fn, reps)
        cpu_median[name] = statistics.median(cpu)
        record = {"bench": "core.turn_loss", "impl": name, **shape, "reps": reps}
        record |= {"wall_median_s": statistics.median(wall), "wall_min_s": min(wall)}
        record |= {"cpu_median_s": cpu_median[name], "cpu_min_s": min(cpu)}
        print(json.dumps(record))

    ours = policy_loss(logp_BT, old_BT, adv_BT, mask_BT, "turn")[0].item()
    loop = loop_turn_loss(logp_BT, old_BT, adv_BT, mask_BT).item()
    summary = {"bench": "core.turn_loss", "impl": "summary", **shape, "basis": "cpu_median_s"}
    summary |= {
        "turn_over_token": cpu_median["vectorised"] / cpu_median["token"],
        "turn_over_token_target": 1.5,
        "loop_speedup": cpu_median["loop"] / cpu_median["vectorised"],
        "loop_speedup_target": 20.0,
        "turn_ratio_speedup": cpu_median["turn_ratio_loop"] / cpu_median["turn_ratio_vectorised"],
        "loss_abs_diff_vs_loop": abs(ours - loop),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
