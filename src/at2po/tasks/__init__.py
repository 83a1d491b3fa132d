"""Environments and tools: search QA, synthetic worlds, retrievers, rewards, datasets.

The search-QA pieces, bottom up: :mod:`~at2po.tasks.datasets` (question files),
:mod:`~at2po.tasks.agent_format` (prompt, tags, parser), :mod:`~at2po.tasks.search_tool`
(retriever → observation), :mod:`~at2po.tasks.rewards` (EM/F1, format, schemes) and
:mod:`~at2po.tasks.search_env` (the environment). Retrievers live in :mod:`at2po.tasks.retrieval`,
synthetic worlds in :mod:`at2po.tasks.worlds`.
"""

from at2po.tasks.agent_format import (
    STOP_STRINGS,
    Action,
    ResponseReading,
    build_prompt_messages,
    check_response,
    count_tool_calls,
    extract_final_answer,
    format_observation,
    parse_action,
    read_response,
)
from at2po.tasks.datasets import DatasetError, QAExample, load_questions
from at2po.tasks.rewards import (
    REWARD_SCHEMES,
    RewardConfig,
    RewardResult,
    exact_match,
    format_valid,
    normalize_answer,
    score_response,
    token_f1,
)
from at2po.tasks.search_env import EnvState, SearchEnvConfig, SearchQAEnv, StepOutcome, Turn
from at2po.tasks.search_tool import SearchTool, ToolOutcome

__all__ = [
    "REWARD_SCHEMES",
    "STOP_STRINGS",
    "Action",
    "DatasetError",
    "EnvState",
    "QAExample",
    "ResponseReading",
    "RewardConfig",
    "RewardResult",
    "SearchEnvConfig",
    "SearchQAEnv",
    "SearchTool",
    "StepOutcome",
    "ToolOutcome",
    "Turn",
    "build_prompt_messages",
    "check_response",
    "count_tool_calls",
    "exact_match",
    "extract_final_answer",
    "format_observation",
    "format_valid",
    "load_questions",
    "normalize_answer",
    "parse_action",
    "read_response",
    "score_response",
    "token_f1",
]
