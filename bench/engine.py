"""HFEngine speed: against transformers ``generate``, and prefix-cache reuse on against off.

Prints one JSON object per measurement. Two measurements:

* ``engine_vs_generate``: the same batch of prompts (different lengths), the same budget, plain
  sampling (temperature 1, no top-k/top-p, no stop), every row running to its budget. HFEngine
  returns log-probs and entropies; ``generate`` is timed with and without ``output_scores``.
  Reported: generated tokens per second (best of ``--repeats``) and the ratios.
* ``multi_turn_reuse``: trajectories of several turns; after each turn an observation of
  ``--obs-tokens`` ids is appended and the trajectory continues. Run once with prefix-cache reuse
  and once without: prefill tokens and wall time of each.
* ``t2po_overhead``: the batch of ``engine_vs_generate`` (shortest prompt range), HFEngine with
  T²PO's uncertainty M_t and the thinking intervention (tiny defaults: L_min 16, N 4, ε 0.09,
  L_max 64) on against both off. Every row runs to its budget either way (no stop), so both
  generate the same number of tokens; target: on ≥ 0.9× the tokens/s of off. On a CPU the times
  are process (CPU) times, which a busy shared machine disturbs less than wall time.

Usage: ``python bench/engine.py [--model DIR] [--only NAME,...]`` (default: the tiny test model,
built on the fly; every measurement).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.rollout.conftest import build_tiny_lm

from at2po.rollout.config import RolloutConfig
from at2po.rollout.engine import GenerationRequest
from at2po.rollout.hf_engine import HFEngine
from timing import best_seconds


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def random_prompts(batch: int, vocab: int, low: int, high: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (batch,), generator=generator).tolist()
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]


def engine_vs_generate(model, tokenizer, args, shortest: int, longest: int) -> None:
    prompts = random_prompts(args.batch, model.config.vocab_size, shortest, longest, seed=0)
    budget = args.new_tokens
    engine = HFEngine(model, tokenizer, reuse_prefix_cache=False, max_batch_size=args.batch)
    requests = [
        GenerationRequest(p, max_new_tokens=budget, seed=i, return_entropy=True)
        for i, p in enumerate(prompts)
    ]

    width = max(len(p) for p in prompts)
    ids_BT = torch.zeros(len(prompts), width, dtype=torch.long)
    mask_BT = torch.zeros_like(ids_BT)
    for row, p in enumerate(prompts):
        ids_BT[row, width - len(p) :] = torch.tensor(p)
        mask_BT[row, width - len(p) :] = 1

    def hf_generate(output_scores: bool):
        config = GenerationConfig(
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=budget,
            min_new_tokens=budget,
            eos_token_id=None,
            pad_token_id=0,
            output_scores=output_scores,
            return_dict_in_generate=True,
        )
        with torch.inference_mode():
            model.generate(
                input_ids=ids_BT.to(engine.device),
                attention_mask=mask_BT.to(engine.device),
                generation_config=config,
            )

    generated = len(prompts) * budget
    runs = {
        "hf_engine": lambda: engine.generate(requests),
        "generate_scores": lambda: hf_generate(True),
        "generate": lambda: hf_generate(False),
    }
    seconds = best_seconds(runs, args.repeats)
    rates = {name: generated / s for name, s in seconds.items()}
    emit(
        measurement="engine_vs_generate",
        batch=len(prompts),
        new_tokens=budget,
        prompt_tokens=sum(len(p) for p in prompts),
        tokens_per_s={k: round(v, 1) for k, v in rates.items()},
        ratio_vs_generate=round(rates["hf_engine"] / rates["generate"], 3),
        ratio_vs_generate_scores=round(rates["hf_engine"] / rates["generate_scores"], 3),
    )


def multi_turn(model, tokenizer, args, reuse: bool) -> dict:
    engine = HFEngine(model, tokenizer, reuse_prefix_cache=reuse, max_batch_size=64)
    vocab = model.config.vocab_size
    prompts = random_prompts(args.prompts, vocab, args.min_prompt, args.max_prompt, seed=1)
    contexts = [tuple(p) for p in prompts for _ in range(args.chains)]
    observations = random_prompts(
        len(contexts) * args.turns, vocab, args.obs_tokens, args.obs_tokens, 2
    )
    prefill = cached = generated = 0
    start = time.perf_counter()
    for turn in range(args.turns):
        requests = [
            GenerationRequest(c, max_new_tokens=args.turn_tokens, seed=100 * turn + i)
            for i, c in enumerate(contexts)
        ]
        results = engine.generate(requests)
        prefill += sum(r.prefill_tokens for r in results)
        cached += sum(r.cached_tokens for r in results)
        generated += sum(len(r.token_ids) for r in results)
        contexts = [
            c + r.token_ids + tuple(observations[turn * len(contexts) + i])
            for i, (c, r) in enumerate(zip(contexts, results, strict=True))
        ]
    return {
        "seconds": round(time.perf_counter() - start, 3),
        "prefill_tokens": prefill,
        "cached_tokens": cached,
        "generated_tokens": generated,
    }


def multi_turn_reuse(model, tokenizer, args) -> None:
    off = multi_turn(model, tokenizer, args, reuse=False)
    on = multi_turn(model, tokenizer, args, reuse=True)
    emit(
        measurement="multi_turn_reuse",
        trajectories=args.prompts * args.chains,
        turns=args.turns,
        obs_tokens=args.obs_tokens,
        turn_tokens=args.turn_tokens,
        reuse_off=off,
        reuse_on=on,
        prefill_saved=round(1 - on["prefill_tokens"] / off["prefill_tokens"], 3),
        speedup=round(off["seconds"] / on["seconds"], 3),
    )


def t2po_overhead(model, tokenizer, args, shortest: int, longest: int) -> None:
    prompts = random_prompts(args.batch, model.config.vocab_size, shortest, longest, seed=0)
    engine = HFEngine(model, tokenizer, reuse_prefix_cache=False, max_batch_size=args.batch)
    defaults = RolloutConfig()
    uncertainty = defaults.uncertainty_spec()
    intervention = defaults.intervention_spec((1, 2), think_start_id=None)
    plain = [
        GenerationRequest(p, max_new_tokens=args.new_tokens, seed=i) for i, p in enumerate(prompts)
    ]
    t2po = [
        GenerationRequest(
            p, args.new_tokens, seed=i, uncertainty=uncertainty, intervention=intervention
        )
        for i, p in enumerate(prompts)
    ]
    forced = sum(sum(r.forced_mask) for r in engine.generate(t2po))
    # on a CPU, process time leaves out the time spent waiting for a core other jobs hold
    clock = time.process_time if engine.device.type == "cpu" else time.perf_counter
    seconds = best_seconds(
        {"off": lambda: engine.generate(plain), "on": lambda: engine.generate(t2po)},
        args.repeats,
        clock,
    )
    generated = len(prompts) * args.new_tokens
    rates = {name: generated / s for name, s in seconds.items()}
    emit(
        measurement="t2po_overhead",
        batch=len(prompts),
        new_tokens=args.new_tokens,
        vocab=model.config.vocab_size,
        forced_tokens=forced,
        clock=clock.__name__,
        tokens_per_s={k: round(v, 1) for k, v in rates.items()},
        ratio_on_vs_off=round(rates["on"] / rates["off"], 3),
    )


MEASUREMENTS = ("engine_vs_generate", "multi_turn_reuse", "t2po_overhead")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a save_pretrained model directory (default: tiny model)")
    parser.add_argument("--batch", type=int, default=16, help="prompts in the generate comparison")
    parser.add_argument("--new-tokens", type=int, default=64, help="budget per request")
    parser.add_argument(
        "--prompt-ranges",
        default="64:160,600:900",
        help="generate comparison: comma-separated shortest:longest prompt lengths, one run each",
    )
    parser.add_argument("--min-prompt", type=int, default=64, help="multi-turn: shortest prompt")
    parser.add_argument("--max-prompt", type=int, default=160, help="multi-turn: longest prompt")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best is kept")
    parser.add_argument("--prompts", type=int, default=2, help="multi-turn: distinct prompts")
    parser.add_argument("--chains", type=int, default=4, help="multi-turn: trajectories per prompt")
    parser.add_argument("--turns", type=int, default=4, help="multi-turn: turns per trajectory")
    parser.add_argument("--turn-tokens", type=int, default=32, help="multi-turn: tokens per turn")
    parser.add_argument("--obs-tokens", type=int, default=30, help="multi-turn: observation size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument(
        "--only", default=",".join(MEASUREMENTS), help="comma-separated measurements to run"
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    if only - set(MEASUREMENTS):
        parser.error(f"--only {args.only}: measurements are {', '.join(MEASUREMENTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(args.model) if args.model else Path(scratch)
        if not args.model:
            build_tiny_lm(directory)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device).eval()
    emit(
        measurement="setup",
        model=args.model or "tiny",
        parameters=sum(p.numel() for p in model.parameters()),
        device=device,
        dtype=str(dtype),
        torch_threads=torch.get_num_threads(),
    )
    ranges = [tuple(int(n) for n in r.split(":")) for r in args.prompt_ranges.split(",")]
    if "engine_vs_generate" in only:
        for shortest, longest in ranges:
            engine_vs_generate(model, tokenizer, args, shortest, longest)
    if "multi_turn_reuse" in only:
        multi_turn_reuse(model, tokenizer, args)
    if "t2po_overhead" in only:
        t2po_overhead(model, tokenizer, args, *ranges[0])


if __name__ == "__main__":
    main()
