"""The generation round shared by every rollout: one batched engine call, then the tools.

A *pending turn* is a turn about to be generated: where it hangs in its tree, the observation that
precedes it, its full context ids and the environment state before it. One round sends every pending
turn of every tree to the engine as one batch, appends each result to its tree as a new node,
runs the tool calls of the round (one batched env step, or one thread per step), and returns the
turns that continue (one per observation).

What ends a trajectory (the node becomes a leaf, with its ``finish``):

| event | finish |
|---|---|
| the env says done after a final answer | ``answer`` |
| the env says done after an EOS / the turn limit | ``eos`` / ``length`` |
| the response or context budget cannot hold the observation plus a minimal turn | ``length`` |
| the env step of this turn raised or outlived ``tool_timeout_s`` | ``error`` |

Tool calls the env refused (empty query, call limit, unknown tag …) are observations, not ends: the
env decides (``SearchQAEnv`` turns agent mistakes into observations and ends at its step limit).

T²PO (``RolloutConfig.tti`` / ``tds`` / ``record_uncertainty``): each request carries the
trajectory's running min–max bounds (kept per node in :attr:`TreeState.bounds`, from the accepted
draw of each turn) and, with TTI, the env's forced ids (:func:`intervention_ids`). With TDS, a
round's turns whose progress Γ = |Φ − Φ_prev| against the parent turn's accepted Φ is below η
are drawn again, in one batched engine call per retry, before the env steps; a turn keeps its
last draw after ``tds_max_redraws`` redraws. First turns have no Φ_prev and are never redrawn.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from at2po.core.tree import Node, TurnTree
from at2po.core.uncertainty import FRESH_BOUNDS, needs_redraw, turn_progress, turn_score
from at2po.rollout.codec import Codec
from at2po.rollout.config import RolloutConfig
from at2po.rollout.engine import (
    FINISH_LENGTH,
    FINISH_STOP_TOKEN,
    Engine,
    GenerationRequest,
    GenerationResult,
)

MIN_TURN_TOKENS = 8
"""Observations are cut so this many tokens (or the turn budget, if smaller) remain for a turn."""


@dataclass
class TreeState:
    """A tree under construction and what the rollout needs beside it.

    ``env_states[n]`` is the environment state after node n's step (for the root: after reset), so
    the state before any node's turn is its parent's entry. ``bounds[n]`` is the trajectory's
    running (H_min, H_max, C_min, C_max) after node n's turn (T²PO; absent: fresh).
    """

    example: Any
    tree: TurnTree
    env_states: dict[int, Any]
    bounds: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class PendingTurn:
    """A turn about to be generated under ``parent`` of tree ``tree_index``."""

    tree_index: int
    parent: int
    obs_ids: tuple[int, ...]
    context_ids: tuple[int, ...]
    response_len: int
    seed: int


@dataclass
class RoundStats:
    """Counters accumulated over the rounds of one rollout."""

    generated_tokens: int = 0
    prefill_tokens: int = 0
    cached_tokens: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    tool_failures: int = 0
    rounds: int = 0
    requests: int = 0
    seconds_generate: float = 0.0
    seconds_tools: float = 0.0
    new_nodes: list[tuple[int, int]] = field(default_factory=list)
    tds_eligible: int = 0
    tds_redrawn_turns: int = 0
    tds_redraws: int = 0
    tds_redraw_tokens: int = 0


class TurnRunner:
    """Runs generation rounds for pending turns over a list of :class:`TreeState`."""

    def __init__(
        self,
        engine: Engine,
        codec: Codec,
        env: Any,
        cfg: RolloutConfig,
        pool: ThreadPoolExecutor,
        seed_rng: random.Random,
    ) -> None:
        self.engine, self.codec, self.env, self.cfg = engine, codec, env, cfg
        self.pool, self.seed_rng = pool, seed_rng
        self.stats = RoundStats()
        self.forced_ids, self.think_start_id = (
            intervention_ids(codec, env) if cfg.tti else ((), None)
        )

    # -------------------------------------------------------------- pending turns
    def first_turn(self, tree_index: int, trees: Sequence[TreeState]) -> PendingTurn:
        """A new first turn of ``trees[tree_index]`` (a child of the root)."""
        return self._pending(tree_index, 0, (), tuple(trees[tree_index].tree.prompt_ids), 0)

    def resample(self, tree_index: int, node_id: int, trees: Sequence[TreeState]) -> PendingTurn:
        """A new sibling that re-generates node ``node_id``'s turn from that turn's context.

        Picking the root (as expansion may) starts a new first turn.
        """
        tree = trees[tree_index].tree
        node = tree.nodes[node_id]
        if node.parent is None:
            return self.first_turn(tree_index, trees)
        context, response_len = self._context(tree, node.parent)
        return self._pending(
            tree_index,
            node.parent,
            tuple(node.obs_ids),
            context + tuple(node.obs_ids),
            response_len + len(node.obs_ids),
        )

    def branch(self, p: PendingTurn) -> PendingTurn:
        """A copy of pending turn ``p`` with its own random stream (a new sibling turn)."""
        return replace(p, seed=self.seed_rng.randrange(2**31))

    def _pending(
        self, tree_index: int, parent: int, obs: tuple[int, ...], context: tuple[int, ...], n: int
    ) -> PendingTurn:
        return PendingTurn(tree_index, parent, obs, context, n, self.seed_rng.randrange(2**31))

    @staticmethod
    def _context(tree: TurnTree, node_id: int) -> tuple[tuple[int, ...], int]:
        """Prompt + response ids up to the end of ``node_id``'s turn, and the response length."""
        if node_id == 0:
            return tuple(tree.prompt_ids), 0
        ids, _, _ = tree.row_tokens(node_id)
        return tuple(tree.prompt_ids) + tuple(ids), len(ids)

    # -------------------------------------------------------------------- rounds
    def run(self, pending: list[PendingTurn], trees: Sequence[TreeState]) -> None:
        """Generate until every pending turn and its continuations have finished."""
        while pending:
            pending = self.round(pending, trees)

    def round(self, pending: list[PendingTurn], trees: Sequence[TreeState]) -> list[PendingTurn]:
        """One batched generation call and the tool calls it triggers; returns the next turns."""
        requests = [self._request(p, trees) for p in pending]
        start = time.perf_counter()
        results = self.engine.generate(requests)
        redraws = [0] * len(pending)
        if self.cfg.tds:
            results, redraws = self._redraw_stagnant(pending, requests, results, trees)
        self.stats.seconds_generate += time.perf_counter() - start
        self.stats.rounds += 1
        self.stats.requests += len(requests)

        start = time.perf_counter()
        for res in results:
            self.stats.generated_tokens += len(res.token_ids)
            self.stats.prefill_tokens += res.prefill_tokens
            self.stats.cached_tokens += res.cached_tokens
        texts = [self.codec.decode(res.token_ids) for res in results]
        states = [trees[p.tree_index].env_states[p.parent] for p in pending]
        cut = [
            res.finish_reason == FINISH_LENGTH and self._room(p, res) <= self._reserve
            for p, res in zip(pending, results, strict=True)
        ]
        stepping = [i for i, c in enumerate(cut) if not c]
        outcomes = self._step([states[i] for i in stepping], [texts[i] for i in stepping])
        outcome_of = dict(zip(stepping, outcomes, strict=True))
        follow: list[PendingTurn] = []
        for i, (p, res) in enumerate(zip(pending, results, strict=True)):
            entry = trees[p.tree_index]
            node = entry.tree.add_child(
                p.parent, obs_ids=p.obs_ids, act_ids=res.token_ids, act_logprobs=res.logprobs
            )
            _record_t2po(node, res, redraws[i])
            if res.bounds is not None:
                entry.bounds[node.id] = res.bounds
            self.stats.new_nodes.append((p.tree_index, node.id))
            outcome = outcome_of.get(i)
            if cut[i]:
                node.finish = "length"
                entry.env_states[node.id] = self.env.end_episode(states[i], texts[i], "length")
            elif outcome is None:
                node.finish = "error"
                entry.env_states[node.id] = self.env.end_episode(states[i], texts[i], "error")
            else:
                entry.env_states[node.id] = outcome.state
                node.finish = _finish_of(res.finish_reason, outcome)
                node.invalid = outcome.info.get("action") == "invalid"
                self.stats.tool_failures += bool(outcome.info.get("tool_failed"))
            if node.finish != "tool_call":
                self._score_leaf(entry, node.id)
                continue
            self.stats.tool_calls += 1
            nxt = self._after_observation(p, node.id, res.token_ids, outcome.observation)
            if nxt is None:
                node.finish = "length"
                self._score_leaf(entry, node.id)
            else:
                follow.append(nxt)
        self.stats.seconds_tools += time.perf_counter() - start
        return follow

    def _request(self, p: PendingTurn, trees: Sequence[TreeState]) -> GenerationRequest:
        """The engine request of pending turn ``p`` (with T²PO's settings when asked for)."""
        cfg = self.cfg
        uncertainty = intervention = None
        if cfg.wants_uncertainty:
            bounds = trees[p.tree_index].bounds.get(p.parent, FRESH_BOUNDS)
            uncertainty = cfg.uncertainty_spec(bounds)
        if cfg.tti:
            intervention = cfg.intervention_spec(self.forced_ids, self.think_start_id)
        return GenerationRequest(
            prompt_ids=p.context_ids,
            max_new_tokens=self._budget(p),
            stop_strings=tuple(self.env.stop_strings),
            stop_token_ids=self.codec.stop_token_ids,
            sampling=cfg.sampling,
            seed=p.seed,
            return_entropy=cfg.record_entropy,
            uncertainty=uncertainty,
            intervention=intervention,
        )

    def _redraw_stagnant(
        self,
        pending: Sequence[PendingTurn],
        requests: Sequence[GenerationRequest],
        results: list[GenerationResult],
        trees: Sequence[TreeState],
    ) -> tuple[list[GenerationResult], list[int]]:
        """TDS: draw again, from the same state and bounds, every turn whose Γ stays below η.

        Returns the kept draw of every turn and how many draws of it were discarded.
        """
        cfg = self.cfg
        previous = [_accepted_score(trees[p.tree_index].tree, p.parent) for p in pending]
        eligible = [i for i, score in enumerate(previous) if score is not None]
        self.stats.tds_eligible += len(eligible)
        results, redraws = list(results), [0] * len(pending)

        def stagnant(i: int) -> bool:
            progress = turn_progress(result_score(results[i]), previous[i])  # type: ignore[arg-type]
            return needs_redraw(progress, cfg.tds_eta, redraws[i], cfg.tds_max_redraws)

        todo = [i for i in eligible if stagnant(i)]
        self.stats.tds_redrawn_turns += len(todo)
        while todo:
            again = self.engine.generate(
                [replace(requests[i], seed=self.seed_rng.randrange(2**31)) for i in todo]
            )
            for i, result in zip(todo, again, strict=True):
                discarded = len(results[i].token_ids)
                self.stats.generated_tokens += discarded
                self.stats.tds_redraw_tokens += discarded
                results[i] = result
                redraws[i] += 1
            self.stats.tds_redraws += len(todo)
            todo = [i for i in todo if stagnant(i)]
        return results, redraws

    def _step(self, states: list[Any], texts: list[str]) -> list[Any]:
        """Step the environment for one round's turns within ``tool_timeout_s``.

        An env with ``step_batch`` answers the whole round in one call (``SearchQAEnv`` sends
        its searches to the retriever as one batch). When that call raises or outlives the
        limit, or the env has no ``step_batch``, every turn is stepped on its own thread of the
        pool, all under one deadline: only the turns whose own step raised or is still running
        at the deadline end with ``error`` (``None`` here); the others go on.
        """
        if not states:
            return []
        step_batch = getattr(self.env, "step_batch", None)
        if step_batch is not None:
            future = self.pool.submit(step_batch, states, texts)
            try:
                return list(future.result(timeout=self.cfg.tool_timeout_s))
            except Exception:  # find the faulty turns below instead of failing them all
                future.cancel()
        return self._step_each(states, texts)

    def _step_each(self, states: list[Any], texts: list[str]) -> list[Any]:
        futures = [
            self.pool.submit(self.env.step, s, t) for s, t in zip(states, texts, strict=True)
        ]
        deadline = time.monotonic() + self.cfg.tool_timeout_s
        outcomes: list[Any] = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
            except Exception:  # a tool fault ends this trajectory; it must not crash the batch
                future.cancel()
                self.stats.tool_errors += 1
                outcomes.append(None)
        return outcomes

    @property
    def _reserve(self) -> int:
        return min(MIN_TURN_TOKENS, self.cfg.max_turn_tokens)

    def _room(self, p: PendingTurn, res: Any) -> int:
        """Tokens left for observations and turns after this result."""
        n = len(res.token_ids)
        return min(
            self.cfg.max_response_tokens - p.response_len - n,
            self.cfg.max_context_tokens - len(p.context_ids) - n,
        )

    def _budget(self, p: PendingTurn) -> int:
        cfg = self.cfg
        room = min(
            cfg.max_turn_tokens,
            cfg.max_response_tokens - p.response_len,
            cfg.max_context_tokens - len(p.context_ids),
        )
        return max(1, room)

    def _after_observation(
        self, p: PendingTurn, node_id: int, act_ids: Sequence[int], observation: str
    ) -> PendingTurn | None:
        """The next turn after an observation (cut to fit), or ``None`` when none fits."""
        room = min(
            self.cfg.max_response_tokens - p.response_len - len(act_ids),
            self.cfg.max_context_tokens - len(p.context_ids) - len(act_ids),
        )
        if room <= self._reserve:
            return None
        obs = tuple(self.codec.encode_observation(observation)[: room - self._reserve])
        return self._pending(
            p.tree_index,
            node_id,
            obs,
            p.context_ids + tuple(act_ids) + obs,
            p.response_len + len(act_ids) + len(obs),
        )

    def _score_leaf(self, entry: TreeState, node_id: int) -> None:
        result = self.env.reward(entry.env_states[node_id])
        node = entry.tree.nodes[node_id]
        node.reward = float(result.reward)
        node.scores = {k: float(v) for k, v in result.scores.items()}


def intervention_ids(codec: Codec, env: Any) -> tuple[tuple[int, ...], int | None]:
    """The ids TTI forces and the id that opens thinking, from the env's T²PO attributes.

    An environment that supports TTI provides ``think_tags`` (the opening and closing tags of
    its thinking block, e.g. ``("<think>", "</think>")``; the opening one may be ``None`` when a
    turn starts in thinking) and ``intervention_text``: the closing tag followed by the format's
    structural tokens (search: ``"</think>\n"``; game: ``"</think>\n<action>"``). Each tag must
    be a single token of the tokenizer.
    """
    name = type(env).__name__
    text = getattr(env, "intervention_text", None)
    tags = getattr(env, "think_tags", None)
    if not text or not tags:
        raise ValueError(
            f"{name} has no intervention_text/think_tags, which TTI needs; set rollout.tti=false "
            "or give the environment both (e.g. '</think>\n' and ('<think>', '</think>'))"
        )
    open_tag, close_tag = tags
    if not text.startswith(close_tag):
        raise ValueError(f"{name}.intervention_text {text!r} must start with {close_tag!r}")
    close_ids = codec.encode_observation(close_tag)
    open_ids = codec.encode_observation(open_tag) if open_tag is not None else [None]
    for tag, ids in ((close_tag, close_ids), (open_tag, open_ids)):
        if len(ids) != 1:
            raise ValueError(
                f"the tokenizer splits the thinking tag {tag!r} into {len(ids)} tokens; TTI needs "
                "it as one token (add it as a special token) or rollout.tti=false"
            )
    tail = codec.encode_observation(text[len(close_tag) :])
    return (close_ids[0], *tail), open_ids[0]


def result_score(result: GenerationResult) -> float:
    """Φ of a generated turn: the floored geometric mean of M_t over its sampled tokens."""
    m_T = torch.tensor(result.uncertainty or (), dtype=torch.float64)
    sampled_T = ~torch.tensor(result.forced_mask, dtype=torch.bool)
    return turn_score(m_T, sampled_T)


def _accepted_score(tree: TurnTree, node_id: int) -> float | None:
    """Φ of the accepted turn ``node_id`` (None for the root or when it has none)."""
    return None if node_id == 0 else tree.nodes[node_id].turn_score


def _record_t2po(node: Node, result: GenerationResult, redraws: int) -> None:
    """Store the result's forced mask, M_t, Φ, intervention and redraw count on its node."""
    if any(result.forced_mask):
        node.act_forced = list(result.forced_mask)
    if result.uncertainty is not None:
        node.act_uncertainty = [None if math.isnan(m) else m for m in result.uncertainty]
        score = result_score(result)
        node.turn_score = None if math.isnan(score) else score
    node.intervention = result.intervention
    node.redraws = redraws


def _finish_of(engine_finish: str, outcome: Any) -> str:
    """The tree's finish label for a stepped turn (see the module docstring's table)."""
    if not outcome.done:
        return "tool_call"
    if outcome.info.get("finish") == "answer":
        return "answer"
    if engine_finish == FINISH_STOP_TOKEN:
        return "eos"
    return "length"
