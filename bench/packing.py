"""Tree packing: log-prob recompute + update of one batch, packed against per-row.

For each batch and model, three ways of running the same work — ``recompute_logprobs`` (no grad,
with entropies) then ``policy_update`` (one epoch, one mini-batch, AdamW) — each on its own copy
of the model:

* ``per_row``: padded micro-batches of ``optim.micro_batch_tokens``, every row run in full;
* ``shared_prefix``: the same micro-batches, the prefix common to a micro-batch run once (what
  ``optim.packing=false`` does);
* ``packed``: tree-packed micro-batches of ``optim.packed_micro_batch_tokens`` distinct tokens.

Each way runs in a fresh process of its own: its first pass gives the peak resident memory above
what was held before it (``VmHWM`` of /proc, reset first; on CUDA,
``torch.cuda.max_memory_allocated``), then the best wall time of ``--repeats`` more. The target:
``packed_s`` ≤ 1.15 × (distinct / row tokens) × ``per_row_s``.

Batches: ``quickstart`` (the rows of one real quickstart rollout of the tiny policy: 8 trees × 8
rows; its token ids are reused as they are for other models) and ``searchr1`` (synthetic, shaped
like a Search-R1 AT²PO tree: a 200-token prompt, M=10 chains, then 2 rounds × 6 branches at random
turn boundaries, 22 leaves of 6 turns, each turn a 60-token action and a 300-token observation).

Usage: ``python bench/packing.py [--model tiny|smollm2-135m] [--batch quickstart searchr1]
[--repeats 2] [--logprobs-only] [--record bench/results/perf.jsonl]``; one JSON line per
(batch, model). ``--logprobs-only`` times the recompute alone (for models too slow to update on
this CPU); ``--repeats 0`` keeps the first pass's time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import at2po.train.logprobs as logprobs_module
from at2po.core.losses import policy_loss_config
from at2po.core.rows import Rows
from at2po.train.config import ModelConfig, OptimConfig, load_config
from at2po.train.logprobs import recompute_logprobs
from at2po.train.packing import pack_rows, packed_micro_batches
from at2po.train.policy import load_model, model_directory
from at2po.train.update import UpdateBatch, policy_update

MODES = ("per_row", "shared_prefix", "packed")


def searchr1_rows(seed: int = 0, vocab: int = 4000) -> Rows:
    """The synthetic Search-R1-shaped tree batch of the module docstring."""
    rng = random.Random(seed)
    prompt_len, n_turns, act_len, obs_len = 200, 6, 60, 300

    def tokens(n: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(n)]

    def finish(path: list[list[int]]) -> list[list[int]]:
        return path + [tokens(act_len) + tokens(obs_len) for _ in range(n_turns - len(path))]

    prompt = tokens(prompt_len)
    leaves = [finish([]) for _ in range(10)]
    for _ in range(2):
        for _ in range(6):
            base = rng.choice(leaves)
            leaves.append(finish(base[: rng.randrange(n_turns)]))
    return _rows(prompt, leaves, act_len)


def _rows(prompt: list[int], leaves: list[list[list[int]]], act_len: int) -> Rows:
    """Rows whose turns are ``act_len`` trained tokens then an observation (loss mask 0)."""
    width = len(prompt) + max(sum(len(t) for t in leaf) for leaf in leaves)
    n = len(leaves)
    ids_BT = torch.zeros((n, width), dtype=torch.long)
    attention_BT = torch.zeros((n, width), dtype=torch.long)
    loss_BT = torch.zeros((n, width))
    turn_BT = torch.full((n, width), -1, dtype=torch.long)
    for b, leaf in enumerate(leaves):
        row = list(prompt)
        for j, turn in enumerate(leaf):
            loss_BT[b, len(row) : len(row) + act_len] = 1.0
            turn_BT[b, len(row) : len(row) + act_len] = j
            row += turn
        ids_BT[b, : len(row)] = torch.tensor(row)
        attention_BT[b, : len(row)] = 1
    adv_BT = torch.randn((n, width), generator=torch.Generator().manual_seed(0)) * loss_BT
    return Rows(
        ids_BT,
        attention_BT,
        loss_BT,
        torch.zeros((n, width)),
        adv_BT,
        turn_BT,
        torch.zeros(n, dtype=torch.long),
        torch.full((n,), len(prompt), dtype=torch.long),
        [[] for _ in leaves],
    )


def quickstart_rows() -> Rows:
    """The rows of one quickstart rollout of the tiny policy (bench/train.py's batch)."""
    from at2po.train.trainer import Trainer
    from train import rollout_rows

    with tempfile.TemporaryDirectory(prefix="at2po-bench-packing-") as scratch:
        overrides = [f"out_dir={scratch}", "train.progress=false", "train.tensorboard=false"]
        return rollout_rows(Trainer(load_config("quickstart", overrides)))


@contextlib.contextmanager
def no_prefix_sharing():
    """Every row run in full: the shared-prefix path's threshold set out of reach."""
    saved = logprobs_module.MIN_SHARED_PREFIX
    logprobs_module.MIN_SHARED_PREFIX = 1 << 62
    try:
        yield
    finally:
        logprobs_module.MIN_SHARED_PREFIX = saved


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_mb(run: Callable[[], object], device: torch.device) -> float:
    """Peak memory ``run`` adds to what is held before it (module docstring)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_mb("VmRSS")
    run()
    return _rss_mb("VmHWM") - before


def one_pass(model, rows: Rows, optim: OptimConfig, mode: str, loss_cfg, update: bool) -> None:
    """Recompute π_old (with entropies), then (``update``) one AdamW update over the rows."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    cfg = optim.model_copy(update={"packing": mode == "packed"})
    with no_prefix_sharing() if mode == "per_row" else contextlib.nullcontext():
        old_BT, _ = recompute_logprobs(
            model,
            rows.input_ids_BT,
            rows.attention_mask_BT,
            rows.prompt_len_B,
            1.0,
            cfg.micro_batch_tokens,
            with_entropy=True,
            packed_tokens=cfg.packed_tokens,
        )
        if not update:
            return
        policy_update(
            model, optimizer, UpdateBatch(rows, old_BT, None), loss_cfg, cfg, 1.0, random.Random(0)
        )


def run_mode(args: argparse.Namespace, rows_path: Path, mode: str) -> dict[str, float]:
    """One way of the module docstring in this process: the peak memory of its first pass, then
    the best time of ``--repeats`` more (the first pass's own time when there are none)."""
    rows: Rows = torch.load(rows_path, weights_only=False)
    device = torch.device(args.device)
    model_cfg = ModelConfig(path=args.model, device=args.device)  # float32 on CPU, bf16 on CUDA
    model = load_model(model_directory(model_cfg), model_cfg)
    optim, loss_cfg = OptimConfig(), policy_loss_config("turn")
    update = not args.logprobs_only

    def timed() -> float:
        start = time.perf_counter()
        one_pass(model, rows, optim, mode, loss_cfg, update)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    first: list[float] = []
    out = {"peak_mb": peak_mb(lambda: first.append(timed()), device)}
    return out | {"s": min([timed() for _ in range(args.repeats)] or first)}


def measure(args: argparse.Namespace, rows: Rows) -> dict[str, float]:
    """Every way in a fresh process of its own (so that one way's freed memory does not hide the
    next one's peak)."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="at2po-bench-packing-") as scratch:
        rows_path = Path(scratch) / "rows.pt"
        torch.save(rows, rows_path)
        for mode in MODES:
            command = [sys.executable, __file__, "--model", args.model, "--device", args.device]
            command += ["--repeats", str(args.repeats), "--child", mode, str(rows_path)]
            command += ["--logprobs-only"] if args.logprobs_only else []
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"{mode} failed:\n{result.stderr[-2000:]}")
            child = json.loads(result.stdout.strip().splitlines()[-1])
            out[f"{mode}_s"] = child["s"]
            out[f"{mode}_peak_mb"] = child["peak_mb"]
    return out


def distinct_work(rows: Rows, budget: int) -> tuple[int, float]:
    """Distinct tokens of the packed micro-batches, and the attention's share left by packing:
    Σ over distinct tokens of their depth (keys each attends to) / the same sum over row tokens."""
    ids_BT = rows.input_ids_BT
    lengths = rows.attention_mask_BT.sum(dim=1).tolist()
    tokens, depth = 0, 0
    for group in packed_micro_batches(ids_BT, lengths, budget):
        packed = pack_rows(ids_BT[group], [lengths[i] for i in group])
        tokens += packed.num_tokens
        depth += int((packed.position_ids_N + 1).sum())
    return tokens, depth / sum(n * (n + 1) / 2 for n in lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="model name or directory (tiny)")
    parser.add_argument("--batch", nargs="+", default=["quickstart", "searchr1"])
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (best is kept)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--record", type=Path, default=None, help="append the lines to this file")
    parser.add_argument(
        "--logprobs-only", action="store_true", help="time the log-prob recompute only"
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.child:
        mode, rows_path = args.child
        print(json.dumps(run_mode(args, Path(rows_path), mode)))
        return
    optim = OptimConfig()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    for batch in args.batch:
        rows = quickstart_rows() if batch == "quickstart" else searchr1_rows()
        row_tokens = int(rows.attention_mask_BT.sum())
        distinct, attention_ratio = distinct_work(rows, optim.packed_micro_batch_tokens)
        result = measure(args, rows)
        limit = 1.15 * distinct / row_tokens * result["per_row_s"]
        record = {
            "bench": "packed",
            "batch": batch,
            "model": args.model,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "rows": int(rows.input_ids_BT.shape[0]),
            "row_tokens": row_tokens,
            "distinct_tokens": distinct,
            "attention_ratio": round(attention_ratio, 4),
            "work": "logprobs" if args.logprobs_only else "logprobs+update",
            **{k: round(v, 3) for k, v in sorted(result.items())},
            "target_s": round(limit, 3),
            "met": result["packed_s"] <= limit,
            "commit": commit,
        }
        line = json.dumps(record)
        print(line, flush=True)
        if args.record:
            with args.record.open("a") as sink:
                sink.write(line + "\n")


if __name__ == "__main__":
    main()
