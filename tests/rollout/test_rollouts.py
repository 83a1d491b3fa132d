"""Chain, tree and branching rollouts on the tiny model, a real BM25 index and the search env."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import replace

import pytest
import torch

from at2po.core.expansion import select_expansion_nodes
from at2po.core.tree import TurnTree
from at2po.rollout.codec import Codec
from at2po.rollout.config import RolloutConfig
from at2po.rollout.engine import GenerationRequest, GenerationResult
from at2po.rollout.hf_engine import HFEngine
from at2po.rollout.rollouts import rollout
from at2po.tasks.datasets import QAExample
from at2po.tasks.retrieval.base import Passage
from at2po.tasks.retrieval.bm25 import BM25Retriever
from at2po.tasks.retrieval.corpus import Document
from at2po.tasks.search_env import SearchEnvConfig, SearchQAEnv
from at2po.tasks.search_tool import SearchTool

# Renders only the question: the tiny tokenizer would spend ~750 tokens on the instruction.
CHAT_TEMPLATE = (
    "{{ messages[-1]['content'] }}\n{% if add_generation_prompt %}assistant: {% endif %}"
)
SMALL = dict(max_turn_tokens=16, max_response_tokens=80, max_context_tokens=4096)


@pytest.fixture(scope="module")
def parts(tiny_lm):
    model, tokenizer = tiny_lm
    tokenizer.chat_template = CHAT_TEMPLATE
    documents = [
        Document(f"d{i}", f'"River {i}"\nThe river {i} flows through the city of paris in france.')
        for i in range(40)
    ]
    env = SearchQAEnv(SearchTool(BM25Retriever(documents)), SearchEnvConfig(max_tool_calls=3))
    examples = [
        QAExample(f"q{i}", f"Where does river {i} flow?", ("france",), "toy", {}) for i in range(2)
    ]
    return HFEngine(model, tokenizer), Codec.from_tokenizer(tokenizer), env, examples, model


def _teacher_forced_logprobs(model, tree: TurnTree, leaf: int) -> tuple[list[float], list[float]]:
    """(recorded, recomputed) log-probs of the sampled tokens of one row."""
    ids, mask, recorded = tree.row_tokens(leaf)
    full = torch.tensor([tree.prompt_ids + ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(full).logits[0, :-1].float(), dim=-1)
    targets = full[0, 1:]
    token_logp = logp.gather(1, targets[:, None])[:, 0][len(tree.prompt_ids) - 1 :]
    picked = [float(token_logp[t]) for t, m in enumerate(mask) if m]
    return [x for x, m in zip(recorded, mask, strict=True) if m], picked


@pytest.mark.parametrize("seed", [3, 4, 5])
@pytest.mark.parametrize("mode", ["chain", "tree", "branching"])
def test_rows_logprobs_and_masks(parts, mode, seed):
    engine, codec, env, examples, model = parts
    cfg = RolloutConfig(
        mode=mode, n_rows=5, n_chains=3, expansion_rounds=1, expansion_k=2, seed=seed, **SMALL
    )
    out = rollout(engine, codec, env, examples, cfg)
    assert len(out.groups) == len(examples)
    for group in out.groups:
        tree = group.tree
        assert len(group.row_leaves) == cfg.n_rows
        for leaf in group.row_leaves:
            assert tree.is_leaf(leaf)
            assert tree.nodes[leaf].reward is not None
            ids, mask, _ = tree.row_tokens(leaf)
            path = tree.path(leaf)[1:]
            assert ids == [t for n in path for t in tree.nodes[n].obs_ids + tree.nodes[n].act_ids]
            assert mask == [
                m
                for n in path
                for m in [0] * len(tree.nodes[n].obs_ids) + [1] * len(tree.nodes[n].act_ids)
            ]
            assert len(ids) <= cfg.max_response_tokens
            recorded, recomputed = _teacher_forced_logprobs(model, tree, leaf)
            assert max(abs(a - b) for a, b in zip(recorded, recomputed, strict=True)) <= 1e-4
        for node in tree.nodes[1:]:
            assert node.act_ids, "every turn samples at least one token"
            assert node.entropy == pytest.approx(-sum(node.act_logprobs) / len(node.act_ids))
            assert all(
                n.finish == "tool_call"
                for n in map(tree.nodes.__getitem__, tree.path(node.id)[1:-1])
            )
    assert out.metrics["rollout/rows"] == cfg.n_rows * len(examples)
    assert out.metrics["rollout/cached_tokens"] > 0


def test_same_seed_same_trees(parts):
    engine, codec, env, examples, _ = parts
    cfg = RolloutConfig(
        mode="tree", n_rows=5, n_chains=3, expansion_rounds=1, expansion_k=2, seed=7, **SMALL
    )
    first = rollout(engine, codec, env, examples, cfg)
    second = rollout(engine, codec, env, examples, cfg)
    assert [_shape(g.tree) for g in first.groups] == [_shape(g.tree) for g in second.groups]
    for a, b in zip(first.groups, second.groups, strict=True):
        # The second run reuses cached keys/values, so log-probs agree to float error, not bits.
        for node_a, node_b in zip(a.tree.nodes, b.tree.nodes, strict=True):
            assert node_a.act_logprobs == pytest.approx(node_b.act_logprobs, abs=1e-4)
    third = rollout(engine, codec, env, examples, replace(cfg, seed=8))
    assert [_shape(g.tree) for g in third.groups] != [_shape(g.tree) for g in first.groups]


def _shape(tree: TurnTree) -> list:
    """Everything of a tree but its float log-probs and entropies."""
    return [tree.prompt_ids] + [
        (n.parent, n.obs_ids, n.act_ids, n.finish, n.reward, n.scores) for n in tree.nodes
    ]


@pytest.mark.parametrize("expansion_mode", ["entropy", "random"])
def test_expansion_resamples_what_core_picks(parts, expansion_mode):
    """The first expansion round re-samples exactly the turns ``select_expansion_nodes`` picks."""
    engine, codec, env, examples, _ = parts
    k, m = 3, 3
    base = dict(mode="tree", n_chains=m, expansion_k=k, expansion_mode=expansion_mode, seed=11)
    chains = rollout(
        engine, codec, env, examples, RolloutConfig(n_rows=m, expansion_rounds=0, **base, **SMALL)
    )
    grown = rollout(
        engine,
        codec,
        env,
        examples,
        RolloutConfig(n_rows=m + k, expansion_rounds=1, **base, **SMALL),
    )
    pick_rng = _pick_rng(11)
    for before, after in zip(chains.groups, grown.groups, strict=True):
        n_before = len(before.tree)
        assert _shape(after.tree)[: n_before + 1] == _shape(before.tree)
        picks = select_expansion_nodes(before.tree, k, expansion_mode, pick_rng)
        new_first_turns = after.tree.nodes[n_before : n_before + k]
        for pick, new in zip(picks, new_first_turns, strict=True):
            picked = before.tree.nodes[pick]
            assert new.parent == (0 if picked.parent is None else picked.parent)
            assert new.obs_ids == picked.obs_ids


def _pick_rng(seed: int):
    """The expansion generator ``rollout`` derives from its seed (first draw of the seed stream)."""
    return random.Random(random.Random(seed).randrange(2**31))


class HangingRetriever:
    """A retriever whose service stopped answering: every search blocks for ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        time.sleep(self.seconds)
        return [[] for _ in queries]


class ReplayEngine:
    """An :class:`Engine` whose policy always writes ``text``: drives the env into its limits."""

    def __init__(self, tokenizer, text: str) -> None:
        self.ids = tuple(tokenizer.encode(text, add_special_tokens=False))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        out = []
        for r in requests:
            ids = self.ids[: r.max_new_tokens]
            finish = "stop_string" if len(ids) == len(self.ids) else "length"
            logprobs, forced = (-1.0,) * len(ids), (False,) * len(ids)
            out.append(
                GenerationResult(ids, logprobs, forced, finish, None, None, len(r.prompt_ids), 0)
            )
        return out


def test_hung_tool_becomes_an_observation(parts):
    _, codec, _, examples, _ = parts
    engine = ReplayEngine(codec.tokenizer, "<search>river 1</search>")
    env = SearchQAEnv(SearchTool(HangingRetriever(5.0), timeout_s=0.1, retries=0))
    out = rollout(engine, codec, env, examples[:1], RolloutConfig(mode="chain", n_rows=2))
    tree = out.groups[0].tree
    failed = [n for n in tree.nodes[1:] if n.obs_ids]
    assert failed and all("</result>" in codec.decode(n.obs_ids) for n in failed)
    assert all(tree.nodes[leaf].reward == -1.0 for leaf in out.groups[0].row_leaves)


def test_round_timeout_ends_trajectories_with_error(parts):
    _, codec, _, examples, _ = parts
    engine = ReplayEngine(codec.tokenizer, "<search>river 1</search>")
    env = SearchQAEnv(SearchTool(HangingRetriever(1.0), timeout_s=10.0, retries=0))
    cfg = RolloutConfig(mode="tree", n_rows=3, n_chains=2, expansion_k=1, tool_timeout_s=0.1)
    out = rollout(engine, codec, env, examples, cfg)
    assert out.metrics["rollout/tool_errors"] > 0
    for group in out.groups:
        assert len(group.row_leaves) == 3
        assert {group.tree.nodes[leaf].finish for leaf in group.row_leaves} == {"error"}


class OneBrokenQuestionEnv:
    """The search env, except that stepping question ``broken_id`` raises (a tool crash)."""

    def __init__(self, env: SearchQAEnv, broken_id: str) -> None:
        self.env, self.broken_id = env, broken_id

    def __getattr__(self, name):
        return getattr(self.env, name)

    def step(self, state, text):
        if state.example.id == self.broken_id:
            raise RuntimeError("tool crashed")
        return self.env.step(state, text)

    def step_batch(self, states, texts):
        return [self.step(s, t) for s, t in zip(states, texts, strict=True)]


def test_a_failing_step_ends_only_its_own_trajectories(parts):
    _, codec, env, examples, _ = parts
    engine = ReplayEngine(codec.tokenizer, "<search>river 1</search>")
    cfg = RolloutConfig(mode="chain", n_rows=2, **SMALL)
    out = rollout(engine, codec, OneBrokenQuestionEnv(env, examples[0].id), examples, cfg)
    broken, healthy = out.groups
    assert {broken.tree.nodes[leaf].finish for leaf in broken.row_leaves} == {"error"}
    assert "error" not in {healthy.tree.nodes[leaf].finish for leaf in healthy.row_leaves}
    assert all(len(healthy.tree.path(leaf)) > 2 for leaf in healthy.row_leaves)
    assert out.metrics["rollout/tool_errors"] == 2


def test_retriever_failures_are_counted(parts):
    _, codec, _, examples, _ = parts
    engine = ReplayEngine(codec.tokenizer, "<search>river 1</search>")
    env = SearchQAEnv(SearchTool(HangingRetriever(5.0), timeout_s=0.05, retries=0))
    cfg = RolloutConfig(mode="chain", n_rows=2, **SMALL)
    out = rollout(engine, codec, env, examples[:1], cfg)
    assert out.metrics["rollout/tool_failures"] == out.metrics["rollout/tool_calls"] > 0
    assert out.metrics["rollout/tool_errors"] == 0


def test_endless_tool_calls_end_at_the_turn_limit(parts):
    _, codec, env, examples, _ = parts
    engine = ReplayEngine(codec.tokenizer, "<search>river 1</search>")
    cfg = RolloutConfig(mode="chain", n_rows=2, max_response_tokens=3000, max_context_tokens=4096)
    out = rollout(engine, codec, env, examples[:1], cfg)
    tree = out.groups[0].tree
    for leaf in out.groups[0].row_leaves:
        assert tree.depth(leaf) == env.config.max_turns
        assert tree.nodes[leaf].finish == "length"
    assert out.metrics["rollout/tool_calls"] == 2 * (env.config.max_turns - 1)


def test_turn_cut_by_the_response_budget_ends_with_length(parts):
    _, codec, env, examples, _ = parts
    engine = ReplayEngine(codec.tokenizer, "thinking " * 40)
    cfg = RolloutConfig(mode="chain", n_rows=2, max_turn_tokens=64, max_response_tokens=20)
    out = rollout(engine, codec, env, examples[:1], cfg)
    for leaf in out.groups[0].row_leaves:
        node = out.groups[0].tree.nodes[leaf]
        assert node.finish == "length" and len(node.act_ids) == 20


def test_budgets_are_respected(parts):
    engine, codec, env, examples, _ = parts
    cfg = RolloutConfig(
        mode="chain",
        n_rows=4,
        seed=2,
        max_turn_tokens=8,
        max_response_tokens=30,
        max_context_tokens=4096,
    )
    out = rollout(engine, codec, env, examples, cfg)
    for group in out.groups:
        for node in group.tree.nodes[1:]:
            assert len(node.act_ids) <= cfg.max_turn_tokens
        for leaf in group.row_leaves:
            assert len(group.tree.row_tokens(leaf)[0]) <= cfg.max_response_tokens


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="rollout mode"):
        RolloutConfig(mode="beam")
    with pytest.raises(ValueError, match="max_response_tokens"):
        RolloutConfig(max_response_tokens=4096, max_context_tokens=2048)
    with pytest.raises(ValueError, match="expansion_mode"):
        RolloutConfig(expansion_mode="ucb")
