"""A small world, its search environment, expert episodes and a tokenizer trained on them."""

from __future__ import annotations

import pytest

from at2po.models.demos import demonstrations, world_env
from at2po.models.tokenizer import train_tokenizer
from at2po.rollout.codec import Codec
from at2po.tasks.search_env import SearchEnvConfig
from at2po.tasks.worlds.expert import ExpertConfig, ExpertSolver
from at2po.tasks.worlds.generator import WorldConfig, generate_world


@pytest.fixture(scope="session")
def small_world():
    return generate_world(WorldConfig(seed=5, name="small", n_questions=24))


@pytest.fixture(scope="session")
def small_env(small_world):
    return world_env(small_world, SearchEnvConfig(max_tool_calls=4, max_turns=6))


@pytest.fixture(scope="session")
def episodes(small_world, small_env):
    """Finished expert episodes (a careful expert, so most end with an answer)."""
    return demonstrations(small_env, small_world.questions, ExpertSolver(ExpertConfig()))


@pytest.fixture(scope="session")
def codec(episodes):
    texts = [s.response_text for s in episodes] + [
        m["content"] for s in episodes for m in s.prompt_messages()
    ]
    return Codec.from_tokenizer(train_tokenizer(texts, vocab_size=600))
