"""Loading the policy (and the frozen reference) from ``model.*``, with errors that say what to do.

The model stays in eval mode for the whole run: dropout is off both when it samples and when it is
trained, so the policy that generated the rows is the policy whose log-probs are recomputed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from at2po.models import integrity
from at2po.models.registry import REPLACE_HINT, repair_hint, resolve_model
from at2po.rollout.hf_engine import HFEngine
from at2po.train.config import ConfigError, ModelConfig, RolloutSection

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_directory(cfg: ModelConfig) -> Path:
    """The Hugging Face directory of ``model.path``, checked by :func:`check_model_directory`,
    or a ConfigError saying how to get or repair one."""
    try:
        directory = resolve_model(cfg.path, cfg.cache_dir)
    except FileNotFoundError as error:
        raise ConfigError(
            f"model.path={cfg.path!r}: {error}\nRun `at2po bootstrap` to build the default tiny "
            "model, or pass model.path=DIR with a Hugging Face model directory."
        ) from None
    check_model_directory(directory, repair_hint(cfg.path, cfg.cache_dir))
    return directory


def check_model_directory(directory: Path, fix: str = REPLACE_HINT) -> None:
    """Refuse a damaged model directory before transformers reads it: a ConfigError naming the
    file and ``fix`` when ``config.json``, the safetensors weights or ``tokenizer.json`` is
    missing or unreadable (an empty or truncated ``model.safetensors`` included)."""
    check_model_files(directory, fix)
    check_tokenizer_file(directory, fix)


def check_model_files(directory: Path, fix: str = REPLACE_HINT) -> None:
    """``config.json`` and the safetensors weights are whole (:mod:`at2po.models.integrity`);
    else a ConfigError naming the file and ``fix``."""
    try:
        integrity.check_model_files(directory)
    except integrity.DamagedFile as damaged:
        raise ConfigError(f"{damaged}; {fix}") from None


def check_tokenizer_file(directory: Path, fix: str = REPLACE_HINT) -> None:
    """``tokenizer.json`` exists and is JSON; else a ConfigError naming it and ``fix``."""
    try:
        integrity.check_tokenizer_file(directory)
    except integrity.DamagedFile as damaged:
        raise ConfigError(f"{damaged}; {fix}") from None


def set_threads(cfg: ModelConfig) -> None:
    """Apply ``model.threads`` to the process (torch's intra-op thread pool)."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)


def device_and_dtype(cfg: ModelConfig) -> tuple[torch.device, torch.dtype]:
    """``model.device`` and ``model.dtype`` with ``auto`` resolved (CUDA + bfloat16 when there is
    a GPU, else CPU + float32)."""
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(cfg.device)
        except RuntimeError:
            raise ConfigError(f"model.device={cfg.device!r} is not a torch device") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("model.device=cuda but no GPU is visible; use model.device=cpu")
    if cfg.dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, _DTYPES[cfg.dtype]


def load_tokenizer(directory: Path) -> Any:
    """The tokenizer in ``directory`` (checked first: a ConfigError when ``tokenizer.json`` is
    missing or damaged), which must have a chat template."""
    check_tokenizer_file(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(
            f"the tokenizer in {directory} has no chat template; the agent's prompt needs one "
            "(use a chat/instruct model, or set tokenizer.chat_template and save it there)"
        )
    return tokenizer


def load_model(directory: Path, cfg: ModelConfig, trainable: bool = True) -> torch.nn.Module:
    """The causal LM in ``directory`` on ``model.device`` in ``model.dtype``, in eval mode; frozen
    unless ``trainable``. Damaged files are a ConfigError (:func:`check_model_files`)."""
    check_model_files(directory)
    device, dtype = device_and_dtype(cfg)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device).eval()
    model.requires_grad_(trainable)
    return model


def build_engine(model: torch.nn.Module, tokenizer: Any, section: RolloutSection) -> HFEngine:
    """The generation engine over ``model`` itself, so it always samples the current weights."""
    return HFEngine(
        model,
        tokenizer,
        max_batch_size=section.engine_batch_size,
        cache_capacity_tokens=section.prefix_cache_tokens,
        reuse_prefix_cache=section.prefix_cache_tokens > 0,
    )
