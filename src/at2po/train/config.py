"""The training configuration: one typed tree, from a YAML preset plus ``a.b=value`` overrides.

    cfg = load_config("at2po", ["optim.lr=1e-4", "rollout.n_rows=8"])

Sections: ``model`` (which policy), ``task`` (questions, corpus, retriever, episode limits, reward),
``rollout`` (how trees or chains are grown), ``credit`` (which advantage estimator), ``loss`` (which
policy loss, KL and entropy terms), ``optim`` (AdamW, schedule, PPO epochs and batching) and
``train`` (steps, prompts, seed, evaluation, checkpoints, logging). Every field carries a help
string (``description``); :func:`describe` renders them. Every section is frozen and refuses
unknown keys; a misspelt key is an error that names the closest valid one.

Override values are read as YAML, so ``optim.lr=1e-4`` is a float, ``train.wandb=true`` a bool,
``loss.dual_clip=null`` is None and ``optim.betas=[0.9,0.95]`` a list.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from at2po.core.credit import ADV_MODES, GIGPO_MODES, LEAF_NORMS, VALUE_MODES
from at2po.core.expansion import EXPANSION_MODES
from at2po.core.losses import POLICY_LOSSES, PolicyLossConfig
from at2po.rollout.config import ROLLOUT_MODES, RolloutConfig
from at2po.rollout.engine import SamplingParams
from at2po.tasks.rewards import REWARD_SCHEMES
from at2po.tasks.worlds.generator import QUESTION_TYPES
from at2po.train.presets import read_config_source


class ConfigError(ValueError):
    """A configuration the user has to fix; the message says what and how."""


def _one_of(choices: Sequence[str]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {list(choices)}")
        return value

    return check


def _choice(choices: Sequence[str]) -> Any:
    return Annotated[str, AfterValidator(_one_of(choices))]


RewardScheme = _choice(REWARD_SCHEMES)
RolloutMode = _choice(ROLLOUT_MODES)
ExpansionMode = _choice(EXPANSION_MODES)
ValueMode = _choice(VALUE_MODES)
AdvMode = _choice(ADV_MODES)
LeafNorm = _choice(LEAF_NORMS)
GigpoMode = _choice(GIGPO_MODES)
LossName = _choice(tuple(POLICY_LOSSES))


class Section(BaseModel):
    """A frozen group of settings that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------------- sections


class ModelConfig(Section):
    path: str = Field(
        "tiny",
        description="Policy to train: a model name (`tiny`: built by `at2po bootstrap`; "
        "`smollm2-135m`) or the path of a Hugging Face model directory.",
    )
    cache_dir: str | None = Field(
        None, description="Where named models are cached (default: $AT2PO_CACHE or ~/.cache/at2po)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Parameter dtype; `auto` is bfloat16 on CUDA and float32 on CPU."
    )
    device: str = Field(
        "auto", description="`cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when available)."
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads of torch's operators for the whole process "
        "(torch.set_num_threads); null keeps torch's default. 1 is fastest for the tiny model, "
        "and far faster when other processes compete for the cores.",
    )


class WorldsConfig(Section):
    seed: int = Field(0, description="Seed of the synthetic train/dev/test worlds.")
    names: Literal["shared", "partitioned"] = Field(
        "shared",
        description="`shared`: every split is many small worlds whose names come from one "
        "closed inventory (one token each in the tiny policy's tokenizer) and whose facts come "
        "from their own seeds, each searched in its own corpus; `partitioned`: one world per "
        "split, names made fresh and disjoint between splits.",
    )
    questions_per_world: int = Field(
        100, ge=1, description="Questions per world when names=shared (a split is many worlds)."
    )
    n_train: int = Field(2000, ge=1, description="Training questions (train worlds).")
    n_dev: int = Field(200, ge=1, description="Held-out questions of the dev worlds.")
    n_test: int = Field(200, ge=0, description="Held-out questions of the test worlds (0: none).")
    n_novel: int = Field(
        200,
        ge=0,
        description="Held-out questions of a novel-name world (names=shared only; fresh names "
        "never in the inventory, the harder generalisation; evaluated beside the main held-out "
        "set as eval_novel/*; 0: none).",
    )
    question_mix: dict[str, float] | None = Field(
        None,
        description=f"Relative weight of each question type ({', '.join(QUESTION_TYPES)}); "
        "null keeps the world generator's default mix.",
    )

    @model_validator(mode="after")
    def _known_types(self) -> WorldsConfig:
        unknown = sorted(set(self.question_mix or {}) - set(QUESTION_TYPES))
        if unknown:
            raise ValueError(f"unknown question types {unknown}; choose from {QUESTION_TYPES}")
        return self


class GameTaskConfig(Section):
    name: Literal["twc", "cookingworld"] = Field(
        "twc",
        description="TextWorldExpress game: `twc` (put objects where they belong, ALFWorld-like) "
        "or `cookingworld` (find ingredients and cook; harder). See docs/games.md.",
    )
    params: str | None = Field(
        None,
        description="TextWorldExpress settings, e.g. `numLocations=1,numItemsToPutAway=2`; null "
        "takes the small demo settings of the game (at2po.tasks.games.SMALL_SETTINGS).",
    )
    n_train: int = Field(
        1000, ge=1, le=1000, description="Training games: seeds 0.. of the train fold."
    )
    n_dev: int = Field(100, ge=1, le=1000, description="Held-out games: seeds 0.. of the dev fold.")
    n_test: int = Field(
        100, ge=1, le=1000, description="Held-out games: seeds 0.. of the test fold."
    )
    feedback: bool | None = Field(
        None,
        description="Show the game's answer to each action before the view; null: per game "
        "(off for twc, whose view says it all; on for cookingworld, whose recipe is an answer).",
    )
    progress_weight: float = Field(
        0.0, ge=0, description="Reward shaping: add this times the game's final score (0-1)."
    )
    invalid_penalty: float = Field(
        0.0, ge=0, description="Reward shaping: subtract this per invalid turn (format or action)."
    )
    max_instances: int = Field(
        64, ge=1, description="Game instances kept in the process's JVM (LRU reuse beyond)."
    )


class TaskConfig(Section):
    source: Literal["worlds", "files", "game"] = Field(
        "worlds",
        description="`worlds`: synthetic multi-hop worlds generated in memory; `files`: question "
        "files (JSONL/Parquet, Search-R1 layout) and a corpus; `game`: a TextWorldExpress text "
        "game (task.game; needs the games extra).",
    )
    worlds: WorldsConfig = Field(default_factory=WorldsConfig, description="Synthetic worlds.")
    game: GameTaskConfig = Field(default_factory=GameTaskConfig, description="Text games.")
    train_file: str | None = Field(None, description="Training questions (source=files).")
    dev_file: str | None = Field(None, description="Dev questions (source=files).")
    test_file: str | None = Field(None, description="Test questions (source=files), optional.")
    corpus_file: str | None = Field(
        None, description="JSONL corpus {id, contents} for bm25/dense retrieval (source=files)."
    )
    retriever: Literal["bm25", "dense", "http"] = Field(
        "bm25",
        description="`bm25` (in process), `dense` (MiniLM + FAISS, needs the dense extra) or "
        "`http` (a Search-R1 /retrieve server such as `at2po retriever serve`).",
    )
    retriever_url: str = Field(
        "http://127.0.0.1:8000/retrieve", description="Endpoint of the retrieval server (http)."
    )
    search_topk: int = Field(3, ge=1, description="Passages returned per search.")
    search_max_chars: int = Field(500, ge=1, description="Characters kept of each passage.")
    max_tool_calls: int = Field(6, ge=1, description="Searches allowed per episode.")
    max_turns: int = Field(10, ge=1, description="Agent turns per episode, mistakes included.")
    reward: RewardScheme = Field(
        "at2po",
        description=f"Reward scheme ({', '.join(REWARD_SCHEMES)}); `at2po` is EM, or −1 when "
        "the format is invalid.",
    )
    require_think: bool = Field(
        False, description="The format also needs a <think> block (search and game formats)."
    )
    format_penalty: float = Field(
        0.2, ge=0, description="Penalty of the `em_with_format_penalty` scheme."
    )

    @model_validator(mode="after")
    def _files_given(self) -> TaskConfig:
        if self.source == "files":
            missing = [n for n in ("train_file", "dev_file") if getattr(self, n) is None]
            if self.retriever != "http" and self.corpus_file is None:
                missing.append("corpus_file")
            if missing:
                raise ValueError(
                    f"source=files needs {', '.join('task.' + m for m in missing)}; give the "
                    "paths (e.g. from `at2po worlds generate --out DIR`)"
                )
        return self


_ROLLOUT = RolloutConfig()
"""The rollout layer's defaults: the one source of the ``rollout`` section's defaults."""

SAMPLING_FIELDS = ("temperature", "top_p", "top_k")
"""``rollout`` fields that make up :attr:`RolloutConfig.sampling` (never greedy in training)."""

ENGINE_FIELDS = ("engine_batch_size", "prefix_cache_tokens")
"""``rollout`` fields of the engine (:func:`at2po.train.policy.build_engine`), not RolloutConfig."""

UNEXPOSED_FIELDS = ("record_entropy", "seed")
"""RolloutConfig fields the ``rollout`` section leaves out: the trainer seeds each step itself and
never asks for full-vocabulary entropies."""


class RolloutSection(Section):
    """The rollout layer's settings (:class:`RolloutConfig`, same names and defaults) plus the
    engine's; :meth:`to_rollout_config` maps every field but :data:`ENGINE_FIELDS` by name."""

    mode: RolloutMode = Field(
        _ROLLOUT.mode,
        description="`chain`: n independent trajectories; `tree`: AT²PO tree search (M chains, "
        "L rounds of K re-sampled turns); `branching`: ARPO/AEPO branching after tool calls.",
    )
    n_rows: int = Field(
        _ROLLOUT.n_rows, ge=1, description="Rows (leaves) kept per prompt: N, or n for chains."
    )
    n_chains: int = Field(
        _ROLLOUT.n_chains,
        ge=1,
        description="M: initial chains per prompt (tree; branching's initial chains).",
    )
    expansion_rounds: int = Field(
        _ROLLOUT.expansion_rounds, ge=0, description="L: expansion rounds (tree)."
    )
    expansion_k: int = Field(
        _ROLLOUT.expansion_k, ge=1, description="K: turns re-sampled per tree per round (tree)."
    )
    expansion_mode: ExpansionMode = Field(
        _ROLLOUT.expansion_mode,
        description="`entropy` (AT²PO: top K by H − α·b) or `random` (Tree-GRPO).",
    )
    sibling_penalty: float = Field(
        _ROLLOUT.sibling_penalty, description="α in the expansion score."
    )
    expansion_min_entropy: float = Field(
        _ROLLOUT.expansion_min_entropy,
        ge=0.0,
        description="Entropy floor of entropy expansion, beyond the paper (0: off): turns the "
        "policy samples with H below it (near-deterministic, re-sampled as duplicates) are picked "
        "only when too few other candidates remain.",
    )
    branch_beam: int = Field(
        _ROLLOUT.branch_beam, ge=1, description="Branching: trajectories per observation."
    )
    branch_probability: float = Field(
        _ROLLOUT.branch_probability, description="Branching: threshold τ."
    )
    branch_entropy_weight: float = Field(
        _ROLLOUT.branch_entropy_weight, description="Branching: weight of ΔH."
    )
    max_turn_tokens: int = Field(
        _ROLLOUT.max_turn_tokens, ge=1, description="Token budget of one generated turn."
    )
    max_response_tokens: int = Field(
        _ROLLOUT.max_response_tokens,
        ge=1,
        description="Budget of a whole response (turns and observations).",
    )
    max_context_tokens: int = Field(
        _ROLLOUT.max_context_tokens, ge=2, description="Prompt + response limit."
    )
    temperature: float = Field(
        _ROLLOUT.sampling.temperature,
        gt=0,
        description="Sampling temperature (also of log-probs).",
    )
    top_p: float = Field(
        _ROLLOUT.sampling.top_p, gt=0, le=1, description="Nucleus sampling mass (1: off)."
    )
    top_k: int = Field(_ROLLOUT.sampling.top_k, description="Top-k sampling (−1: off).")
    tool_workers: int = Field(
        _ROLLOUT.tool_workers,
        ge=1,
        description="Threads stepping the environment (a round's batched step, or one thread per "
        "turn's step when the batch call fails or the env has no step_batch).",
    )
    tool_timeout_s: float = Field(
        _ROLLOUT.tool_timeout_s,
        gt=0,
        description="Seconds an env step may take; a slower one ends its trajectory.",
    )
    record_uncertainty: bool = Field(
        _ROLLOUT.record_uncertainty,
        description="T²PO: compute the uncertainty M_t of every sampled token and log it "
        "(`t2po/*`); implied by `tti` and `tds`.",
    )
    uncertainty_alpha: float = Field(
        _ROLLOUT.uncertainty_alpha,
        ge=0,
        le=1,
        description="T²PO: α in M = α·H̃ + (1 − α)·(1 − C̃) (paper: 0.4).",
    )
    uncertainty_top_j: int = Field(
        _ROLLOUT.uncertainty_top_j,
        ge=2,
        description="T²PO: j of the top-j confidence C (≥ 2; DeepConf's 20).",
    )
    tti: bool = Field(
        _ROLLOUT.tti,
        description="T²PO thinking intervention: force the task's `</think>` + structural tokens "
        "when M_t stagnates or the thinking cap is reached (at most once per turn).",
    )
    tti_min_think: int = Field(
        _ROLLOUT.tti_min_think, ge=1, description="TTI: L_min, thinking tokens before monitoring."
    )
    tti_window: int = Field(
        _ROLLOUT.tti_window, ge=1, description="TTI: N; the mean runs over N + 1 deltas of M_t."
    )
    tti_eps: float = Field(
        _ROLLOUT.tti_eps,
        ge=0,
        description="TTI: ε; fires when the window mean of |ΔM| drops below it (tiny: 0.09, "
        "~15 % of warm-start turns; paper: 1e-4 for Qwen3-4B).",
    )
    tti_max_think: int = Field(
        _ROLLOUT.tti_max_think, ge=1, description="TTI: L_max, the hard thinking cap."
    )
    tti_train_forced_tokens: bool = Field(
        _ROLLOUT.tti_train_forced_tokens,
        description="TTI: train on forced tokens as the authors' code does (false: loss mask 0, "
        "every trained log-prob is the sampler's).",
    )
    tds: bool = Field(
        _ROLLOUT.tds,
        description="T²PO turn resampling: redraw a turn from the same state while "
        "Γ = |Φ − Φ_prev| < tds_eta, at most tds_max_redraws times, before the env steps.",
    )
    tds_eta: float = Field(
        _ROLLOUT.tds_eta,
        ge=0,
        description="TDS: η (tiny: 0.05, Γ's 20th percentile at the warm start; notes: 1e-3 "
        "for Qwen3-4B).",
    )
    tds_max_redraws: int = Field(
        _ROLLOUT.tds_max_redraws, ge=0, description="TDS: B_max, redraws per turn."
    )
    engine_batch_size: int = Field(64, ge=1, description="Sequences decoded together.")
    prefix_cache_tokens: int = Field(
        32768, ge=0, description="Tokens of keys/values the engine's prefix cache keeps (0: off)."
    )

    def to_rollout_config(self) -> RolloutConfig:
        """The rollout layer's config (its seed is set per step)."""
        values = self.model_dump(exclude=set(ENGINE_FIELDS))
        sampling = SamplingParams(**{name: values.pop(name) for name in SAMPLING_FIELDS})
        return RolloutConfig(**values, sampling=sampling)

    @model_validator(mode="after")
    def _valid_for_rollout(self) -> RolloutSection:
        self.to_rollout_config()  # the rollout layer's own checks (budgets, counts)
        return self


class CreditConfig(Section):
    estimator: Literal["tree", "grpo", "tree_grpo", "gigpo"] = Field(
        "tree",
        description="`tree`: AT²PO turn-tree values; `grpo`: group z-score of the outcome; "
        "`tree_grpo`: intra- plus inter-tree z-score; `gigpo`: episode plus anchor-state step "
        "advantage.",
    )
    value_mode: ValueMode = Field(
        "entropy_softmax", description="Tree: how a node's value mixes its children's."
    )
    adv_mode: AdvMode = Field(
        "value", description="Tree: node advantage from values (`value`: A = V)."
    )
    leaf_norm: LeafNorm = Field(
        "zscore", description="Tree: leaf rewards z-scored per tree, or used as they are."
    )
    grpo_scale_by_std: bool = Field(
        True, description="GRPO: divide by the group std (False: Dr.GRPO, mean only)."
    )
    dynamic_sampling: bool = Field(
        False,
        description="DAPO: drop prompt groups whose rewards are all equal and roll out more "
        "prompts to refill the batch.",
    )
    dynamic_sampling_max_batches: int = Field(
        3, ge=1, description="DAPO: most generation batches per step when refilling."
    )
    overlong_buffer: int = Field(
        0,
        ge=0,
        description="DAPO soft overlong punishment: responses longer than "
        "max_response_tokens − buffer lose reward linearly (0: off).",
    )
    overlong_penalty: float = Field(1.0, ge=0, description="DAPO: the largest overlong penalty.")
    gigpo_gamma: float = Field(0.95, ge=0, le=1, description="GiGPO: discount of step returns.")
    gigpo_step_weight: float = Field(1.0, description="GiGPO: weight ω of the step advantage.")
    gigpo_mode: GigpoMode = Field(
        "mean_norm", description="GiGPO: centre (`mean_norm`) or z-score (`mean_std_norm`)."
    )
    invalid_action_penalty: float = Field(
        0.0,
        ge=0,
        description="GiGPO: subtracted from the episode score and step return of turns whose "
        "action the env refused (T²PO: 0.1; 0: off).",
    )
    gigpo_similarity: float | None = Field(
        None,
        gt=0,
        le=1,
        description="GiGPO: group anchor observations whose similarity ratio reaches this "
        "(null: exact match only).",
    )


_LOSS_FIELDS = tuple(f.name for f in dataclasses.fields(PolicyLossConfig))


class LossConfig(Section):
    name: LossName = Field(
        "turn",
        description=f"Policy-loss preset ({', '.join(POLICY_LOSSES)}); the fields below that "
        "are not set explicitly take the preset's values.",
    )
    ratio: Literal["token", "turn", "sequence"] = Field(
        description="Importance ratio per token (PPO), turn (AT²PO) or sequence (GSPO)."
    )
    clip_low: float = Field(ge=0, lt=1, description="ε_low: the ratio is clipped at 1 − ε_low.")
    clip_high: float = Field(ge=0, description="ε_high: the ratio is clipped at 1 + ε_high.")
    clip_grad: Literal["hard", "upper", "both"] = Field(
        description="`upper`/`both`: clipped bounds keep their gradient (AEPO / GPPO)."
    )
    dual_clip: float | None = Field(description="Dual-clip c > 1 for A < 0 (null: off).")
    log_ratio_cap: float = Field(gt=0, description="Cap on log r before the exponential.")
    entropy_adv_beta: float = Field(
        description="β of AEPO's entropy-balanced advantage A·(1 + β·ẑ) (0: off)."
    )
    agg: Literal[
        "token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum",
        "seq-mean-token-sum-norm",
    ] = Field(description="How per-token losses become one number.")  # fmt: skip
    norm_len: int | None = Field(description="Divisor of seq-mean-token-sum-norm (null: T).")
    kl_coef: float = Field(ge=0, description="Weight of the KL penalty to the reference policy.")
    kl_estimator: Literal["k1", "k2", "k3", "low_var_kl"] = Field(
        description="KL estimator (k3 = low_var_kl)."
    )
    entropy_coef: float = Field(description="Weight of the entropy bonus.")
    reference: bool | None = Field(
        None,
        description="Keep a frozen copy of the initial policy for the KL term. null: exactly "
        "when kl_coef ≠ 0; true with kl_coef = 0 only logs loss/kl.",
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        """Fields not given explicitly take the values of the preset ``name``."""
        if not isinstance(data, Mapping):
            return data
        name = data.get("name", "turn")
        if name not in POLICY_LOSSES:
            return data  # the name's own validator reports it
        preset = POLICY_LOSSES[name]
        return {**{f: getattr(preset, f) for f in _LOSS_FIELDS}, **data}

    @model_validator(mode="after")
    def _reference_for_kl(self) -> LossConfig:
        if self.kl_coef != 0 and self.reference is False:
            raise ValueError(
                f"kl_coef={self.kl_coef} needs the reference model; set loss.reference=true "
                "(or null) or loss.kl_coef=0"
            )
        return self

    @property
    def uses_reference(self) -> bool:
        return self.kl_coef != 0 or bool(self.reference)

    def policy_loss_fields(self) -> dict[str, Any]:
        """The fields of :class:`at2po.core.losses.PolicyLossConfig`."""
        return {f: getattr(self, f) for f in _LOSS_FIELDS}


class OptimConfig(Section):
    lr: float = Field(1e-4, gt=0, description="Peak learning rate of AdamW.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW moment decay rates.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay.")
    grad_clip: float = Field(
        1.0, gt=0, description="Clip the global gradient norm; a non-finite norm skips the update."
    )
    warmup_steps: int = Field(0, ge=0, description="Training steps of linear warm-up.")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning rate after warm-up, over the training steps."
    )
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="linear/cosine decay to lr · min_lr_ratio at the last step."
    )
    ppo_epochs: int = Field(1, ge=1, description="Passes over a step's rows.")
    mini_batches: int = Field(1, ge=1, description="Optimizer updates per epoch (rows split).")
    shuffle: bool = Field(True, description="Shuffle rows before splitting into mini-batches.")
    micro_batch_tokens: int = Field(
        8192,
        ge=1,
        description="Padded tokens per forward pass (micro-batch) when packing is off; gradients "
        "accumulate over a mini-batch's micro-batches.",
    )
    packing: bool = Field(
        True,
        description="Tree packing: each micro-batch runs its rows' distinct tokens once, with a "
        "tree attention mask (docs/training.md, 'Tree packing'); needs sdpa or eager attention. "
        "Off: padded rows, only the prefix common to a whole micro-batch run once.",
    )
    packed_micro_batch_tokens: int = Field(
        8192,
        ge=1,
        description="Distinct tokens per packed forward pass (activation memory grows with it); "
        "a tree that fits stays in one pass.",
    )
    trust_rollout_logprobs: bool = Field(
        False,
        description="Use the rollout's log-probs as π_old instead of recomputing them with the "
        "training forward.",
    )

    @property
    def packed_tokens(self) -> int | None:
        """The packed micro-batch budget, or None when packing is off."""
        return self.packed_micro_batch_tokens if self.packing else None


class TrainSection(Section):
    steps: int = Field(20, ge=1, description="Training steps (rollout + update each).")
    prompts_per_step: int = Field(4, ge=1, description="Prompts (trees) per training step.")
    seed: int = Field(0, description="Seed of the prompt order, rollouts and mini-batches.")
    token_budget: int | None = Field(
        None,
        ge=1,
        description="Stop once this many tokens have been generated in training rollouts "
        "(null: no limit); `at2po compare` gives every preset the same budget.",
    )
    eval_every: int = Field(
        5, ge=0, description="Evaluate every this many steps (0: only before and after)."
    )
    eval_before: bool = Field(True, description="Evaluate the initial policy (step 0).")
    eval_split: Literal["dev", "test"] = Field("dev", description="Held-out split to evaluate.")
    eval_size: int = Field(64, ge=1, description="Held-out questions evaluated (the first N).")
    save_every: int = Field(
        10, ge=0, description="Checkpoint every this many steps (0: only at the end)."
    )
    keep_last: int = Field(2, ge=1, description="Checkpoints kept; older ones are deleted.")
    log_trees_every: int = Field(
        10, ge=0, description="Write the step's trees as JSON every this many steps (0: never)."
    )
    tensorboard: bool = Field(True, description="Write TensorBoard events.")
    wandb: bool = Field(False, description="Log to Weights & Biases (needs the wandb extra).")
    wandb_project: str = Field("at2po", description="Weights & Biases project.")
    wandb_mode: Literal["offline", "online"] = Field(
        "offline", description="Weights & Biases mode; offline runs sync later."
    )
    progress: bool = Field(True, description="Show progress bars and the final summary.")
    rollout_workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1,
        description="Processes that share a step's rollout (contiguous chunks of its prompts, "
        "each with its own engine, env, seed and one torch thread, sampling the training "
        "model's weights through shared memory); `auto`: one per usable CPU core, 1 on CUDA. "
        '1 rolls out in the trainer\'s process. See docs/training.md, "Every core busy".',
    )


class TrainConfig(Section):
    """Everything one training run needs."""

    name: str = Field("run", description="Run name (the preset or YAML file name by default).")
    out_dir: str | None = Field(None, description="Run directory (default: runs/<name>).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy.")
    task: TaskConfig = Field(default_factory=TaskConfig, description="Questions and search.")
    rollout: RolloutSection = Field(default_factory=RolloutSection, description="Rollouts.")
    credit: CreditConfig = Field(default_factory=CreditConfig, description="Advantages.")
    loss: LossConfig = Field(default_factory=LossConfig, description="Policy loss.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer.")
    train: TrainSection = Field(default_factory=TrainSection, description="Run length and logs.")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.credit.overlong_buffer >= self.rollout.max_response_tokens:
            raise ValueError(
                f"credit.overlong_buffer={self.credit.overlong_buffer} must be below "
                f"rollout.max_response_tokens={self.rollout.max_response_tokens}"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir is not None else Path("runs") / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------------- loading


def load_config(source: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config of a preset name (``configs/<name>.yaml``) or YAML file, with overrides applied.

    A YAML file may name a ``base`` (preset or file) whose settings it extends. The run name
    defaults to the preset or file name.
    """
    try:
        data, name = read_config_source(source)
    except (OSError, ValueError) as error:
        raise ConfigError(str(error)) from None
    check_keys(data)
    data.setdefault("name", name)
    for item in overrides:
        path, value = parse_override(item)
        _set(data, path, value)
    return validate(data)


def validate(data: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from plain data, or a :class:`ConfigError` listing every problem."""
    check_keys(data)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as error:
        problems = [
            f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            + (f" (got {e['input']!r})" if not isinstance(e["input"], dict) else "")
            for e in error.errors()
        ]
        raise ConfigError("invalid configuration:\n" + "\n".join(problems)) from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` → (["a", "b"], value read as YAML), the key checked against the schema."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key=value, e.g. optim.lr=1e-4")
    path = key.strip().split(".")
    _check_path(path)
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({error})") from None
    return path, value


def check_keys(data: Mapping[str, Any], prefix: Sequence[str] = ()) -> None:
    """Refuse any key the schema does not know, naming the closest valid one."""
    for key, value in data.items():
        path = [*prefix, str(key)]
        section = _check_path(path)
        if section is not None and isinstance(value, Mapping):
            check_keys(value, path)


def _check_path(path: Sequence[str]) -> type[Section] | None:
    """The section class ``path`` leads to (None for a leaf field), or a ConfigError."""
    model: type[Section] = TrainConfig
    for depth, key in enumerate(path):
        fields = model.model_fields
        if key not in fields:
            here = ".".join(path[:depth])
            options = [".".join([*path[:depth], k]) for k in fields]
            wanted = ".".join(path[: depth + 1])
            close = difflib.get_close_matches(wanted, options, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = f" in section {here!r}" if here else ""
            raise ConfigError(
                f"unknown config key {'.'.join(path)!r}{where}{hint} "
                f"(valid keys: {', '.join(sorted(fields))})"
            )
        annotation = fields[key].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, Section)
        if not is_section:
            if depth != len(path) - 1:
                raise ConfigError(
                    f"config key {'.'.join(path[: depth + 1])!r} is a value, not a section; "
                    f"drop {'.'.join(path[depth + 1 :])!r}"
                )
            return None
        model = annotation
    return model


def _set(data: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


# ----------------------------------------------------------------------------- documentation


def iter_fields() -> Iterator[tuple[str, Any, str]]:
    """(dotted key, default value, description) of every leaf field, in declaration order."""
    yield from _leaf_fields(TrainConfig, TrainConfig().model_dump(mode="json"), "")


def _leaf_fields(
    model: type[Section], values: Mapping[str, Any], prefix: str
) -> Iterator[tuple[str, Any, str]]:
    for key, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            yield from _leaf_fields(annotation, values[key], f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", values[key], info.description or ""


def reference_markdown() -> str:
    """The configuration reference of ``docs/training.md``: one table per section.

    Rows are (key, default, help) from :func:`iter_fields`; a test keeps the docs equal to this.
    """
    lines: list[str] = []
    section = None
    for key, default, description in iter_fields():
        head = key.split(".")[0] if "." in key else "(top level)"
        if head != section:
            section = head
            if lines:
                lines.append("")
            lines += [f"#### `{head}`", "", "| key | default | meaning |", "|---|---|---|"]
        shown = yaml.safe_dump(default, default_flow_style=True, width=10_000).strip()
        shown = shown.removesuffix("\n...").removesuffix("...").strip()
        lines.append(f"| `{key}` | `{shown}` | {description} |")
    return "\n".join(lines) + "\n"


def describe(cfg: TrainConfig) -> str:
    """The resolved config as YAML with each field's help string as a comment above it."""
    values = cfg.model_dump(mode="json")
    lines: list[str] = []
    _describe_section(type(cfg), values, 0, lines)
    return "\n".join(lines) + "\n"


def _describe_section(
    model: type[Section], values: Mapping[str, Any], indent: int, lines: list[str]
) -> None:
    pad = "  " * indent
    for key, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            lines.append(f"{pad}# {info.description}")
            lines.append(f"{pad}{key}:")
            _describe_section(annotation, values[key], indent + 1, lines)
            continue
        lines.append(f"{pad}# {info.description}")
        dumped = yaml.safe_dump({key: values[key]}, default_flow_style=True, width=10_000)
        lines.append(pad + dumped.strip()[1:-1])
