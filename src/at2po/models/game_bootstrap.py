"""``at2po bootstrap --task twc``: a tiny Llama warm-started on the twc text game.

Steps (one seed decides all of them):

1. **Demonstrations.** The scripted game expert (:mod:`at2po.tasks.games.expert`: the gold path
   with deliberate, seeded mistakes) plays ``demo_games`` train-fold games in the real
   :class:`~at2po.tasks.games.env.GameEnv`; each finished episode is one row, rendered as a
   rollout builds it (:func:`at2po.models.sft_data.render_episode`).
2. **Tokenizer.** A byte-level BPE with the game format's tags as single tokens, trained on the
   demonstrations' text.
3. **SFT** of a random-init tiny Llama on those rows.
4. **Held-out check.** Greedy, one chain per game, on ``eval_games`` seeds of the ``test`` fold
   (never demonstrated: held-out games are held-out seeds), through the rollout path; the success
   rate is stored.

The model goes to ``<cache>/models/tiny-twc-v1/`` with ``bootstrap.json`` (settings, numbers,
timings), built in a temporary directory and renamed into place; later calls return it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from at2po.models.bootstrap import _device
from at2po.models.paths import model_dir, staged_dir
from at2po.models.sft import SFTConfig, train_sft
from at2po.models.sft_data import render_episode
from at2po.models.tiny import TinyModelConfig, tiny_model_for
from at2po.models.tokenizer import train_tokenizer
from at2po.rollout.codec import Codec
from at2po.rollout.config import RolloutConfig
from at2po.rollout.evaluate import evaluate
from at2po.rollout.hf_engine import HFEngine
from at2po.tasks.games.env import SMALL_SETTINGS, GameEnv, GameEnvConfig, GameExample, GameState
from at2po.tasks.games.expert import GameExpert, GameExpertConfig
from at2po.tasks.games.game_format import TAG_TOKENS

GAME_MODEL_NAME = "tiny-twc-v1"
BOOTSTRAP_FILE = "bootstrap.json"


@dataclass(frozen=True)
class GameBootstrapConfig:
    """Every setting of the twc bootstrap; ``bootstrap.json`` stores them beside the model."""

    seed: int = 0
    demo_games: int = 1000
    """Train-fold games the expert plays (seeds 0..demo_games-1), one SFT row each."""
    expert: GameExpertConfig = field(default_factory=GameExpertConfig)
    env: GameEnvConfig = field(default_factory=lambda: GameEnvConfig(max_turns=10))
    vocab_size: int = 640
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(steps=600, batch_size=16, lr=1e-3))
    device: str = "auto"
    eval_games: int = 100
    """Test-fold games of the held-out check (0 skips it)."""
    eval_max_turn_tokens: int = 48

    def __post_init__(self) -> None:
        if not 1 <= self.demo_games <= 1000 or not 0 <= self.eval_games <= 1000:
            raise ValueError(
                f"demo_games={self.demo_games} must be in 1..1000 and eval_games="
                f"{self.eval_games} in 0..1000 (TextWorldExpress has 1000 seeds per fold)"
            )


def twc_examples(fold: str, n: int) -> list[GameExample]:
    """Seeds ``0..n-1`` of ``fold`` of the small twc game."""
    return [GameExample("twc", SMALL_SETTINGS["twc"], fold, seed) for seed in range(n)]


def bootstrap_game(
    cache_dir: str | Path | None = None,
    *,
    force: bool = False,
    config: GameBootstrapConfig | None = None,
    console: Console | None = None,
) -> Path:
    """The directory of the twc policy, building it first unless cached (``force`` rebuilds)."""
    cfg = config or GameBootstrapConfig()
    target = model_dir(GAME_MODEL_NAME, cache_dir)
    if (target / BOOTSTRAP_FILE).is_file() and not force:
        cached = json.loads((target / BOOTSTRAP_FILE).read_text()).get("settings")
        if cached != _settings(cfg):
            raise ValueError(
                f"the cached model in {target} was built with other settings; rebuild it with "
                "`at2po bootstrap --task twc --force`, or use another --cache-dir"
            )
        return target
    with staged_dir(target) as building:
        build_game_policy(building, cfg, console or Console(stderr=True))
    return target


def build_game_policy(out_dir: Path, cfg: GameBootstrapConfig, console: Console) -> dict[str, Any]:
    """Run the four steps of the module docstring, writing the model to ``out_dir``."""
    started = time.perf_counter()

    def log(message: str) -> None:
        console.print(f"[{time.perf_counter() - started:7.1f} s] {message}", highlight=False)

    env = GameEnv(cfg.env)
    expert = GameExpert(GameExpertConfig(**{**asdict(cfg.expert), "seed": cfg.seed}))
    episodes = expert.play_all(env, twc_examples("train", cfg.demo_games))
    expert_success = sum(state.won for state in episodes) / len(episodes)
    log(f"demonstrations: {len(episodes)} games, expert success {expert_success:.3f}")
    tokenizer = train_tokenizer(_texts(episodes), cfg.vocab_size, tags=TAG_TOKENS)
    codec = Codec.from_tokenizer(tokenizer)
    rows = [render_episode(codec, state) for state in episodes]
    log(f"tokenizer: {len(tokenizer)} ids; {sum(map(len, rows)) / len(rows):.0f} tokens per row")
    device = _device(cfg)
    model = tiny_model_for(cfg.model, tokenizer, cfg.seed).to(device)
    sft_cfg = SFTConfig(**{**asdict(cfg.sft), "seed": cfg.seed})
    result = train_sft(model, rows, sft_cfg, pad_id=tokenizer.pad_token_id, console=console)
    final_nll = sum(result.policy_nll[-20:]) / len(result.policy_nll[-20:])
    log(f"SFT: policy NLL {result.policy_nll[0]:.2f} → {final_nll:.3f}")
    held_out: dict[str, float] = {}
    if cfg.eval_games:
        held_out = check_game_policy(model, tokenizer, env, cfg)
        log(
            f"held-out test games (greedy, {cfg.eval_games}): success {held_out['success']:.3f}, "
            f"format ok {held_out['format_ok']:.2f}, turns {held_out['turns']:.2f}"
        )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    record = {
        "name": GAME_MODEL_NAME,
        "settings": _settings(cfg),
        "demonstrations": {"episodes": len(rows), "expert_success": expert_success},
        "sft": {
            "first_policy_nll": result.policy_nll[0],
            "final_policy_nll": final_nll,
            "tokens": result.tokens,
            "tokens_per_s": result.tokens_per_s,
        },
        "held_out": held_out,
        "seconds": time.perf_counter() - started,
    }
    (out_dir / BOOTSTRAP_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def check_game_policy(
    model: torch.nn.Module, tokenizer: Any, env: GameEnv, cfg: GameBootstrapConfig
) -> dict[str, float]:
    """Greedy success on the first ``cfg.eval_games`` test-fold games (``success`` is
    ``eval/em``), format rate and turns per game."""
    engine = HFEngine(model, tokenizer, max_batch_size=64)
    greedy = RolloutConfig(max_turn_tokens=cfg.eval_max_turn_tokens, max_response_tokens=1536)
    with torch.no_grad():
        metrics = evaluate(
            engine,
            Codec.from_tokenizer(tokenizer),
            env,
            twc_examples("test", cfg.eval_games),
            greedy,
        )
    return {
        "success": metrics["eval/em"],
        "format_ok": metrics["eval/format_ok"],
        "turns": metrics["eval/turns"],
    }


def _texts(episodes: list[GameState]):
    for state in episodes:
        yield "\n".join(message["content"] for message in state.prompt_messages())
        yield state.response_text


def _settings(cfg: GameBootstrapConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg)))
