"""The task of a run, built from ``task.*``: question splits, a retriever and the search env.

Everything the user can get wrong here (a missing file, an unreachable retrieval server, a dense
retriever without its extra) is checked now, before any model is loaded or step is taken, and
stops the run with a :class:`~at2po.train.config.ConfigError` that says how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from at2po.tasks.datasets import QAExample, load_questions
from at2po.tasks.retrieval.base import Retriever
from at2po.tasks.retrieval.bm25 import BM25Retriever
from at2po.tasks.retrieval.corpus import Document, load_corpus
from at2po.tasks.retrieval.http_client import HTTPRetriever, RetrievalError, RetrieverUnavailable
from at2po.tasks.rewards import RewardConfig
from at2po.tasks.search_env import SearchEnvConfig, SearchQAEnv
from at2po.tasks.search_tool import SearchTool
from at2po.tasks.worlds.splits import build_splits, build_world_sets
from at2po.train.config import ConfigError, TaskConfig


@dataclass(frozen=True)
class Task:
    """The search environment and the questions of each split (``train``, ``dev``, ``test``)."""

    env: SearchQAEnv
    splits: dict[str, list[QAExample]]

    def split(self, name: str) -> list[QAExample]:
        if name not in self.splits:
            raise ConfigError(
                f"the task has no {name!r} split (it has {', '.join(self.splits)}); "
                f"give task.{name}_file or task.worlds.n_{name} > 0"
            )
        return self.splits[name]


def build_task(cfg: TaskConfig) -> Task:
    """Questions, retriever and env as ``cfg`` says (module docstring)."""
    if cfg.source == "game":
        return build_game_task(cfg)
    corpora: dict[str, list[Document]] = {}
    if cfg.source == "worlds":
        splits, documents, corpora = _world_splits(cfg)
    else:
        splits = _file_splits(cfg)
        documents = None if cfg.retriever == "http" else _corpus(cfg)

    def tool(docs: list[Document] | None) -> SearchTool:
        return SearchTool(
            _retriever(cfg, docs), topk=cfg.search_topk, max_chars=cfg.search_max_chars
        )

    env_cfg = SearchEnvConfig(
        max_tool_calls=cfg.max_tool_calls,
        max_turns=cfg.max_turns,
        reward=RewardConfig(
            scheme=cfg.reward, require_think=cfg.require_think, format_penalty=cfg.format_penalty
        ),
    )
    if corpora:
        tools = {name: tool(docs) for name, docs in corpora.items()}
        return Task(SearchQAEnv(next(iter(tools.values())), env_cfg, corpora=tools), splits)
    return Task(SearchQAEnv(tool(documents), env_cfg), splits)


def build_game_task(cfg: TaskConfig) -> Task:
    """The text game of ``cfg.game``: seeds ``0..n-1`` of each fold as the splits (held-out games
    are held-out seeds of the dev and test folds), one :class:`GameEnv` in this process's JVM."""
    try:
        from at2po.tasks.games import SMALL_SETTINGS, GameEnv, GameEnvConfig, GameExample
        from at2po.tasks.games.env import GameRewardConfig
        from at2po.tasks.games.jvm import find_java, twx_jar

        find_java(), twx_jar()
    except (ImportError, RuntimeError) as error:
        raise ConfigError(f"task.source=game: {error}") from None
    game = cfg.game
    params = game.params if game.params is not None else SMALL_SETTINGS[game.name]
    counts = {"train": game.n_train, "dev": game.n_dev, "test": game.n_test}
    splits = {
        fold: [GameExample(game.name, params, fold, seed) for seed in range(n)]
        for fold, n in counts.items()
    }
    env_cfg = GameEnvConfig(
        max_turns=cfg.max_turns,
        require_think=cfg.require_think,
        feedback=game.feedback,
        max_instances=game.max_instances,
        reward=GameRewardConfig(game.progress_weight, game.invalid_penalty),
    )
    env = GameEnv(env_cfg)
    try:
        env.reset(splits["train"][0])
    except ValueError as error:
        raise ConfigError(f"task.game.params={params!r}: {error}") from None
    return Task(env, splits)  # type: ignore[arg-type]


def _world_splits(
    cfg: TaskConfig,
) -> tuple[dict[str, list[QAExample]], list[Document], dict[str, list[Document]]]:
    """The splits, all documents, and (names=shared) each world's own corpus by world name."""
    worlds_cfg = cfg.worlds
    overrides = {}
    if worlds_cfg.question_mix is not None:
        overrides["question_mix"] = tuple(worlds_cfg.question_mix.items())
    if worlds_cfg.names == "partitioned":
        worlds = build_splits(
            worlds_cfg.seed, worlds_cfg.n_train, worlds_cfg.n_dev, worlds_cfg.n_test, **overrides
        )
        splits = {name: list(world.questions) for name, world in worlds.items()}
        documents = [doc for world in worlds.values() for doc in world.documents]
        return splits, documents, {}
    counts = {"train": worlds_cfg.n_train, "dev": worlds_cfg.n_dev, "test": worlds_cfg.n_test}
    sets = build_world_sets(
        worlds_cfg.seed,
        counts,
        worlds_cfg.questions_per_world,
        worlds_cfg.n_novel,
        **overrides,
    )
    splits = {name: [q for world in group for q in world.questions] for name, group in sets.items()}
    corpora = {
        world.config.name: list(world.documents) for group in sets.values() for world in group
    }
    documents = [doc for docs in corpora.values() for doc in docs]
    return splits, documents, corpora


def _file_splits(cfg: TaskConfig) -> dict[str, list[QAExample]]:
    files = {"train": cfg.train_file, "dev": cfg.dev_file, "test": cfg.test_file}
    splits = {}
    for split, path in files.items():
        if path is None:
            continue
        if not Path(path).is_file():
            raise ConfigError(
                f"task.{split}_file: {path} does not exist; write question files with "
                "`at2po worlds generate --out DIR` or point to your own JSONL/Parquet file"
            )
        try:
            splits[split] = load_questions(path)
        except ValueError as error:
            raise ConfigError(f"task.{split}_file: {error}") from None
    return splits


def _corpus(cfg: TaskConfig) -> list[Document]:
    try:
        return load_corpus(cfg.corpus_file)  # type: ignore[arg-type]
    except (OSError, ValueError) as error:
        raise ConfigError(f"task.corpus_file: {error}") from None


def _retriever(cfg: TaskConfig, documents: list[Document] | None) -> Retriever:
    if cfg.retriever == "bm25":
        return BM25Retriever(documents)  # type: ignore[arg-type]
    if cfg.retriever == "dense":
        try:
            from at2po.tasks.retrieval.dense import DenseRetriever
        except ImportError as error:
            raise ConfigError(f"task.retriever=dense: {error}") from None
        return DenseRetriever(documents)  # type: ignore[arg-type]
    check_server(cfg.retriever_url)
    return HTTPRetriever(cfg.retriever_url)


def check_server(url: str) -> None:
    """One probe query to the retrieval server; a ConfigError if it does not answer properly."""
    try:
        with HTTPRetriever(url, retries=0, timeout_s=5.0) as probe:
            probe.search(["probe"], 1)
    except RetrieverUnavailable as error:
        raise ConfigError(
            f"task.retriever_url: {error}. Or set task.retriever=bm25 to search in process."
        ) from None
    except ValueError as error:
        raise ConfigError(f"task.retriever_url: {error}") from None
    except RetrievalError as error:
        raise ConfigError(
            f"task.retriever_url: {url} answered, but not as a Search-R1 /retrieve server "
            f"({error}); point it at `at2po retriever serve` or a compatible server"
        ) from None
