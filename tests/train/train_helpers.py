"""A tiny policy directory and fast settings for the trainer tests.

The policy is the project's own tiny Llama (:mod:`at2po.models.tiny`), shrunk further and left at
its random init, with a 512-id byte-level BPE (:mod:`at2po.models.tokenizer`) trained on the agent
prompt and the synthetic world's passages. It writes nonsense, which is all these tests need: the
trainer's plumbing, not learning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from at2po.cli.train import add_parser
from at2po.models.tiny import TinyModelConfig, build_tiny_model, tiny_llama_config
from at2po.models.tokenizer import train_tokenizer
from at2po.tasks.agent_format import build_prompt_messages
from at2po.tasks.worlds.splits import build_splits


def build_tiny_policy(directory: Path) -> Path:
    """Tokenizer and random-init model saved under ``directory``."""
    worlds = build_splits(0, 40, 8, 4)
    prompt = "\n".join(m["content"] for m in build_prompt_messages("Who?", max_searches=6))
    texts = [prompt] * 20 + [d.contents for w in worlds.values() for d in w.documents]
    tokenizer = train_tokenizer(texts, vocab_size=512, model_max_length=1024)
    config = tiny_llama_config(
        TinyModelConfig(
            hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, max_positions=1024
        ),
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    build_tiny_model(config, seed=0).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# Leaf rewards used as values directly: the random policy always scores −1, so z-scored rewards
# would be 0 and nothing would move; raw −1 advantages make every step update the weights.
MOVING = ["credit.leaf_norm=none", "optim.lr=1e-3"]


def fast_overrides(model_dir: Path, out_dir: Path) -> list[str]:
    """Settings that make a training step take about a second on a CPU."""
    return [
        f"model.path={model_dir}",
        "model.threads=1",
        f"out_dir={out_dir}",
        "task.worlds.n_train=40",
        "task.worlds.n_dev=8",
        "task.worlds.n_test=4",
        "task.worlds.n_novel=4",
        "task.worlds.questions_per_world=20",
        "task.max_turns=3",
        "rollout.max_turn_tokens=12",
        "rollout.max_response_tokens=60",
        "rollout.max_context_tokens=1024",
        "rollout.n_rows=4",
        "rollout.n_chains=2",
        "rollout.expansion_rounds=1",
        "rollout.expansion_k=2",
        "train.steps=2",
        "train.prompts_per_step=2",
        "train.eval_size=4",
        "train.eval_every=0",
        "train.save_every=0",
        "train.log_trees_every=1",
        "train.progress=false",
        "train.tensorboard=false",
        "optim.micro_batch_tokens=1024",
    ]


def run_cli(*argv: str) -> int:
    """``at2po train / eval / compare`` with ``argv``, in this process."""
    parser = argparse.ArgumentParser(prog="at2po")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)
