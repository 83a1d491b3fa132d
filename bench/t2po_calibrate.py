"""Calibrate T²PO's ε (TTI) and η (TDS) on a policy at its warm start (no training).

Rolls out the quickstart task's training questions (chains, the preset's sampling) with the
uncertainty signal on and TTI/TDS off, then, per ε, the share of turns where the paper's
stagnation rule (L_min, N from the config) would have fired on the turn's own M_t; and the
percentiles of TDS's progress Γ between consecutive turns. Then the same questions again with the
config's TTI on, for the share of turns the engine actually intervened in (``t2po/tti_fire_rate``)
and the resample rate of TDS at the config's η. Prints one JSON object.

Usage: ``python bench/t2po_calibrate.py [--preset t2po] [--prompts 32] [override ...]``
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from at2po.core.uncertainty import stagnation_trigger, turn_progress
from at2po.rollout.codec import Codec
from at2po.rollout.rollouts import rollout
from at2po.train.config import load_config
from at2po.train.policy import build_engine, load_model, load_tokenizer, model_directory
from at2po.train.task import build_task

EPSILONS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15)


def thinking_uncertainty(node, think_open: int) -> list[float]:
    """M_t of a turn's tokens after its ``<think>`` (the tokens TTI monitors)."""
    ids, values = node.act_ids, node.act_uncertainty
    start = ids.index(think_open) + 1 if think_open in ids else len(ids)
    return [m for m in values[start:] if m is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="t2po")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(
        args.preset,
        [
            *args.overrides,
            "rollout.tti=false",
            "rollout.tds=false",
            "rollout.record_uncertainty=true",
        ],
    )
    torch.set_num_threads(1)
    directory = model_directory(cfg.model)
    tokenizer = load_tokenizer(directory)
    engine = build_engine(load_model(directory, cfg.model, trainable=False), tokenizer, cfg.rollout)
    task = build_task(cfg.task)
    codec = Codec.from_tokenizer(tokenizer)
    out = rollout(
        engine,
        codec,
        task.env,
        task.split("train")[: args.prompts],
        cfg.rollout.to_rollout_config(),
    )
    live_cfg = cfg.rollout.to_rollout_config()
    live = rollout(
        engine,
        codec,
        task.env,
        task.split("train")[: args.prompts],
        replace(live_cfg, tti=True, tds=True),
    )
    think_open = codec.encode_observation("<think>")[0]
    r = cfg.rollout
    turns, progress = [], []
    for group in out.groups:
        for node in group.tree.nodes[1:]:
            turns.append(thinking_uncertainty(node, think_open))
            parent = group.tree.nodes[node.parent]
            if node.parent and parent.turn_score is not None and node.turn_score is not None:
                progress.append(turn_progress(node.turn_score, parent.turn_score))
    fire = {
        str(eps): sum(
            stagnation_trigger(torch.tensor(m), r.tti_min_think, r.tti_window, eps) is not None
            for m in turns
        )
        / len(turns)
        for eps in EPSILONS
    }
    cap = sum(len(m) >= r.tti_max_think for m in turns) / len(turns)
    gamma = torch.tensor(progress, dtype=torch.float64)
    levels = torch.tensor([0.1, 0.2, 0.5], dtype=torch.float64)
    print(
        json.dumps(
            {
                "measurement": "t2po_calibration",
                "model": cfg.model.path,
                "turns": len(turns),
                "thinking_tokens_mean": sum(map(len, turns)) / len(turns),
                "min_think": r.tti_min_think,
                "window": r.tti_window,
                "stagnation_fire_rate": fire,
                "cap_rate": cap,
                "gamma_p10_p20_p50": gamma.quantile(levels).tolist() if len(progress) else None,
                "uncertainty_turn_p50": out.metrics.get("t2po/uncertainty_turn_p50"),
                "live_eps": r.tti_eps,
                "live_tti_fire_rate": live.metrics["t2po/tti_fire_rate"],
                "live_eta": r.tds_eta,
                "live_tds_resample_rate": live.metrics["t2po/tds_resample_rate"],
                "live_tds_redraw_tokens_share": live.metrics["t2po/tds_redraw_tokens"]
                / live.metrics["rollout/generated_tokens"],
            }
        )
    )


if __name__ == "__main__":
    main()
