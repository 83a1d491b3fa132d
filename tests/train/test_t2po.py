"""T²PO end to end on the tiny random policy and the search task: forced tokens out of the loss
with exact log-probs, TDS's draw accounting, and two training steps of the ``t2po`` preset.

The random policy never writes ``<think>``, so these tests give the env instance the settings of
a format whose turns start inside the thinking block (``think_tags = (None, "</think>")``): the
intervention then monitors every turn from its first token.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from train_helpers import fast_overrides

from at2po.core.rows import build_rows
from at2po.rollout.codec import Codec
from at2po.rollout.evaluate import eval_rollout_config
from at2po.rollout.hf_engine import HFEngine
from at2po.rollout.rollouts import rollout
from at2po.rollout.turns import intervention_ids
from at2po.train.config import ConfigError, load_config
from at2po.train.logprobs import recompute_logprobs
from at2po.train.policy import load_model, load_tokenizer
from at2po.train.run_dir import read_metrics
from at2po.train.task import build_task
from at2po.train.trainer import Trainer

# fires on most turns of the random policy: monitor from token 2, one-delta window, cap 6
FIRING = ["rollout.tti_min_think=2", "rollout.tti_window=1", "rollout.tti_eps=0.3",
          "rollout.tti_max_think=6"]  # fmt: skip


def open_thinking_task(cfg):
    task = build_task(cfg.task)
    task.env.think_tags = (None, "</think>")
    return task


@pytest.fixture(scope="module")
def parts(tiny_policy_dir):
    cfg = load_config("t2po", fast_overrides(tiny_policy_dir, Path("unused")) + FIRING)
    tokenizer = load_tokenizer(tiny_policy_dir)
    model = load_model(tiny_policy_dir, cfg.model, trainable=False)
    task = open_thinking_task(cfg)
    engine = HFEngine(model, tokenizer)
    return cfg, model, tokenizer, engine, Codec.from_tokenizer(tokenizer), task


class CountingEngine:
    """The real engine, counting the tokens of every draw it returns."""

    def __init__(self, engine: HFEngine) -> None:
        self.engine, self.tokens, self.calls = engine, 0, 0

    def generate(self, requests):
        results = self.engine.generate(requests)
        self.tokens += sum(len(r.token_ids) for r in results)
        self.calls += 1
        return results


def test_forced_tokens_are_masked_and_trained_logprobs_exact(parts):
    cfg, model, tokenizer, engine, codec, task = parts
    rollout_cfg = replace(cfg.rollout.to_rollout_config(), tds=False, n_rows=4)
    out = rollout(engine, codec, task.env, task.split("train")[:2], rollout_cfg)
    trees = [g.tree for g in out.groups]
    leaves = [list(g.row_leaves) for g in out.groups]
    forced_ids, _ = intervention_ids(codec, task.env)
    forced_nodes = [n for t in trees for n in t.nodes[1:] if any(n.act_forced)]
    assert forced_nodes and out.metrics["t2po/tti_fire_rate"] > 0
    for node in forced_nodes:
        at = node.forced_positions()
        assert [node.act_ids[i] for i in at] == list(forced_ids[: len(at)])
        assert at == list(range(at[0], at[0] + len(at)))  # one intervention, a contiguous queue
    forced_in_rows = sum(sum(t.nodes[n].act_forced) for t, ls in zip(trees, leaves, strict=True)
                         for leaf in ls for n in t.path(leaf)[1:])  # fmt: skip
    masks = {}
    for train_forced in (False, True):
        rows = build_rows(
            trees, leaves, torch.zeros(8), tokenizer.pad_token_id, train_forced_tokens=train_forced
        )
        logp_BT, _ = recompute_logprobs(
            model, rows.input_ids_BT, rows.attention_mask_BT, rows.prompt_len_B, 1.0, 4096
        )
        on_BT = rows.loss_mask_BT != 0
        assert float((logp_BT - rows.old_logp_BT).abs()[on_BT].max()) <= 1e-4
        masks[train_forced] = int(on_BT.sum())
    assert masks[True] - masks[False] == forced_in_rows > 0


def test_tds_redraws_count_as_generated_tokens(parts):
    cfg, _, _, engine, codec, task = parts
    examples = task.split("train")[:2]
    base = replace(cfg.rollout.to_rollout_config(), tti=False, n_rows=3, seed=1)
    # η = 1 > any Γ: every turn after the first is drawn 1 + B_max = 3 times
    counting = CountingEngine(engine)
    out = rollout(counting, codec, task.env, examples, replace(base, tds_eta=1.0))
    nodes = [n for g in out.groups for n in g.tree.nodes[1:]]
    later = [n for n in nodes if n.parent != 0]
    assert later, "some trajectory needs a second turn"
    assert all(n.redraws == 2 for n in later) and all(
        n.redraws == 0 for n in nodes if n.parent == 0
    )
    kept = sum(len(n.act_ids) for n in nodes)
    metrics = out.metrics
    assert metrics["rollout/generated_tokens"] == counting.tokens
    assert metrics["t2po/tds_redraw_tokens"] == counting.tokens - kept > 0
    assert metrics["t2po/tds_resample_rate"] == 1.0 and metrics["t2po/tds_tries_mean"] == 3.0
    # η = 0: nothing is redrawn and the rollout is the one without TDS
    still = rollout(engine, codec, task.env, examples, replace(base, tds_eta=0.0))
    off = rollout(engine, codec, task.env, examples, replace(base, tds=False))
    assert [[n.act_ids for n in g.tree.nodes] for g in still.groups] == [
        [n.act_ids for n in g.tree.nodes] for g in off.groups
    ]
    assert still.metrics["t2po/tds_resample_rate"] == 0.0


def test_t2po_preset_trains_two_steps_with_tti_firing(tiny_policy_dir, tmp_path):
    cfg = load_config("t2po", fast_overrides(tiny_policy_dir, tmp_path / "run") + FIRING)
    result = Trainer(cfg, task=open_thinking_task(cfg)).train()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert result.steps == 2 and [r["step"] for r in records] == [0, 1, 2]
    for record in records[1:]:
        assert record["t2po/tti_fire_rate"] > 0 and record["t2po/forced_tokens"] > 0
        assert record["policy/rollout_logp_diff_max"] <= 1e-4
        assert 0 <= record["t2po/tds_resample_rate"] <= 1
        assert record["rollout/generated_tokens"] >= record["t2po/tds_redraw_tokens"]


def test_evaluation_runs_the_policy_without_intervention_or_redraws(parts):
    cfg = parts[0]
    train_cfg = cfg.rollout.to_rollout_config()
    assert train_cfg.tti and train_cfg.tds
    evaluated = eval_rollout_config(train_cfg)
    assert not evaluated.tti and not evaluated.tds and evaluated.sampling.greedy


def test_tti_on_a_format_whose_tag_is_not_one_token_is_a_config_error(tiny_policy_dir, tmp_path):
    cfg = load_config("t2po", fast_overrides(tiny_policy_dir, tmp_path / "run"))
    task = build_task(cfg.task)
    task.env.think_tags = ("<think>", "</thinking>")
    task.env.intervention_text = "</thinking>\n"
    with pytest.raises(ConfigError, match=r"splits the thinking tag '</thinking>' into \d+ tokens"):
        Trainer(cfg, task=task)
