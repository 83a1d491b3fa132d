"""Trainer speed: the library's update against a raw forward+backward, and seconds per phase.

Prints one JSON object per measurement:

* ``update_vs_raw``: the rows of real rollouts (quickstart settings) trained on by
  :func:`at2po.train.update.policy_update` (one epoch, one mini-batch, the configured micro-batch
  budget, AdamW) against a raw loop over the same micro-batches: forward, mean next-token
  cross-entropy over the rows' real tokens, backward, gradient clipping, AdamW. Tokens per second
  count the rows' real (unpadded) tokens; best of ``--repeats``, interleaved. The target is
  ``ratio`` ≥ 0.8 (the library's overhead under 20 %).
* ``logprobs_vs_raw``: :func:`at2po.train.logprobs.recompute_logprobs` against a raw no-grad
  forward over the same micro-batches.
* ``step_phases``: seconds per phase (rollout, credit, logprobs, update) of quickstart steps,
  averaged over ``--steps`` steps, with the generated and trained tokens per second, rolled out
  by ``--rollout-workers`` processes (``train.rollout_workers``; 1: in the trainer's process);
  ``workers_start_seconds`` is how long the workers took to start.

Usage: ``python bench/train.py [--model tiny|DIR] [--steps 3] [--repeats 3] [--rollout-workers
1|N|auto] [--packing true|false] [--phases-only] [--record bench/results/perf.jsonl]``. The
default model is the bootstrapped tiny policy (``at2po bootstrap``). Every line carries the
commit; ``--record`` appends them to a file.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from at2po.core.rows import Rows, build_rows
from at2po.rollout.rollouts import rollout
from at2po.train.config import TrainConfig, load_config
from at2po.train.credit import assign_credit
from at2po.train.logprobs import micro_batches, recompute_logprobs
from at2po.train.optim import build_optimizer
from at2po.train.trainer import Trainer
from at2po.train.update import UpdateBatch, policy_update
from timing import best_seconds

RECORDS: list[Path] = []
"""Files every emitted line is also appended to (``--record``)."""


def emit(**record) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    line = json.dumps(record | {"commit": commit.stdout.strip()})
    print(line, flush=True)
    for path in RECORDS:
        with path.open("a") as sink:
            sink.write(line + "\n")


def rollout_rows(trainer: Trainer) -> Rows:
    """Rows of one quickstart rollout, with their advantages."""
    examples = trainer.train_examples[: trainer.cfg.train.prompts_per_step]
    out = rollout(trainer.engine, trainer.codec, trainer.task.env, examples, trainer.rollout_cfg)
    credit = assign_credit(out.groups, trainer.cfg.credit)
    return build_rows(
        credit.trees, credit.leaf_rows, credit.advantages, trainer.tokenizer.pad_token_id
    )


def raw_update(model, optimizer, rows: Rows, budget: int) -> None:
    """Forward, next-token cross-entropy over real tokens, backward, clip, AdamW."""
    lengths = rows.attention_mask_BT.sum(dim=1).tolist()
    optimizer.zero_grad(set_to_none=True)
    total = float(rows.attention_mask_BT.sum())
    for group in micro_batches(lengths, budget):
        index = torch.tensor(group)
        width = int(max(lengths[i] for i in group))
        ids_BT = rows.input_ids_BT[index, :width]
        mask_BT = rows.attention_mask_BT[index, :width]
        logits_BTV = model(input_ids=ids_BT, attention_mask=mask_BT).logits
        nll_BT = torch.nn.functional.cross_entropy(
            logits_BTV[:, :-1].transpose(1, 2).float(), ids_BT[:, 1:], reduction="none"
        )
        (nll_BT * mask_BT[:, 1:]).sum().div(total).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def raw_forward(model, rows: Rows, budget: int) -> None:
    lengths = rows.attention_mask_BT.sum(dim=1).tolist()
    with torch.no_grad():
        for group in micro_batches(lengths, budget):
            index = torch.tensor(group)
            width = int(max(lengths[i] for i in group))
            model(
                input_ids=rows.input_ids_BT[index, :width],
                attention_mask=rows.attention_mask_BT[index, :width],
            )


def bench_update(trainer: Trainer, repeats: int) -> None:
    cfg = trainer.cfg
    rows = rollout_rows(trainer)
    budget = cfg.optim.micro_batch_tokens
    temperature = trainer.rollout_cfg.sampling.effective_temperature
    old_logp_BT, _ = recompute_logprobs(
        trainer.model,
        rows.input_ids_BT,
        rows.attention_mask_BT,
        rows.prompt_len_B,
        temperature,
        budget,
    )
    batch = UpdateBatch(rows, old_logp_BT, None)
    ours_model, raw_model = copy.deepcopy(trainer.model), copy.deepcopy(trainer.model)
    ours_opt, _ = build_optimizer(ours_model, cfg.optim, cfg.train.steps)
    raw_opt, _ = build_optimizer(raw_model, cfg.optim, cfg.train.steps)
    one_pass = cfg.optim.model_copy(update={"ppo_epochs": 1, "mini_batches": 1})
    rng = random.Random(0)
    tokens = int(rows.attention_mask_BT.sum())
    seconds = best_seconds(
        {
            "library": lambda: policy_update(
                ours_model, ours_opt, batch, trainer.runner.loss_cfg, one_pass, temperature, rng
            ),
            "raw": lambda: raw_update(raw_model, raw_opt, rows, budget),
        },
        repeats,
    )
    emit(
        measurement="update_vs_raw",
        rows=rows.input_ids_BT.shape[0],
        tokens=tokens,
        micro_batches=len(micro_batches(rows.attention_mask_BT.sum(dim=1).tolist(), budget)),
        library_tokens_per_s=tokens / seconds["library"],
        raw_tokens_per_s=tokens / seconds["raw"],
        ratio=seconds["raw"] / seconds["library"],
    )
    seconds = best_seconds(
        {
            "library": lambda: recompute_logprobs(
                trainer.model,
                rows.input_ids_BT,
                rows.attention_mask_BT,
                rows.prompt_len_B,
                temperature,
                budget,
            ),
            "raw": lambda: raw_forward(trainer.model, rows, budget),
        },
        repeats,
    )
    emit(
        measurement="logprobs_vs_raw",
        tokens=tokens,
        library_tokens_per_s=tokens / seconds["library"],
        raw_tokens_per_s=tokens / seconds["raw"],
        ratio=seconds["raw"] / seconds["library"],
    )


def bench_phases(trainer: Trainer, steps: int) -> None:
    clock = time.perf_counter()
    trainer.start_workers()
    started = time.perf_counter() - clock
    totals: dict[str, float] = {}
    for _ in range(steps):
        out = trainer.runner.run(trainer.next_examples, trainer.rng)
        for key, value in out.metrics.items():
            if key.startswith("perf/") or key in ("rollout/generated_tokens", "tree/row_tokens"):
                totals[key] = totals.get(key, 0.0) + value / steps
    emit(
        bench="step",
        measurement="step_phases",
        packing=trainer.cfg.optim.packing,
        steps=steps,
        rollout_workers=trainer.worker_count,
        workers_start_seconds=round(started, 2),
        **{k.removeprefix("perf/"): round(v, 4) for k, v in sorted(totals.items())},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="model name or directory (tiny)")
    parser.add_argument("--steps", type=int, default=3, help="quickstart steps timed per phase")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (best is kept)")
    parser.add_argument(
        "--rollout-workers", default="1", help="train.rollout_workers of the timed steps (1)"
    )
    parser.add_argument(
        "--packing", default="true", choices=("true", "false"), help="optim.packing (true)"
    )
    parser.add_argument(
        "--phases-only", action="store_true", help="time the steps only (skip the update bench)"
    )
    parser.add_argument("--record", type=Path, default=None, help="append the lines to this file")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="at2po-bench-train-")
    overrides = [
        f"model.path={args.model}",
        f"out_dir={scratch.name}",
        "train.progress=false",
        "train.tensorboard=false",
        f"train.rollout_workers={args.rollout_workers}",
        f"optim.packing={args.packing}",
    ]
    if args.record:
        RECORDS.append(args.record)
    cfg: TrainConfig = load_config("quickstart", overrides)
    with Trainer(cfg) as trainer:
        emit(
            measurement="setup",
            model=str(args.model),
            parameters=sum(p.numel() for p in trainer.model.parameters()),
            threads=torch.get_num_threads(),
        )
        if not args.phases_only:
            bench_update(trainer, args.repeats)
        bench_phases(trainer, args.steps)
    scratch.cleanup()


if __name__ == "__main__":
    main()
