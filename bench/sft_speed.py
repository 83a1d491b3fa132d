"""Speed of the bootstrap's SFT step on this machine: seconds per optimizer step and tokens/s.

Rows are random token ids shaped like the bootstrap's demonstrations (a shared instruction of
``--prefix`` tokens, then ``--length`` − ``--prefix`` tokens, half of them the policy's, half
observations); the step is :func:`at2po.models.sft.sft_step`, the one
:func:`at2po.models.sft.train_sft` runs. Prints one JSON line with ``seconds_per_step`` (median
of the timed steps after ``--warmup``) and ``tokens_per_s``; ``--budget-s`` adds ``steps_in_budget``
(how many steps fit in that many seconds, rounded down to a multiple of 500).

Usage: ``python bench/sft_speed.py [--device cuda] [--batch-size 64] [--steps 30]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from at2po.models.sft import SFTConfig, sft_step, use_bf16
from at2po.models.sft_data import SFTExample, collate
from at2po.models.tiny import TinyModelConfig, build_tiny_model, tiny_llama_config


def _rows(n: int, length: int, prefix: int, vocab: int, seed: int) -> list[SFTExample]:
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randint(3, vocab, (prefix,), generator=generator).tolist()
    rows = []
    for _ in range(n):
        tail = torch.randint(3, vocab, (length - prefix,), generator=generator).tolist()
        half = (length - prefix) // 2
        policy = [0] * prefix + [1] * half + [0] * (length - prefix - half)
        observed = [0] * prefix + [0] * half + [1] * (length - prefix - half)
        rows.append(SFTExample(tuple(shared + tail), tuple(policy), tuple(observed)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--length", type=int, default=580, help="tokens per row")
    parser.add_argument("--prefix", type=int, default=330, help="shared instruction tokens")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--budget-s", type=float, default=None)
    args = parser.parse_args()

    device = torch.device(args.device)
    vocab = 4096
    model = build_tiny_model(
        tiny_llama_config(TinyModelConfig(), vocab_size=vocab, eos_token_id=2, pad_token_id=0),
        seed=0,
    ).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = SFTConfig()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(cfg, device))
    rows = _rows(args.batch_size, args.length, args.prefix, vocab, seed=0)
    seconds = []
    for step in range(args.warmup + args.steps):
        clock = time.perf_counter()
        batch = collate(rows, pad_id=0).to(device)
        sft_step(model, batch, optimizer, cfg, autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            seconds.append(time.perf_counter() - clock)
    per_step = statistics.median(seconds)
    record = {
        "bench": "sft_speed",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "bf16": use_bf16(cfg, device),
        "batch_size": args.batch_size,
        "row_tokens": args.length,
        "seconds_per_step": round(per_step, 5),
        "tokens_per_s": round(args.batch_size * args.length / per_step),
    }
    if args.budget_s is not None:
        record["steps_in_budget"] = max(500, int(args.budget_s / per_step) // 500 * 500)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
