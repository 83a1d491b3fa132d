"""Expert demonstrations: the scripted expert playing the real search environment of a world.

Every demonstration is a finished :class:`EnvState` produced by the same ``SearchQAEnv``, search
tool and BM25 index that rollouts use, so the observations in a demonstration are exactly what the
policy will be shown.
"""

from __future__ import annotations

from collections.abc import Sequence

from at2po.tasks.datasets import QAExample
from at2po.tasks.retrieval.bm25 import BM25Retriever
from at2po.tasks.search_env import EnvState, SearchEnvConfig, SearchQAEnv
from at2po.tasks.search_tool import SearchTool
from at2po.tasks.worlds.expert import ExpertSolver, solve_batch
from at2po.tasks.worlds.generator import World


def world_env(
    world: World, env_config: SearchEnvConfig, *, topk: int = 3, max_chars: int = 500
) -> SearchQAEnv:
    """The search environment over ``world``'s corpus (BM25, ``topk`` passages per search)."""
    tool = SearchTool(BM25Retriever(world.documents), topk=topk, max_chars=max_chars)
    return SearchQAEnv(tool, env_config)


def worlds_env(
    worlds: Sequence[World], env_config: SearchEnvConfig, *, topk: int = 3, max_chars: int = 500
) -> SearchQAEnv:
    """One search environment over several worlds, each searched in its own corpus (a
    question's ``metadata["corpus"]`` names its world)."""
    if not worlds:
        raise ValueError("worlds_env() needs at least one world")
    tools = {
        w.config.name: SearchTool(BM25Retriever(w.documents), topk=topk, max_chars=max_chars)
        for w in worlds
    }
    return SearchQAEnv(next(iter(tools.values())), env_config, corpora=tools)


def demonstrations(
    env: SearchQAEnv, examples: Sequence[QAExample], expert: ExpertSolver, chunk: int = 256
) -> list[EnvState]:
    """The expert's finished episode for each example, in order (searches batched by ``chunk``)."""
    states: list[EnvState] = []
    for start in range(0, len(examples), chunk):
        episodes = solve_batch(env, examples[start : start + chunk], expert)
        states += [episode.state for episode in episodes]
    return states
