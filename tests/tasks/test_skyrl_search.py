"""An independent client: skyrl-gym's Search-R1 ``search`` environment against our server."""

from __future__ import annotations

import json

import pytest

from at2po.tasks.retrieval import BM25Retriever, Document
from at2po.tasks.retrieval.server import create_app, serve_in_background

search_env = pytest.importorskip(
    "skyrl_gym.envs.search.env", reason="needs skyrl-gym (the 'skyrl' extra)"
)

CORPUS = [
    Document("maren", '"Maren Tolvik"\nMaren Tolvik was born in Bergen and became a cartographer.'),
    Document("bergen", '"Bergen"\nBergen is a harbour city on the west coast of Norway.'),
    Document("oskar", '"Oskar Lindqvist"\nOskar Lindqvist composed operas in Uppsala.'),
    Document("uppsala", '"Uppsala"\nUppsala is a university town north of Stockholm.'),
]


@pytest.fixture(scope="module")
def search_url():
    app = create_app(BM25Retriever(CORPUS), kind="bm25", corpus_size=len(CORPUS))
    with serve_in_background(app) as base_url:
        yield f"{base_url}/retrieve"


def _env(search_url: str, answers: list[str]):
    config = search_env.SearchEnvConfig(
        search_url=search_url, topk=2, timeout=5, log_requests=False
    )
    extras = {"reward_spec": {"ground_truth": {"target": answers}}, "max_turns": 4}
    env = search_env.SearchEnv(config, extras)
    env.init([{"role": "user", "content": "In which country was Maren Tolvik born?"}])
    return env


def _search_results(observation: str) -> str:
    """skyrl wraps the tool's JSON text in <information> tags."""
    payload = observation.strip().removeprefix("<information>").removesuffix("</information>")
    return json.loads(payload)["result"]


@pytest.mark.parametrize(("final_answer", "reward"), [("Norway", 1.0), ("Sweden", 0.0)])
def test_skyrl_search_env_retrieves_through_our_server_and_scores(search_url, final_answer, reward):
    env = _env(search_url, ["Norway"])

    first = env.step("<think>Find her birthplace.</think><search>Maren Tolvik born</search>")
    assert not first["done"]
    results = _search_results(first["observations"][0]["content"])
    assert results.startswith(f"Doc 1: {CORPUS[0].contents}")

    second = env.step("<think>Which country is Bergen in?</think><search>Bergen city</search>")
    results = _search_results(second["observations"][0]["content"])
    assert results.startswith(f"Doc 1: {CORPUS[1].contents}")
    assert "Doc 2:" in results  # topk=2: Maren's page mentions Bergen too

    final = env.step(f"<think>Bergen is in Norway.</think><answer>{final_answer}</answer>")
    assert final["done"]
    assert final["reward"] == reward
