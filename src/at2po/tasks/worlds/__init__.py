"""Synthetic multi-hop QA worlds: invented knowledge bases, their corpus, questions, an expert.

    from at2po.tasks.worlds import WorldConfig, generate_world, build_splits, ExpertSolver

See ``docs/tasks.md`` (section "Synthetic worlds") for the question types and an example of each.
"""

from at2po.tasks.worlds.expert import (
    ExpertConfig,
    ExpertEpisode,
    ExpertSolver,
    solve,
    solve_batch,
)
from at2po.tasks.worlds.export import export_splits, write_questions_jsonl, write_questions_parquet
from at2po.tasks.worlds.generator import Entity, World, WorldConfig, generate_world
from at2po.tasks.worlds.questions import QUESTION_TYPES
from at2po.tasks.worlds.splits import SPLITS, build_splits

__all__ = [
    "QUESTION_TYPES",
    "SPLITS",
    "Entity",
    "ExpertConfig",
    "ExpertEpisode",
    "ExpertSolver",
    "World",
    "WorldConfig",
    "build_splits",
    "export_splits",
    "generate_world",
    "solve",
    "solve_batch",
    "write_questions_jsonl",
    "write_questions_parquet",
]
