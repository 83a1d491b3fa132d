"""One training step: rollout → rewards → credit → rows → π_old (and π_ref) → policy update.

1. **Rollout** of ``train.prompts_per_step`` prompts with the current weights (the engine runs the
   training model itself), seeded from the trainer's RNG; the engine's prefix cache is emptied
   first, so a step never depends on what earlier steps left there. Leaves carry their rewards.
   With ``workers`` (:mod:`at2po.train.rollout_workers`) the prompts are rolled out in chunks by
   worker processes at once; ``perf/seconds_rollout`` is then the wall-clock of the parallel phase.
2. **Rewards**: DAPO's overlong shaping when ``credit.overlong_buffer`` > 0. With
   ``credit.dynamic_sampling`` the groups whose rewards are all equal are dropped and more prompts
   are rolled out (up to ``credit.dynamic_sampling_max_batches`` generation batches) until the
   step has ``prompts_per_step`` informative groups; a step left with none skips the update.
3. **Credit** (:mod:`at2po.train.credit`) and **rows** (:func:`at2po.core.rows.build_rows`).
4. **π_old**: the training model's log-probs of the rows without gradient
   (:func:`at2po.train.logprobs.recompute_logprobs`), or the rollout's own
   (``optim.trust_rollout_logprobs``). ``policy/rollout_logp_diff_{max,mean}`` compare the two
   over trained tokens (float error, ~1e-6 on CPU in float32). **π_ref** likewise from the frozen
   reference when the loss uses it.
5. **Update** (:mod:`at2po.train.update`), then the learning-rate scheduler steps once.

Metrics: the rollout's (``rollout/*``, ``tree/*``), the credit's (``reward/*``, ``turn/adv_*``), the
update's (``loss/*``, ``policy/*``, ``turn/*``) and seconds per phase (``perf/seconds_rollout``,
``perf/seconds_credit``, ``perf/seconds_logprobs``, ``perf/seconds_update``) with throughputs
``perf/generated_tokens_per_s`` and ``perf/update_tokens_per_s`` (row tokens × epochs).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from at2po.core.losses import PolicyLossConfig
from at2po.core.rows import build_rows
from at2po.rollout.codec import Codec
from at2po.rollout.config import RolloutConfig
from at2po.rollout.hf_engine import HFEngine
from at2po.rollout.rollouts import PromptGroup, RolloutOutput, rollout
from at2po.tasks.datasets import QAExample
from at2po.train.config import TrainConfig
from at2po.train.credit import assign_credit, informative_groups, shape_rewards
from at2po.train.logprobs import recompute_logprobs
from at2po.train.rollout_chunks import ROLLOUT_COUNTERS
from at2po.train.rollout_workers import RolloutWorkers
from at2po.train.update import UpdateBatch, policy_update


@dataclass(frozen=True)
class StepOutput:
    """The kept prompt groups, the step's metrics and the tokens its rollouts generated."""

    groups: list[PromptGroup]
    metrics: dict[str, float]
    generated_tokens: int


@dataclass
class StepRunner:
    """The components one training step uses."""

    cfg: TrainConfig
    model: torch.nn.Module
    tokenizer: Any
    engine: HFEngine
    codec: Codec
    env: Any
    rollout_cfg: RolloutConfig
    loss_cfg: PolicyLossConfig
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    reference: torch.nn.Module | None = None
    workers: RolloutWorkers | None = None

    def run(
        self,
        next_examples: Callable[[int], list[QAExample]],
        rng: random.Random,
        on_phase: Callable[[str], None] = lambda phase: None,
    ) -> StepOutput:
        """One step (module docstring); ``on_phase`` is told when each phase starts."""
        cfg = self.cfg
        seconds: dict[str, float] = {}
        clock = time.perf_counter()
        on_phase("rollout")
        groups, metrics = self._rollout(next_examples, rng)
        seconds["rollout"] = time.perf_counter() - clock
        generated = int(metrics["rollout/generated_tokens"])
        if not groups:
            self.scheduler.step()
            metrics["policy/skipped_updates"] = 1.0
            return StepOutput([], metrics | _perf(seconds, metrics, 0), generated)

        clock = time.perf_counter()
        on_phase("credit")
        credit = assign_credit(groups, cfg.credit)
        pad_id = self.tokenizer.pad_token_id
        rows = build_rows(
            credit.trees,
            credit.leaf_rows,
            credit.advantages,
            self.tokenizer.eos_token_id if pad_id is None else pad_id,
            train_forced_tokens=cfg.rollout.tti_train_forced_tokens,
        )
        metrics |= credit.metrics
        seconds["credit"] = time.perf_counter() - clock

        clock = time.perf_counter()
        on_phase("logprobs")
        old_logp_BT, logp_metrics = self._old_logprobs(rows)
        ref_logp_BT = None
        if self.reference is not None:
            ref_logp_BT, _ = self._logprobs(self.reference, rows, with_entropy=False)
        metrics |= logp_metrics
        seconds["logprobs"] = time.perf_counter() - clock

        clock = time.perf_counter()
        on_phase("update")
        metrics |= policy_update(
            self.model,
            self.optimizer,
            UpdateBatch(rows, old_logp_BT, ref_logp_BT),
            self.loss_cfg,
            cfg.optim,
            self.rollout_cfg.sampling.effective_temperature,
            rng,
        )
        self.scheduler.step()
        seconds["update"] = time.perf_counter() - clock
        trained = int(rows.attention_mask_BT.sum()) * cfg.optim.ppo_epochs
        return StepOutput(groups, metrics | _perf(seconds, metrics, trained), generated)

    def _rollout(
        self, next_examples: Callable[[int], list[QAExample]], rng: random.Random
    ) -> tuple[list[PromptGroup], dict[str, float]]:
        credit = self.cfg.credit
        wanted = self.cfg.train.prompts_per_step
        outputs: list[RolloutOutput] = []
        kept: list[PromptGroup] = []
        penalties: list[float] = []
        while not outputs or (
            credit.dynamic_sampling
            and len(kept) < wanted
            and len(outputs) < credit.dynamic_sampling_max_batches
        ):
            out = self._rollout_batch(
                next_examples(wanted), replace(self.rollout_cfg, seed=rng.randrange(2**31))
            )
            penalties.append(
                shape_rewards(out.groups, credit, self.rollout_cfg.max_response_tokens)
            )
            kept += informative_groups(out.groups) if credit.dynamic_sampling else out.groups
            outputs.append(out)
        metrics = _merge_rollout_metrics([out.metrics for out in outputs])
        metrics["rollout/generation_batches"] = float(len(outputs))
        metrics["rollout/kept_groups"] = float(min(len(kept), wanted))
        if credit.overlong_buffer:
            metrics["reward/overlong_penalty"] = sum(penalties) / len(penalties)
        return kept[:wanted], metrics

    def _rollout_batch(self, examples: list[QAExample], cfg: RolloutConfig) -> RolloutOutput:
        """One generation batch: on the workers when there are some, else in this process."""
        if self.workers is not None:
            return self.workers.rollout(examples, cfg)
        self.engine.prefix_cache.clear()
        return rollout(self.engine, self.codec, self.env, examples, cfg)

    def _old_logprobs(self, rows) -> tuple[torch.Tensor, dict[str, float]]:
        if self.cfg.optim.trust_rollout_logprobs:
            return rows.old_logp_BT, {}
        logp_BT, entropy_BT = self._logprobs(self.model, rows, with_entropy=True)
        on_BT = rows.loss_mask_BT != 0
        diff = (logp_BT - rows.old_logp_BT).abs()[on_BT]
        metrics = {
            "policy/rollout_logp_diff_max": float(diff.max()),
            "policy/rollout_logp_diff_mean": float(diff.mean()),
        }
        if entropy_BT is not None:
            metrics["policy/entropy"] = float(entropy_BT[on_BT].mean())
        return logp_BT, metrics

    def _logprobs(self, model: torch.nn.Module, rows, with_entropy: bool):
        return recompute_logprobs(
            model,
            rows.input_ids_BT,
            rows.attention_mask_BT,
            rows.prompt_len_B,
            self.rollout_cfg.sampling.effective_temperature,
            self.cfg.optim.micro_batch_tokens,
            with_entropy=with_entropy,
            packed_tokens=self.cfg.optim.packed_tokens,
        )


def _merge_rollout_metrics(all_metrics: Sequence[dict[str, float]]) -> dict[str, float]:
    """Counters summed over generation batches, everything else averaged."""
    keys = {k for m in all_metrics for k in m}
    out = {}
    for key in sorted(keys):
        values = [m[key] for m in all_metrics if key in m]
        additive = key in ROLLOUT_COUNTERS or key.startswith("perf/seconds")
        out[key] = sum(values) if additive else sum(values) / len(values)
    return out


def _perf(seconds: dict[str, float], metrics: dict[str, float], trained: int) -> dict[str, float]:
    out = {f"perf/seconds_{phase}": value for phase, value in seconds.items()}
    out["perf/generated_tokens_per_s"] = metrics["rollout/generated_tokens"] / seconds["rollout"]
    if "update" in seconds:
        out["perf/update_tokens_per_s"] = trained / seconds["update"]
    return out
