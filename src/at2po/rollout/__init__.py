"""Rollouts: generation engines, chain and tree rollouts, T²PO controllers.

Rollouts talk to a model only through :class:`Engine`. The transformers engine lives in
:mod:`at2po.rollout.hf_engine` (``from at2po.rollout.hf_engine import HFEngine``); it is not
imported here so that importing the protocol does not load transformers.
"""

from at2po.rollout.engine import (
    FINISH_LENGTH,
    FINISH_REASONS,
    FINISH_STOP_STRING,
    FINISH_STOP_TOKEN,
    Engine,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    TokenHook,
)

__all__ = [
    "FINISH_LENGTH",
    "FINISH_REASONS",
    "FINISH_STOP_STRING",
    "FINISH_STOP_TOKEN",
    "Engine",
    "GenerationRequest",
    "GenerationResult",
    "SamplingParams",
    "TokenHook",
]
