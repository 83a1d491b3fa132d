"""A scripted expert that answers world questions by searching, one turn at a time.

The expert follows a question's ``metadata["plan"]`` (see :mod:`at2po.tasks.worlds.questions`)
but knows nothing else about the world: each fact it uses must appear in the observations it was
shown. For a hop it searches ``"<subject> <label>"`` ("Maren Tolvik birthplace"), reads every
statement of the relation in all results so far (:func:`at2po.tasks.worlds.templates.read_facts`),
and keeps the one whose subject is exactly the hop's subject. A bridge entity's name therefore
comes from the retrieved text, never from the world. When a search does not show the fact, it
searches again with other words (the subject alone, then the subject with every word of the
relation's phrasings), at most ``max_searches_per_hop`` times; if the fact still has not
appeared it answers ``unknown``. It never guesses unless told to (``p_early_answer``).

:meth:`ExpertSolver.act` is a pure function of the example and the observations so far: it
replays the episode from the start, so the same inputs always give the same turn, and any prefix
of an episode (a branch of a turn tree) can be continued.

Imperfect demonstrations, for a mediocre warm-start policy, come from three seeded knobs, each
drawn independently per question and turn (``ExpertConfig``): ``p_early_answer`` (answer before
all facts are known, with a guess built from what was seen; only once something has been read),
``p_wrong_query`` (search for a confusable entity, or with a word of the subject missing) and
``p_distractor`` (take the value stated for a confusable subject, e.g. ``Marin Tolvik`` for
``Maren Tolvik``, when one is visible).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from at2po.tasks.datasets import QAExample
from at2po.tasks.search_env import EnvState, SearchQAEnv
from at2po.tasks.worlds.templates import (
    RELATIONS,
    WORK_KINDS,
    ReadFact,
    as_number,
    read_facts,
    render_fact,
)

UNKNOWN_ANSWER = "unknown"


@dataclass(frozen=True)
class ExpertConfig:
    """How the expert behaves. All zeros (the default) gives a careful, always-correct expert."""

    seed: int = 0
    """Seed of the imperfection draws (each is keyed by seed, question id and turn)."""
    p_early_answer: float = 0.0
    """Chance, per turn with facts still missing, of answering now with a guess built from what
    was read; never before the first search has returned a fact (a guess from nothing would be
    a fixed string, which a small policy trained on these episodes picks greedily)."""
    p_wrong_query: float = 0.0
    """Chance, per search, of searching a confusable entity or a truncated name instead."""
    p_distractor: float = 0.0
    """Chance, per hop, of taking a confusable subject's value when one is visible."""
    max_searches_per_hop: int = 3
    """On-target searches for one fact before giving up and answering ``unknown``."""
    max_searches: int = 6
    """Searches per episode (the environment's default tool-call limit); then it gives up."""

    def __post_init__(self) -> None:
        for name in ("p_early_answer", "p_wrong_query", "p_distractor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"ExpertConfig.{name} must lie in [0, 1], got {getattr(self, name)}"
                )
        for name in ("max_searches_per_hop", "max_searches"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"ExpertConfig.{name} must be at least 1, got {getattr(self, name)}"
                )


@dataclass(frozen=True)
class _Hop:
    subject: str
    subject_ref: int
    relation: str


@dataclass(frozen=True)
class _Plan:
    hops: tuple[_Hop, ...]
    op: str
    op_hops: tuple[int, ...]
    op_value: str


def _plan_of(example: QAExample) -> _Plan:
    try:
        plan = example.metadata["plan"]
        hops = tuple(_Hop(h["subject"], int(h["subject_ref"]), h["relation"]) for h in plan["hops"])
        combine = plan["combine"]
        result = _Plan(hops, combine["op"], tuple(combine["hops"]), combine["value"])
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"example {example.id!r} has no usable metadata['plan'] ({error!r}); the expert "
            "solves questions made by at2po.tasks.worlds"
        ) from error
    unknown = [hop.relation for hop in hops if hop.relation not in RELATIONS]
    if unknown:
        raise ValueError(f"example {example.id!r}: unknown relations {unknown} in its plan")
    return result


def _confusable(a: str, b: str) -> bool:
    """Names a hurried reader mixes up: as many words, exactly one differing, and if they are
    single words, one letter apart. ``Maren Tolvik`` / ``Dag Tolvik``, ``Maren Tolvik`` /
    ``Marin Tolvik``, ``Velmora Press`` / ``Velmora Labs``, ``Velmora`` / ``Valmora``.
    """
    words_a, words_b = a.split(" "), b.split(" ")
    if len(words_a) != len(words_b) or a == b:
        return False
    differing = [(x, y) for x, y in zip(words_a, words_b, strict=True) if x != y]
    if len(differing) != 1:
        return False
    if len(words_a) > 1:
        return True
    x, y = differing[0]
    return len(x) == len(y) and sum(p != q for p, q in zip(x, y, strict=True)) == 1


@dataclass(frozen=True)
class _Reading:
    """What the expert knows after some observations: the values of the hops resolved so far,
    every fact seen, and how many on-target searches it made for the current hop."""

    values: tuple[str, ...]
    facts: tuple[ReadFact, ...]
    searches_for_hop: int


class ExpertSolver:
    """Writes agent turns (``<think>…</think>`` then ``<search>…</search>`` or
    ``<answer>…</answer>``) for questions generated by :mod:`at2po.tasks.worlds`."""

    def __init__(self, config: ExpertConfig | None = None) -> None:
        self.config = config or ExpertConfig()

    def act(self, example: QAExample, observations: Sequence[str]) -> str:
        """The next turn for ``example`` after ``observations`` (the texts the environment
        appended after each earlier turn, in order)."""
        plan = _plan_of(example)
        reading = self._read(example, plan, observations)
        step = len(observations)
        if len(reading.values) == len(plan.hops):
            answer = _final_answer(plan, reading.values)
            return _answer_turn(f"{_known(plan, reading)} So the answer is {answer}.", answer)
        hop = plan.hops[len(reading.values)]
        subject = _subject(hop, reading.values)
        if step >= self.config.max_searches or (
            reading.searches_for_hop >= self.config.max_searches_per_hop
        ):
            missing = f"the {RELATIONS[hop.relation].label} of {_mention(hop, subject)}"
            return _answer_turn(f"The results never state {missing}.", UNKNOWN_ANSWER)
        if reading.facts and self._draw(example, "early", step) < self.config.p_early_answer:
            guess = self._guess(example, plan, reading, step)
            return _answer_turn(f"{_known(plan, reading)} I will answer {guess}.", guess)
        return self._search_turn(example, plan, reading, step)

    def _draw(self, example: QAExample, purpose: str, index: int) -> float:
        """A uniform number fixed by (seed, question, purpose, index): replays agree."""
        return random.Random(f"{self.config.seed}|{example.id}|{purpose}|{index}").random()

    def _wrong_query_at(self, example: QAExample, step: int) -> bool:
        return self._draw(example, "wrong_query", step) < self.config.p_wrong_query

    def _resolve(
        self, example: QAExample, plan: _Plan, values: list[str], facts: list[ReadFact]
    ) -> str | None:
        """The value of the next hop from the facts seen, or None if it is not visible yet."""
        hop_index = len(values)
        hop = plan.hops[hop_index]
        subject = _subject(hop, values)
        stated = [f for f in facts if f.relation == hop.relation]
        confusable = [f for f in stated if _confusable(f.subject, subject)]
        if confusable and self._draw(example, "distractor", hop_index) < self.config.p_distractor:
            return confusable[0].value
        exact = [f.value for f in stated if f.subject == subject]
        return exact[0] if exact else None

    def _read(self, example: QAExample, plan: _Plan, observations: Sequence[str]) -> _Reading:
        """Replay the episode: after each observation, resolve every hop that became visible."""
        relations = {hop.relation for hop in plan.hops}
        values: list[str] = []
        facts: list[ReadFact] = []
        hop_started = 0
        for step in range(len(observations) + 1):
            if step:
                text = observations[step - 1]
                facts.extend(fact for r in relations for fact in read_facts(text, r))
            while len(values) < len(plan.hops):
                value = self._resolve(example, plan, values, facts)
                if value is None:
                    break
                values.append(value)
                hop_started = step
        on_target = sum(
            not self._wrong_query_at(example, step)
            for step in range(hop_started, len(observations))
        )
        return _Reading(tuple(values), tuple(facts), on_target)

    def _guess(self, example: QAExample, plan: _Plan, reading: _Reading, step: int) -> str:
        """An answer without all facts: yes/no or one of the compared names at random, else a
        value of the final relation seen for any subject, else the last value found."""
        rng = random.Random(f"{self.config.seed}|{example.id}|guess|{step}")
        if plan.op in ("same", "equals"):
            return rng.choice(("yes", "no"))
        if plan.op in ("argmin", "argmax"):
            return plan.hops[rng.choice(plan.op_hops)].subject
        final_relation = plan.hops[-1].relation
        seen = [f.value for f in reading.facts if f.relation == final_relation]
        if seen:
            return rng.choice(seen)
        return reading.values[-1] if reading.values else UNKNOWN_ANSWER

    def _query(self, example: QAExample, plan: _Plan, reading: _Reading, step: int) -> str:
        """``subject label`` ("Maren Tolvik birthplace"); on later tries the subject alone, then
        the subject with every word of the relation's phrasings. A wrong query names a
        confusable subject seen so far, or drops a word of the subject."""
        hop = plan.hops[len(reading.values)]
        subject = _subject(hop, reading.values)
        relation = RELATIONS[hop.relation]
        if self._wrong_query_at(example, step):
            others = sorted({f.subject for f in reading.facts if _confusable(f.subject, subject)})
            if others:
                return f"{others[0]} {relation.keywords}"
            words = subject.split(" ")
            return f"{' '.join(words[1:] or words)} {relation.keywords}"
        if reading.searches_for_hop == 0:
            return f"{subject} {relation.label}"
        if reading.searches_for_hop == 1:
            return subject
        return f"{subject} {relation.keywords}"

    def _search_turn(self, example: QAExample, plan: _Plan, reading: _Reading, step: int) -> str:
        hop = plan.hops[len(reading.values)]
        subject = _mention(hop, _subject(hop, reading.values))
        need = f"I need the {RELATIONS[hop.relation].label} of {subject}."
        if reading.searches_for_hop:
            need = f"The results do not state it. {need}"
        elif reading.values:
            need = f"{_statement(plan, reading, len(reading.values) - 1)} {need}"
        query = self._query(example, plan, reading, step)
        return f"<think>{need}</think>\n<search>{query}</search>"


def _subject(hop: _Hop, values: Sequence[str]) -> str:
    return hop.subject if hop.subject_ref < 0 else values[hop.subject_ref]


def _mention(hop: _Hop, subject: str) -> str:
    """The subject as the corpus writes it (titles in quotes)."""
    return f'"{subject}"' if RELATIONS[hop.relation].subject_kinds[0] in WORK_KINDS else subject


def _statement(plan: _Plan, reading: _Reading, hop_index: int) -> str:
    """The fact found by one hop, as a sentence in the relation's first phrasing."""
    hop = plan.hops[hop_index]
    subject = _mention(hop, _subject(hop, reading.values))
    return render_fact(RELATIONS[hop.relation].phrasings[0], subject, reading.values[hop_index])


def _known(plan: _Plan, reading: _Reading) -> str:
    return " ".join(_statement(plan, reading, i) for i in range(len(reading.values)))


def _answer_turn(reason: str, answer: str) -> str:
    return f"<think>{reason.strip()}</think>\n<answer>{answer}</answer>"


def _final_answer(plan: _Plan, values: Sequence[str]) -> str:
    """Combine the hop values as the plan says (see :mod:`at2po.tasks.worlds.questions`)."""
    if plan.op == "last":
        return values[plan.op_hops[0]]
    if plan.op in ("argmin", "argmax"):
        first, second = plan.op_hops
        first_smaller = as_number(values[first]) < as_number(values[second])
        pick_first = first_smaller == (plan.op == "argmin")
        return plan.hops[first if pick_first else second].subject
    if plan.op == "same":
        first, second = plan.op_hops
        return "yes" if values[first] == values[second] else "no"
    if plan.op == "equals":
        return "yes" if values[plan.op_hops[0]] == plan.op_value else "no"
    raise ValueError(f"unknown plan combine op {plan.op!r}")


@dataclass(frozen=True)
class ExpertEpisode:
    """One expert episode: the final environment state, the turns it wrote and its reward."""

    state: EnvState
    turns: tuple[str, ...]
    reward: float
    scores: dict[str, Any]


def solve(
    env: SearchQAEnv, example: QAExample, expert: ExpertSolver | None = None
) -> ExpertEpisode:
    """Drive ``env`` on ``example`` with the expert until the episode ends; score it."""
    return solve_batch(env, [example], expert)[0]


def solve_batch(
    env: SearchQAEnv, examples: Sequence[QAExample], expert: ExpertSolver | None = None
) -> list[ExpertEpisode]:
    """Like :func:`solve` for many examples in lockstep: each round's searches go to the
    retriever in one batch (:meth:`SearchQAEnv.step_batch`)."""
    expert = expert or ExpertSolver()
    states = [env.reset(example) for example in examples]
    observations: list[list[str]] = [[] for _ in examples]
    turns: list[list[str]] = [[] for _ in examples]
    running = list(range(len(examples)))
    while running:
        texts = [expert.act(examples[i], observations[i]) for i in running]
        outcomes = env.step_batch([states[i] for i in running], texts)
        still_running = []
        for i, text, outcome in zip(running, texts, outcomes, strict=True):
            states[i] = outcome.state
            turns[i].append(text)
            if not outcome.done:
                observations[i].append(outcome.observation or "")
                still_running.append(i)
        running = still_running
    episodes = []
    for state, episode_turns in zip(states, turns, strict=True):
        result = env.reward(state)
        episodes.append(ExpertEpisode(state, tuple(episode_turns), result.reward, result.scores))
    return episodes
