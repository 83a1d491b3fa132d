"""``at2po bootstrap``: build the default policy, a tiny Llama warm-started on the search task.

Steps (one seed decides all of them):

1. **Worlds.** Many small train-partition worlds whose questions the expert demonstrates (many
   worlds, so that few names repeat and the model must learn to copy names from its context
   rather than memorise them), a dev-partition world for the held-out check (its names share no
   word with any train world), and a few other train-partition worlds that only the tokenizer
   reads.
2. **Tokenizer.** A byte-level BPE (:mod:`at2po.models.tokenizer`) trained on expert episodes of
   the tokenizer-only worlds (prompt, turns, observations) plus a long list of fresh name words.
   Keeping the demonstration worlds' names out of the tokenizer's text means their names split
   into pieces the way unseen (dev, test) names do, instead of becoming single tokens the policy
   would never meet again.
3. **Demonstrations.** The scripted expert (:mod:`at2po.tasks.worlds.expert`) plays the real
   search environment (BM25 over each world's corpus), with deliberate mistakes: it answers too
   early, searches a confusable entity, or reads a namesake's fact. Each finished episode becomes
   one row, rendered exactly as a rollout builds it (:mod:`at2po.models.sft_data`).
4. **SFT** of a random-init tiny Llama (:mod:`at2po.models.tiny`, :mod:`at2po.models.sft`).
5. **Held-out check.** Greedy, one chain per question, through
   :func:`at2po.rollout.rollouts.rollout` on 2-hop (``bridge``) questions of the dev world; the
   exact match is stored.

The result goes to ``<cache>/models/tiny-search-v1/`` (model, tokenizer, ``bootstrap.json`` with the
settings, world seeds, timings and the measured EM). It is built in a temporary directory and
renamed into place, so a crash never leaves a half-written model; later calls return the cached
directory.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from at2po.models.demos import demonstrations, world_env
from at2po.models.evaluate import greedy_eval
from at2po.models.paths import model_dir, staged_dir
from at2po.models.sft import SFTConfig, train_sft
from at2po.models.sft_data import SFTExample, render_episode
from at2po.models.tiny import TinyModelConfig, build_tiny_model, tiny_llama_config
from at2po.models.tokenizer import train_tokenizer
from at2po.rollout.codec import Codec
from at2po.tasks.search_env import EnvState, SearchEnvConfig, SearchQAEnv
from at2po.tasks.worlds.expert import ExpertConfig, ExpertSolver
from at2po.tasks.worlds.generator import WorldConfig, generate_world
from at2po.tasks.worlds.names import NameMaker

TINY_MODEL_NAME = "tiny-search-v1"
BOOTSTRAP_FILE = "bootstrap.json"

DEMO_MIX: tuple[tuple[str, float], ...] = (("single_hop", 0.5), ("bridge", 0.5))
"""Question types of the demonstrations: one- and two-hop lookups, the skills the check needs."""


@dataclass(frozen=True)
class BootstrapConfig:
    """Every setting of the bootstrap; ``bootstrap.json`` stores them next to the model."""

    seed: int = 0
    """Seeds the worlds, the expert's mistakes, the model init and the batch order."""
    demo_worlds: int = 20
    """Train-partition worlds the expert plays (default-sized, 120 people each)."""
    demos_per_world: int = 100
    """Questions per demonstration world, one expert episode (one SFT row) each."""
    demo_mix: tuple[tuple[str, float], ...] = DEMO_MIX
    """Question types of the demonstrations and their weights."""
    expert: ExpertConfig = field(default_factory=lambda: ExpertConfig(p_early_answer=0.15))
    """The expert's deliberate mistakes (its seed is replaced by ``seed``): early answers only.
    Wrong queries and namesakes' facts write names that are near-copies of the right one, which
    keeps a model this small from learning to copy names exactly (0 % held-out EM after 1,200
    steps with 10 % wrong queries and 20 % namesakes)."""
    env: SearchEnvConfig = field(default_factory=SearchEnvConfig)
    """Limits of the search episodes (demonstrations and the held-out check)."""
    search_topk: int = 3
    """Passages per search."""
    search_max_chars: int = 500
    """Characters kept of each passage."""
    tokenizer_worlds: int = 6
    """Train-partition worlds (200 questions each) whose episodes train the tokenizer."""
    tokenizer_name_words: int = 30_000
    """Fresh train-partition name words added to the tokenizer's text (each once)."""
    vocab_size: int = 4096
    """Tokenizer size, special tokens and tags included."""
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Shape of the tiny Llama."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Optimiser, schedule and steps of the warm start (its seed is replaced by ``seed``)."""
    eval_questions: int = 100
    """Held-out 2-hop questions of the dev world in the final check (0 skips it)."""
    eval_max_turn_tokens: int = 96
    """Token budget of one generated turn in the check (the expert's turns take at most ~80)."""

    def __post_init__(self) -> None:
        if min(self.demo_worlds, self.demos_per_world, self.tokenizer_worlds) < 1:
            raise ValueError(
                "BootstrapConfig needs demo_worlds, demos_per_world and tokenizer_worlds >= 1"
            )
        if self.eval_questions < 0:
            raise ValueError(f"BootstrapConfig.eval_questions={self.eval_questions} must be >= 0")

    def world_seeds(self) -> dict[str, Any]:
        """Seeds of the demonstration, tokenizer-only and dev worlds (all distinct)."""
        base = 10_000 * (self.seed + 1)
        return {
            "demos": [base + i for i in range(self.demo_worlds)],
            "tokenizer": [base + 5_000 + i for i in range(self.tokenizer_worlds)],
            "dev": base + 9_999,
        }


def bootstrap(
    cache_dir: str | Path | None = None,
    *,
    force: bool = False,
    config: BootstrapConfig | None = None,
    console: Console | None = None,
) -> Path:
    """The directory of the bootstrapped tiny model, building it first if it is not cached.

    A cached model built with other settings is an error unless ``force`` rebuilds it.
    """
    cfg = config or BootstrapConfig()
    console = console or Console(stderr=True)
    target = model_dir(TINY_MODEL_NAME, cache_dir)
    if (target / BOOTSTRAP_FILE).is_file() and not force:
        _check_cached_settings(target, cfg)
        return target
    with staged_dir(target) as building:
        build_tiny_policy(building, cfg, console)
    return target


def build_tiny_policy(out_dir: Path, cfg: BootstrapConfig, console: Console) -> dict[str, Any]:
    """Run the five steps of the module docstring, writing the model to ``out_dir``."""
    timings: dict[str, float] = {}
    seeds = cfg.world_seeds()
    expert = ExpertSolver(_with_seed(cfg.expert, cfg.seed))

    clock = time.perf_counter()
    tokenizer = train_tokenizer(_tokenizer_texts(cfg, expert), cfg.vocab_size)
    timings["tokenizer"] = time.perf_counter() - clock
    console.log(f"tokenizer: {len(tokenizer)} ids in {timings['tokenizer']:.1f} s")

    clock = time.perf_counter()
    rows, demo_em = demonstration_rows(cfg, Codec.from_tokenizer(tokenizer), expert)
    timings["demonstrations"] = time.perf_counter() - clock
    console.log(
        f"demonstrations: {len(rows)} episodes in {cfg.demo_worlds} worlds, expert EM "
        f"{demo_em:.3f}, {sum(len(r) for r in rows) / len(rows):.0f} tokens per row"
    )

    model = build_tiny_model(
        tiny_llama_config(
            cfg.model,
            vocab_size=len(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        seed=cfg.seed,
    )
    n_params = sum(p.numel() for p in model.parameters())
    sft_cfg = _with_seed(cfg.sft, cfg.seed)
    result = train_sft(model, rows, sft_cfg, pad_id=tokenizer.pad_token_id)
    timings["sft"] = result.seconds
    console.log(
        f"SFT: {n_params / 1e6:.2f}M params, {sft_cfg.steps} steps, policy NLL "
        f"{result.policy_nll[0]:.2f} → {_tail_mean(result.policy_nll):.3f}, "
        f"{result.tokens_per_s:,.0f} tok/s"
    )

    held_out: dict[str, float] = {}
    if cfg.eval_questions:
        clock = time.perf_counter()
        dev_env, dev_questions = dev_check_set(cfg)
        with torch.no_grad():
            check = greedy_eval(
                model, tokenizer, dev_env, dev_questions, max_turn_tokens=cfg.eval_max_turn_tokens
            )
        timings["eval"] = time.perf_counter() - clock
        held_out = {
            "em": check.em,
            "answered": check.answered,
            "format_ok": check.format_ok,
            "n": check.n,
        }
        console.log(
            f"held-out 2-hop (dev world, greedy): EM {check.em:.3f} over {check.n} questions, "
            f"answered {check.answered:.2f}, format ok {check.format_ok:.2f}"
        )

    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    record = {
        "name": TINY_MODEL_NAME,
        "settings": _settings(cfg),
        "world_seeds": seeds,
        "parameters": n_params,
        "demonstrations": {"episodes": len(rows), "expert_em": demo_em},
        "sft": {
            "first_policy_nll": result.policy_nll[0],
            "final_policy_nll": _tail_mean(result.policy_nll),
            "tokens": result.tokens,
            "policy_tokens": result.policy_tokens,
            "tokens_per_s": result.tokens_per_s,
        },
        "held_out_2hop": held_out,
        "seconds": timings,
    }
    (out_dir / BOOTSTRAP_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def demonstration_rows(
    cfg: BootstrapConfig, codec: Codec, expert: ExpertSolver
) -> tuple[list[SFTExample], float]:
    """One SFT row per expert episode in the demonstration worlds, and the expert's mean EM."""
    rows: list[SFTExample] = []
    em = 0.0
    for index, seed in enumerate(cfg.world_seeds()["demos"]):
        world_cfg = WorldConfig(
            seed=seed,
            name=f"demo{index}",
            partition="train",
            n_questions=cfg.demos_per_world,
            question_mix=cfg.demo_mix,
        )
        env, states = _expert_episodes(world_cfg, cfg, expert)
        rows += [render_episode(codec, state) for state in states]
        em += sum(env.reward(state).scores["em"] for state in states)
    return rows, em / len(rows)


def dev_check_set(cfg: BootstrapConfig) -> tuple[SearchQAEnv, tuple]:
    """The held-out check: the dev world's environment and its 2-hop questions."""
    world = generate_world(
        WorldConfig(
            seed=cfg.world_seeds()["dev"],
            name="dev",
            partition="dev",
            n_questions=cfg.eval_questions,
            question_mix=(("bridge", 1.0),),
        )
    )
    env = world_env(world, cfg.env, topk=cfg.search_topk, max_chars=cfg.search_max_chars)
    return env, world.questions


def _expert_episodes(
    world_cfg: WorldConfig, cfg: BootstrapConfig, expert: ExpertSolver
) -> tuple[SearchQAEnv, list[EnvState]]:
    world = generate_world(world_cfg)
    env = world_env(world, cfg.env, topk=cfg.search_topk, max_chars=cfg.search_max_chars)
    return env, demonstrations(env, world.questions, expert)


def _tokenizer_texts(cfg: BootstrapConfig, expert: ExpertSolver) -> Iterator[str]:
    """Expert episodes (prompt and response) of the tokenizer-only worlds, then name words."""
    for seed in cfg.world_seeds()["tokenizer"]:
        world_cfg = WorldConfig(seed=seed, name=f"tok{seed}", partition="train", n_questions=200)
        _, states = _expert_episodes(world_cfg, cfg, expert)
        for state in states:
            yield "\n".join(message["content"] for message in state.prompt_messages())
            yield state.response_text
    names = NameMaker(random.Random(f"{cfg.seed}/tokenizer-names"), "train")
    words = [names.word() for _ in range(cfg.tokenizer_name_words)]
    for start in range(0, len(words), 20):
        yield " ".join(words[start : start + 20])


def _tail_mean(values: tuple[float, ...], n: int = 20) -> float:
    """Mean of the last ``n`` values (the end of a noisy loss curve)."""
    tail = values[-n:]
    return sum(tail) / len(tail)


def _with_seed(settings: Any, seed: int) -> Any:
    return type(settings)(**{**asdict(settings), "seed": seed})


def _settings(cfg: BootstrapConfig) -> dict[str, Any]:
    """The settings as plain JSON values (tuples become lists)."""
    return json.loads(json.dumps(asdict(cfg)))


def _check_cached_settings(target: Path, cfg: BootstrapConfig) -> None:
    cached = json.loads((target / BOOTSTRAP_FILE).read_text()).get("settings")
    wanted = _settings(cfg)
    if cached != wanted:
        differing = sorted(k for k in wanted if cached is None or cached.get(k) != wanted[k])
        raise ValueError(
            f"the cached model in {target} was built with other settings ({', '.join(differing)} "
            "differ); rebuild it with `at2po bootstrap --force` (or bootstrap(force=True)), or use "
            "another --cache-dir"
        )
