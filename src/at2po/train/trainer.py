"""The training loop: steps, held-out evaluation, logging, checkpoints, exact resume.

    trainer = Trainer(load_config("quickstart"))
    result = trainer.train()

Start-up checks everything the user can get wrong before the first step: the run directory (an
existing run needs ``resume``), the model directory, the task files and the retrieval server.

Each step (:mod:`at2po.train.step`) is logged as one metrics record; the held-out set (the first
``train.eval_size`` questions of ``train.eval_split``) is evaluated before training (step 0), every
``train.eval_every`` steps and after the last step; trees are written every
``train.log_trees_every`` steps; checkpoints every ``train.save_every`` steps and after the last.
The run ends after ``train.steps`` steps or once ``train.token_budget`` generated tokens are
spent, whichever comes first. With ``train.rollout_workers`` > 1 the steps' rollouts run in worker
processes (:mod:`at2po.train.rollout_workers`), started when ``train`` begins and stopped when it
ends, however it ends (``with Trainer(cfg) as trainer`` and :meth:`Trainer.start_workers` serve
callers that run steps themselves).

Resume continues from the newest usable checkpoint with the weights, optimizer, scheduler, prompt
sampler, every RNG and the counters it saved; the steps after it are run again and their metrics
equal those of a run that was never interrupted (``perf/*`` timings aside). It says where it
resumes from and everything it mends on the way: newer checkpoints skipped as damaged (deleted:
their steps run again), a torn last metrics line, leftovers of an interrupted save. A run
directory with no run, or no usable checkpoint, is refused before anything in it changes
(docs/training.md, "What resume promises").
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from at2po.core.losses import PolicyLossConfig
from at2po.rollout.codec import Codec
from at2po.rollout.evaluate import evaluate
from at2po.rollout.turns import intervention_ids
from at2po.tasks.datasets import QAExample
from at2po.train.checkpoint import (
    Checkpoint,
    global_rng_state,
    newest_usable_checkpoint,
    random_state,
    remove_leftovers,
    save_checkpoint,
    set_global_rng_state,
    set_random_state,
)
from at2po.train.config import ConfigError, TrainConfig
from at2po.train.display import TrainDisplay, summary_table
from at2po.train.optim import build_optimizer
from at2po.train.packing import check_tree_attention_support
from at2po.train.policy import (
    build_engine,
    load_model,
    load_tokenizer,
    model_directory,
    set_threads,
)
from at2po.train.rollout_workers import RolloutWorkers, worker_count
from at2po.train.run_dir import MetricSink, RunDir, open_sinks, read_metrics
from at2po.train.sampler import PromptSampler
from at2po.train.step import StepRunner
from at2po.train.task import Task, build_task


@dataclass(frozen=True)
class TrainResult:
    """How a run went: its eval records (step, generated tokens so far, metrics), in order."""

    name: str
    run_dir: Path
    steps: int
    generated_tokens: int
    seconds: float
    evals: list[tuple[int, int, dict[str, float]]]

    @property
    def before(self) -> dict[str, float] | None:
        return self.evals[0][2] if self.evals and self.evals[0][0] == 0 else None

    @property
    def after(self) -> dict[str, float] | None:
        return self.evals[-1][2] if self.evals else None

    @property
    def best(self) -> tuple[int, float] | None:
        """(step, EM) of the best held-out EM (the earliest of ties)."""
        if not self.evals:
            return None
        step, _, metrics = max(self.evals, key=lambda e: (e[2]["eval/em"], -e[0]))
        return step, metrics["eval/em"]


class Trainer:
    """A training run of ``cfg`` (module docstring).

    Args:
        cfg: the resolved config.
        resume: continue the run in ``cfg.run_dir`` from its newest checkpoint.
        task: a task already built from ``cfg.task`` (``at2po compare`` shares one).
        console: where progress and the summary go (default: stderr).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: bool = False,
        task: Task | None = None,
        console: Console | None = None,
    ) -> None:
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.run_dir = RunDir(cfg.run_dir)
        self.run_dir.check(resume)
        self.worker_count = min(worker_count(cfg), cfg.train.prompts_per_step)
        checkpoint, damaged = self._resume_point() if resume else (None, [])
        initial_dir = None
        if checkpoint is None or cfg.loss.uses_reference:
            initial_dir = model_directory(cfg.model)
        set_threads(cfg.model)
        self.task = task or build_task(cfg.task)
        self.train_examples = self.task.split("train")
        self.eval_examples = self.task.split(cfg.train.eval_split)[: cfg.train.eval_size]
        self.novel_examples = self.task.splits.get("novel", [])[: cfg.train.eval_size]

        policy_dir = checkpoint.path if checkpoint else initial_dir
        self.tokenizer = load_tokenizer(policy_dir)
        self.model = load_model(policy_dir, cfg.model)
        if cfg.optim.packing:
            check_tree_attention_support(self.model)
        reference = None
        if cfg.loss.uses_reference:
            reference = load_model(initial_dir, cfg.model, trainable=False)
        self.codec = Codec.from_tokenizer(self.tokenizer)
        _check_intervention(cfg, self.codec, self.task)
        self.engine = build_engine(self.model, self.tokenizer, cfg.rollout)
        self.rollout_cfg = cfg.rollout.to_rollout_config()
        optimizer, scheduler = build_optimizer(self.model, cfg.optim, cfg.train.steps)
        self.runner = StepRunner(
            cfg=cfg,
            model=self.model,
            tokenizer=self.tokenizer,
            engine=self.engine,
            codec=self.codec,
            env=self.task.env,
            rollout_cfg=self.rollout_cfg,
            loss_cfg=PolicyLossConfig(**cfg.loss.policy_loss_fields()),
            optimizer=optimizer,
            scheduler=scheduler,
            reference=reference,
        )
        self.sampler = PromptSampler(len(self.train_examples), cfg.train.seed)
        self.rng = random.Random(cfg.train.seed)
        self.step = 0
        self.generated_tokens = 0
        self.seconds = 0.0
        resume_step = None
        if checkpoint is not None:
            resume_step = self._restore(checkpoint)
            self._mend_run(checkpoint, damaged)
        self.run_dir.root.mkdir(parents=True, exist_ok=True)
        self.run_dir.write_config(cfg.to_yaml())
        self._sinks: list[MetricSink] = open_sinks(self.run_dir, cfg, resume_step)

    # --------------------------------------------------------------------- rollout workers
    def start_workers(self, display: TrainDisplay | None = None) -> None:
        """Start the rollout worker processes (``train.rollout_workers`` > 1) unless they run
        already; the steps use them from now until :meth:`close`."""
        if self.worker_count == 1 or self.runner.workers is not None:
            return
        if display is not None:
            display.phase("workers")
        clock = time.perf_counter()
        self.runner.workers = RolloutWorkers.start(
            self.model, self.tokenizer, self.cfg, self.worker_count
        )
        if display is not None:
            display.workers_ready(self.worker_count, time.perf_counter() - clock)

    def close(self) -> None:
        """Stop the rollout workers, if any (``train`` does this when it ends, however it ends)."""
        if self.runner.workers is not None:
            self.runner.workers.close()
            self.runner.workers = None

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        """Train until ``train.steps`` or the token budget; returns the run's summary. The rollout
        workers run from its start to its end (stopped on errors and Ctrl-C too)."""
        cfg = self.cfg.train
        started = time.perf_counter()
        display = TrainDisplay(self.console, cfg.progress, cfg.steps, self.step)
        try:
            with display:
                self.start_workers(display)
                if self.step == 0 and cfg.eval_before:
                    self._log(0, self._evaluate(display))
                while not self.finished:
                    self.step += 1
                    clock = time.perf_counter()
                    out = self.runner.run(self.next_examples, self.rng, display.phase)
                    self.generated_tokens += out.generated_tokens
                    metrics = out.metrics
                    metrics["rollout/generated_tokens_total"] = float(self.generated_tokens)
                    metrics["perf/seconds_step"] = time.perf_counter() - clock
                    last = self.finished
                    if last or (cfg.eval_every and self.step % cfg.eval_every == 0):
                        metrics |= self._evaluate(display)
                    self._log(self.step, metrics)
                    display.step_done(metrics)
                    if cfg.log_trees_every and self.step % cfg.log_trees_every == 0 and out.groups:
                        self.run_dir.write_trees(self.step, out.groups, self.tokenizer, self.cfg)
                    if last or (cfg.save_every and self.step % cfg.save_every == 0):
                        self.seconds += time.perf_counter() - started
                        started = time.perf_counter()
                        self._save(metrics)
        finally:
            self.close()
            for sink in self._sinks:
                sink.close()
        self.seconds += time.perf_counter() - started
        result = self.result()
        if cfg.progress:
            self.console.print(
                summary_table(
                    self.cfg.name,
                    result.before,
                    result.after,
                    result.best,
                    result.steps,
                    result.generated_tokens,
                    result.seconds,
                    str(self.run_dir.root),
                )
            )
        return result

    @property
    def finished(self) -> bool:
        budget = self.cfg.train.token_budget
        return self.step >= self.cfg.train.steps or (
            budget is not None and self.generated_tokens >= budget
        )

    def result(self) -> TrainResult:
        """The run so far, its eval records read back from ``metrics.jsonl``."""
        evals = [
            (
                int(r["step"]),
                int(r.get("rollout/generated_tokens_total", 0)),
                {k: v for k, v in r.items() if k.startswith(("eval/", "eval_novel/"))},
            )
            for r in read_metrics(self.run_dir.metrics)
            if "eval/em" in r
        ]
        return TrainResult(
            self.cfg.name, self.run_dir.root, self.step, self.generated_tokens, self.seconds, evals
        )

    def _evaluate(self, display: TrainDisplay) -> dict[str, float]:
        """Greedy metrics on the held-out split (``eval/*``) and, where the task has one, on the
        novel-name split (``eval_novel/*``)."""
        clock = time.perf_counter()
        metrics: dict[str, float] = {}
        for prefix, examples in (("eval", self.eval_examples), ("eval_novel", self.novel_examples)):
            if not examples:
                continue
            display.phase(prefix)
            total = len(examples)
            metrics |= evaluate(
                self.engine,
                self.codec,
                self.task.env,
                examples,
                self.rollout_cfg,
                on_progress=lambda done, total=total: display.eval_progress(done, total),
                prefix=prefix,
            )
        metrics["perf/seconds_eval"] = time.perf_counter() - clock
        display.evaluated(metrics)
        return metrics

    def next_examples(self, k: int) -> list[QAExample]:
        return [self.train_examples[i] for i in self.sampler.next(k)]

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        for sink in self._sinks:
            sink.log(step, metrics)

    # -------------------------------------------------------------------------- checkpoints
    def _save(self, metrics: dict[str, float]) -> Path:
        state = {
            "step": self.step,
            "generated_tokens": self.generated_tokens,
            "seconds": self.seconds,
            "sampler": self.sampler.state_dict(),
            "rng": random_state(self.rng),
            "global_rng": global_rng_state(),
            "eval": {k: v for k, v in metrics.items() if k.startswith(("eval/", "eval_novel/"))}
            or None,
        }
        return save_checkpoint(
            self.run_dir.checkpoints,
            self.step,
            self.model,
            self.tokenizer,
            self.runner.optimizer,
            self.runner.scheduler,
            state,
            self.cfg.to_yaml(),
            self.cfg.train.keep_last,
        )

    def _resume_point(self) -> tuple[Checkpoint, list[tuple[Path, str]]]:
        """The newest usable checkpoint of the run and the newer ones skipped as damaged (path,
        reason); a ConfigError when there is none, before anything is changed."""
        checkpoint, damaged = newest_usable_checkpoint(self.run_dir.checkpoints)
        if checkpoint is None:
            found = "; ".join(f"{path.name}: {why}" for path, why in damaged) or "none saved"
            root = self.run_dir.root
            raise ConfigError(
                f"--resume: {root} has no usable checkpoint ({found}); nothing was changed. To "
                f"train the run again from step 0, delete {root} or pass another --out without "
                "--resume"
            )
        return checkpoint, damaged

    def _restore(self, checkpoint: Checkpoint) -> int:
        """Load the trainer state of ``checkpoint`` (its weights are already loaded); returns its
        step."""
        state = checkpoint.state
        if state["step"] > self.cfg.train.steps:
            raise ConfigError(
                f"the checkpoint {checkpoint.path} is at step {state['step']}, past train.steps="
                f"{self.cfg.train.steps}; raise train.steps to continue the run"
            )
        self.runner.optimizer.load_state_dict(checkpoint.optimizer)
        self.runner.scheduler.load_state_dict(checkpoint.scheduler)
        self.sampler.load_state_dict(state["sampler"])
        set_random_state(self.rng, state["rng"])
        set_global_rng_state(state["global_rng"])
        torch.set_rng_state(checkpoint.torch_rng)
        if checkpoint.cuda_rng:
            torch.cuda.set_rng_state_all(checkpoint.cuda_rng)
        self.step = int(state["step"])
        self.generated_tokens = int(state["generated_tokens"])
        self.seconds = float(state["seconds"])
        return self.step

    def _mend_run(self, checkpoint: Checkpoint, damaged: list[tuple[Path, str]]) -> None:
        """Before resuming from ``checkpoint``: delete the damaged newer checkpoints, the leftovers
        of interrupted saves and the metrics lines after it (a torn last one included), saying
        each."""
        for path, why in damaged:
            shutil.rmtree(path)
            self._say(
                f"checkpoint {path} is damaged ({why}): skipped and deleted, its steps run again"
            )
        for path in remove_leftovers(self.run_dir.checkpoints):
            self._say(f"removed {path} (left by a checkpoint save that was interrupted)")
        torn = self.run_dir.keep_metrics_through(self.step)
        if torn is not None:
            self._say(
                f"{self.run_dir.metrics} ends in a partial line (a kill while it was written): "
                f"dropped {torn[:60]!r}"
            )
        self._say(f"resuming from step {self.step} (checkpoint {checkpoint.path})")

    def _say(self, text: str) -> None:
        """One line to the console, whatever ``train.progress`` says."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


def _check_intervention(cfg: TrainConfig, codec: Codec, task: Task) -> None:
    """With ``rollout.tti``, the task and tokenizer must define what TTI forces (a ConfigError)."""
    if not cfg.rollout.tti:
        return
    try:
        intervention_ids(codec, task.env)
    except ValueError as error:
        raise ConfigError(str(error)) from None
