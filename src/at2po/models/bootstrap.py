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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from at2po.models.copying import copy_accuracy
from at2po.models.demos import demonstrations, world_env, worlds_env
from at2po.models.packaged import install_packaged, packaged_model, packaged_settings
from at2po.models.paths import model_dir, staged_dir
from at2po.models.sft import SFTConfig, train_sft
from at2po.models.sft_data import SFTExample, render_episode
from at2po.models.tiny import TinyModelConfig, tiny_model_for
from at2po.models.tokenizer import train_tokenizer
from at2po.rollout.codec import Codec
from at2po.rollout.config import RolloutConfig
from at2po.rollout.evaluate import evaluate
from at2po.rollout.hf_engine import HFEngine
from at2po.tasks.datasets import QAExample
from at2po.tasks.search_env import EnvState, SearchEnvConfig, SearchQAEnv
from at2po.tasks.worlds.expert import ExpertConfig, ExpertSolver
from at2po.tasks.worlds.generator import WorldConfig, generate_world
from at2po.tasks.worlds.names import SHARED, NameMaker, name_inventory
from at2po.tasks.worlds.splits import build_world_sets

TINY_MODEL_NAME = "tiny-search-v2"
BOOTSTRAP_FILE = "bootstrap.json"

DEMO_MIX: tuple[tuple[str, float], ...] = (("single_hop", 0.3), ("bridge", 0.7))
"""Question types of the demonstrations and of the demo task: one- and two-hop lookups."""


@dataclass(frozen=True)
class BootstrapConfig:
    """Every setting of the bootstrap; ``bootstrap.json`` stores them next to the model."""

    seed: int = 0
    """Seeds the worlds, the expert's mistakes, the model init and the batch order."""
    demo_worlds: int = 400
    """Shared-name worlds the expert plays (default-sized, 120 people each)."""
    demos_per_world: int = 100
    """Questions per demonstration world, one expert episode (one SFT row) each."""
    demo_mix: tuple[tuple[str, float], ...] = DEMO_MIX
    """Question types of the demonstrations and their weights."""
    expert: ExpertConfig = field(default_factory=lambda: ExpertConfig(p_early_answer=0.6))
    """The expert's deliberate mistakes (its seed is replaced by ``seed``): with probability 0.6
    it answers as soon as it has read something, before the fact it needs (on a two-hop
    question: right after the first hop, with a guess). A policy trained on these episodes
    copies names well but takes that decision greedily, so its greedy mistakes are decisions
    that RL can fix: its own samples search on in 40 % of the cases."""
    env: SearchEnvConfig = field(default_factory=SearchEnvConfig)
    """Limits of the search episodes (demonstrations and the held-out check)."""
    search_topk: int = 3
    """Passages per search."""
    search_max_chars: int = 500
    """Characters kept of each passage."""
    tokenizer_worlds: int = 6
    """Shared-name worlds (200 questions each) whose episodes train the tokenizer."""
    tokenizer_name_words: int = 30_000
    """Fresh train-partition name words added to the tokenizer's text (each once), so that
    novel names split into common pieces."""
    vocab_size: int = 4096
    """Tokenizer size: special tokens, BPE, the tags and the 512 inventory names (one id each)."""
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Shape of the tiny Llama."""
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(steps=3500, batch_size=64, lr=1e-3))
    """Optimiser, schedule and steps of the warm start (its seed is replaced by ``seed``)."""
    device: str = "auto"
    """Where SFT and the check run: ``cuda``, ``cpu``, or ``auto`` (CUDA when available)."""
    check_seed: int = 0
    """Seed of the held-out check's worlds: the demo task's dev worlds and novel-name world
    (``task.worlds.seed``), so the check measures what ``at2po train quickstart`` starts from."""
    eval_questions: int = 200
    """Held-out questions of the check in each set (shared-name dev worlds; the novel-name
    world); 0 skips it."""
    eval_max_turn_tokens: int = 96
    """Token budget of one generated turn in the check (the expert's turns take at most ~80)."""

    def __post_init__(self) -> None:
        if min(self.demo_worlds, self.demos_per_world, self.tokenizer_worlds) < 1:
            raise ValueError(
                "BootstrapConfig needs demo_worlds, demos_per_world and tokenizer_worlds >= 1"
            )
        if self.demo_worlds > 5_000 or self.tokenizer_worlds > 4_999:
            raise ValueError("BootstrapConfig allows at most 5,000 demo and 4,999 tokenizer worlds")
        if self.eval_questions < 0:
            raise ValueError(f"BootstrapConfig.eval_questions={self.eval_questions} must be >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"BootstrapConfig.device={self.device!r}; use auto, cpu or cuda")

    def world_seeds(self) -> dict[str, list[int]]:
        """Seeds of the demonstration and tokenizer-only worlds (all distinct, and never a seed
        of the held-out check, whose seeds are checksums: see :func:`check_sets`)."""
        base = 10_000 * (self.seed + 1)
        return {
            "demos": [base + i for i in range(self.demo_worlds)],
            "tokenizer": [base + 5_000 + i for i in range(self.tokenizer_worlds)],
        }


def bootstrap(
    cache_dir: str | Path | None = None,
    *,
    force: bool = False,
    config: BootstrapConfig | None = None,
    console: Console | None = None,
) -> Path:
    """The directory of the tiny model, installing or building it first if it is not cached.

    With the default settings the model ships with at2po (:mod:`at2po.models.packaged`): it is
    checked against its checksum and copied into the cache, in seconds. ``force`` (or other
    settings) builds it from scratch instead. A cached model built with other settings is an
    error unless ``force`` rebuilds it.
    """
    cfg = config or BootstrapConfig()
    console = console or Console(stderr=True)
    target = model_dir(TINY_MODEL_NAME, cache_dir)
    if (target / BOOTSTRAP_FILE).is_file() and not force:
        _check_cached_settings(target, cfg)
        return target
    with staged_dir(target) as building:
        packaged = packaged_model()
        if (
            not force
            and packaged is not None
            and _weight_settings(packaged_settings(packaged)) == _weight_settings(_settings(cfg))
        ):
            install_packaged(packaged, building)
            console.print(
                f"installed the packaged default policy into {target}",
                highlight=False,
                soft_wrap=True,
            )
        else:
            build_tiny_policy(building, cfg, console)
    return target


def build_tiny_policy(out_dir: Path, cfg: BootstrapConfig, console: Console) -> dict[str, Any]:
    """Run the five steps of the module docstring, writing the model to ``out_dir``."""
    timings: dict[str, float] = {}
    seeds = cfg.world_seeds()
    expert = ExpertSolver(_with_seed(cfg.expert, cfg.seed))
    log = _PhaseLog(console)
    device = _device(cfg)

    clock = time.perf_counter()
    tokenizer = train_tokenizer(
        _tokenizer_texts(cfg, expert), cfg.vocab_size, name_words=name_inventory()
    )
    timings["tokenizer"] = time.perf_counter() - clock
    log(f"tokenizer: {len(tokenizer)} ids ({len(name_inventory())} of them names)")

    clock = time.perf_counter()
    codec = Codec.from_tokenizer(tokenizer)
    rows, demo_em = demonstration_rows(cfg, codec, expert)
    timings["demonstrations"] = time.perf_counter() - clock
    log(
        f"demonstrations: {len(rows):,} episodes in {cfg.demo_worlds} worlds, expert EM "
        f"{demo_em:.3f}, {sum(len(r) for r in rows) / len(rows):.0f} tokens per row"
    )

    model = tiny_model_for(cfg.model, tokenizer, cfg.seed).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    sft_cfg = _with_seed(cfg.sft, cfg.seed)
    log(f"SFT: {n_params / 1e6:.2f}M parameters, {sft_cfg.steps} steps on {device.type}")
    result = train_sft(model, rows, sft_cfg, pad_id=tokenizer.pad_token_id, console=console)
    timings["sft"] = result.seconds
    log(
        f"SFT done: policy NLL {result.policy_nll[0]:.2f} → {_tail_mean(result.policy_nll):.3f}, "
        f"{result.tokens_per_s:,.0f} tok/s"
    )

    held_out: dict[str, dict[str, float]] = {}
    copying: dict[str, float] = {}
    if cfg.eval_questions:
        clock = time.perf_counter()
        held_out, copying = check_policy(model, tokenizer, cfg, log)
        timings["eval"] = time.perf_counter() - clock

    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    record = {
        "name": TINY_MODEL_NAME,
        "settings": _settings(cfg),
        "world_seeds": seeds,
        "parameters": n_params,
        "device": _device_name(device),
        "demonstrations": {"episodes": len(rows), "expert_em": demo_em},
        "sft": {
            "first_policy_nll": result.policy_nll[0],
            "final_policy_nll": _tail_mean(result.policy_nll),
            "tokens": result.tokens,
            "policy_tokens": result.policy_tokens,
            "tokens_per_s": result.tokens_per_s,
        },
        "held_out": held_out,
        "copy_accuracy": copying,
        "seconds": timings,
    }
    (out_dir / BOOTSTRAP_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def check_policy(
    model: torch.nn.Module, tokenizer: Any, cfg: BootstrapConfig, log: Callable[[str], None]
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """The held-out check of a policy: greedy metrics on both sets of :func:`check_sets` and
    the copy accuracy on the dev set (:mod:`at2po.models.copying`), each logged in one line."""
    codec = Codec.from_tokenizer(tokenizer)
    env, sets = check_sets(cfg)
    engine = HFEngine(model, tokenizer, max_batch_size=64)
    greedy = RolloutConfig(max_turn_tokens=cfg.eval_max_turn_tokens)
    held_out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for name, questions in sets.items():
            metrics = evaluate(engine, codec, env, questions, greedy, prefix=name)
            held_out[name] = {k.split("/", 1)[1]: v for k, v in metrics.items()}
            log(
                f"held-out {name} (greedy, {len(questions)} questions): EM "
                f"{metrics[f'{name}/em']:.3f}, format ok {metrics[f'{name}/format_ok']:.2f}, "
                f"searches {metrics[f'{name}/tool_calls']:.2f}"
            )
    copying = copy_accuracy(model, codec, demonstrations(env, sets["dev"], ExpertSolver()))
    log(
        f"copy accuracy (dev, teacher-forced): query {copying['query']:.3f}, "
        f"answer {copying['answer']:.3f}"
    )
    return held_out, copying


def recheck(directory: Path, cfg: BootstrapConfig, console: Console) -> dict[str, Any]:
    """Run the held-out check of ``cfg`` on the model in ``directory`` (on ``cfg.device``) and
    store it in its ``bootstrap.json`` (``held_out``, ``copy_accuracy``, ``check``)."""
    device = _device(cfg)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    clock = time.perf_counter()
    held_out, copying = check_policy(model, tokenizer, cfg, _PhaseLog(console))
    record = json.loads((directory / BOOTSTRAP_FILE).read_text())
    record["held_out"] = held_out
    record["copy_accuracy"] = copying
    record["check"] = {
        "device": _device_name(device),
        "eval_questions": cfg.eval_questions,
        "check_seed": cfg.check_seed,
        "seconds": time.perf_counter() - clock,
    }
    (directory / BOOTSTRAP_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _device(cfg: BootstrapConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


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
            partition=SHARED,
            n_questions=cfg.demos_per_world,
            question_mix=cfg.demo_mix,
        )
        env, states = _expert_episodes(world_cfg, cfg, expert)
        rows += [render_episode(codec, state) for state in states]
        em += sum(env.reward(state).scores["em"] for state in states)
    return rows, em / len(rows)


def check_sets(cfg: BootstrapConfig) -> tuple[SearchQAEnv, dict[str, list[QAExample]]]:
    """The held-out check: one environment (a corpus per world) and its two question sets,
    ``dev`` (shared-name worlds never demonstrated) and ``novel`` (a world of fresh names)."""
    sets = build_world_sets(
        cfg.check_seed,
        {"dev": cfg.eval_questions},
        n_novel=cfg.eval_questions,
        question_mix=cfg.demo_mix,
    )
    env = worlds_env(
        [w for group in sets.values() for w in group],
        cfg.env,
        topk=cfg.search_topk,
        max_chars=cfg.search_max_chars,
    )
    return env, {name: [q for w in group for q in w.questions] for name, group in sets.items()}


def _expert_episodes(
    world_cfg: WorldConfig, cfg: BootstrapConfig, expert: ExpertSolver
) -> tuple[SearchQAEnv, list[EnvState]]:
    world = generate_world(world_cfg)
    env = world_env(world, cfg.env, topk=cfg.search_topk, max_chars=cfg.search_max_chars)
    return env, demonstrations(env, world.questions, expert)


def _tokenizer_texts(cfg: BootstrapConfig, expert: ExpertSolver) -> Iterator[str]:
    """Expert episodes (prompt and response) of the tokenizer-only worlds, then name words."""
    for seed in cfg.world_seeds()["tokenizer"]:
        world_cfg = WorldConfig(seed=seed, name=f"tok{seed}", partition=SHARED, n_questions=200)
        # (the tokenizer drops the inventory names from these texts: each is a token of its own)
        _, states = _expert_episodes(world_cfg, cfg, expert)
        for state in states:
            yield "\n".join(message["content"] for message in state.prompt_messages())
            yield state.response_text
    names = NameMaker(random.Random(f"{cfg.seed}/tokenizer-names"), "train")
    words = [names.word() for _ in range(cfg.tokenizer_name_words)]
    for start in range(0, len(words), 20):
        yield " ".join(words[start : start + 20])


class _PhaseLog:
    """One line per phase on the console, with the time since the bootstrap started (also when
    the output is redirected to a file)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._start = time.perf_counter()

    def __call__(self, message: str) -> None:
        elapsed = time.perf_counter() - self._start
        self._console.print(f"[{elapsed:7.1f} s] {message}", highlight=False, soft_wrap=True)


def _tail_mean(values: tuple[float, ...], n: int = 20) -> float:
    """Mean of the last ``n`` values (the end of a noisy loss curve)."""
    tail = values[-n:]
    return sum(tail) / len(tail)


def _with_seed(settings: Any, seed: int) -> Any:
    return type(settings)(**{**asdict(settings), "seed": seed})


def _settings(cfg: BootstrapConfig) -> dict[str, Any]:
    """The settings as plain JSON values (tuples become lists)."""
    return json.loads(json.dumps(asdict(cfg)))


_CHECK_ONLY = frozenset({"device", "check_seed", "eval_questions", "eval_max_turn_tokens"})
"""Settings that change where the build runs or what it measures, never the weights."""


def _weight_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without those of :data:`_CHECK_ONLY`: two builds with equal weight settings
    give the same model."""
    return {k: v for k, v in settings.items() if k not in _CHECK_ONLY}


def _check_cached_settings(target: Path, cfg: BootstrapConfig) -> None:
    cached = json.loads((target / BOOTSTRAP_FILE).read_text()).get("settings")
    cached = None if cached is None else _weight_settings(cached)
    wanted = _weight_settings(_settings(cfg))
    if cached != wanted:
        differing = sorted(k for k in wanted if cached is None or cached.get(k) != wanted[k])
        raise ValueError(
            f"the cached model in {target} was built with other settings ({', '.join(differing)} "
            "differ); rebuild it with `at2po bootstrap --force` (or bootstrap(force=True)), or use "
            "another --cache-dir"
        )
