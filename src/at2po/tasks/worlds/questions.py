"""Questions about a world, each with its golden answers and the plan that answers it.

Five types (``metadata["type"]``):

- ``single_hop``: one fact. "Where was Maren Tolvik born?"
- ``bridge``: two facts, the first naming the entity the second is about. "In which country is the
  birthplace of Maren Tolvik located?"
- ``chain``: three facts in a row. "What is the population of the city where the founder of
  Velmora Dynamics was born?"
- ``comparison``: the same fact about two entities, then a comparison: earlier/later, taller,
  larger ("Who was born earlier, A or B?", answer a name) or same-country ("Were A and B born in
  the same country?", answer yes/no; two or four facts).
- ``yes_no``: is a claimed value right? "Was Velmora Dynamics founded by Marin Tolvik?" (one or two
  facts; false claims favour confusable values such as a near-namesake).

``metadata["plan"]`` is what a solver does: ``hops``, a list of ``{"subject", "subject_ref",
"relation"}`` (``subject_ref`` ≥ 0 means "the value found by that earlier hop", −1 means the
literal ``subject``), then ``combine``, ``{"op", "hops", "value"}`` with op ``last`` (answer the
last hop's value), ``argmin``/``argmax`` (answer the subject of the hop whose numeric value is
smallest/largest), ``same`` (yes iff the listed hops found equal values) or ``equals`` (yes iff the
listed hop found ``value``). ``supporting_facts`` and ``supporting_docs`` name the facts the plan
reads and the documents stating them. Every row has the same metadata fields, so the questions fit
one Parquet schema.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from at2po.tasks.datasets import QAExample
from at2po.tasks.worlds.model import WorldView
from at2po.tasks.worlds.templates import ENTITY_KINDS, RELATIONS, WORK_KINDS, as_number

DATA_SOURCE = "worlds"
QUESTION_TYPES = ("single_hop", "bridge", "chain", "comparison", "yes_no")

_COMPARISONS: tuple[tuple[tuple[str, ...], str, str, tuple[str, ...]], ...] = (
    (("person",), "birth_year", "argmin", ("Who was born earlier, {a} or {b}?",
                                           "Who is older, {a} or {b}?")),
    (("person",), "birth_year", "argmax", ("Who was born later, {a} or {b}?",
                                           "Who is younger, {a} or {b}?")),
    (("person",), "height", "argmax", ("Who is taller, {a} or {b}?",)),
    (("person",), "height", "argmin", ("Who is shorter, {a} or {b}?",)),
    (("city",), "population", "argmax", ("Which city has the larger population, {a} or {b}?",
                                         "Which city is bigger by population, {a} or {b}?")),
    (("city",), "population", "argmin", ("Which city has the smaller population, {a} or {b}?",)),
    (("org",), "founding_year", "argmin", ("Which was founded first, {a} or {b}?",
                                           "Which organisation is older, {a} or {b}?")),
    (("org",), "founding_year", "argmax", ("Which was founded more recently, {a} or {b}?",)),
    (WORK_KINDS, "release_year", "argmin", ("Which came out first, {a} or {b}?",)),
    (WORK_KINDS, "release_year", "argmax", ("Which was released more recently, {a} or {b}?",)),
)  # fmt: skip
_SAME_COUNTRY: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("city", ("located_in",), ("Are {a} and {b} in the same country?",
                               "Do {a} and {b} lie in the same country?")),
    ("person", ("born_in", "located_in"), ("Were {a} and {b} born in the same country?",)),
    ("org", ("headquartered_in", "located_in"), ("Are {a} and {b} headquartered in the same "
                                                 "country?",)),
)  # fmt: skip


def _relation_paths(length: int) -> list[tuple[str, ...]]:
    """Every chain of ``length`` relations where each value is the next relation's subject."""
    paths: list[tuple[str, ...]] = [(name,) for name in RELATIONS]
    for _ in range(length - 1):
        longer = []
        for path in paths:
            value_kind = RELATIONS[path[-1]].value_kind
            if value_kind not in ENTITY_KINDS:
                continue
            for name, spec in RELATIONS.items():
                if value_kind in spec.subject_kinds and not (name == path[-1] and spec.symmetric):
                    longer.append((*path, name))
        paths = longer
    return paths


_PATHS = {length: _relation_paths(length) for length in (1, 2, 3)}


def _literal_aliases(kind: str, value: str) -> tuple[str, ...]:
    """Accepted answer strings for a literal value: a population with and without thousands
    separators, a height with and without its unit."""
    if kind == "population":
        return (value, value.replace(",", ""))
    if kind == "height":
        number = value.split(" ")[0]
        return (value, number, f"{number} centimetres")
    return (value,)


@dataclass(frozen=True)
class _Draft:
    question: str
    answers: tuple[str, ...]
    type: str
    hops: tuple[tuple[str, int, str], ...]
    combine: tuple[str, tuple[int, ...], str]
    facts: tuple[tuple[str, str], ...]


class _QuestionMaker:
    """Draws one question of a given type at a time, or None when the draw does not fit."""

    def __init__(self, world: WorldView, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.names_of_kind = {
            kind: [e.name for e in world.entities_of(kind)] for kind in ENTITY_KINDS
        }
        self.names_of_kinds: dict[tuple[str, ...], list[str]] = {}
        self.surname_group: dict[str, list[str]] = {}
        for name in self.names_of_kind["person"]:
            self.surname_group.setdefault(name.split(" ")[1], []).append(name)
        self.org_root_group: dict[str, list[str]] = {}
        for name in self.names_of_kind["org"]:
            self.org_root_group.setdefault(name.split(" ")[0], []).append(name)
        self.populations = [world.facts[c, "population"] for c in self.names_of_kind["city"]]

    def _subject(self, kinds: tuple[str, ...]) -> str | None:
        """A random entity of one of ``kinds``, or None if the world has none."""
        if kinds not in self.names_of_kinds:
            self.names_of_kinds[kinds] = [n for kind in kinds for n in self.names_of_kind[kind]]
        names = self.names_of_kinds[kinds]
        return self.rng.choice(names) if names else None

    def _mention(self, name: str) -> str:
        return self.world.entities[name].mentions[0]

    def _walk_from(self, start: str, path: tuple[str, ...]) -> list[str] | None:
        """``[start, value_1, …, value_n]`` along ``path``, or None if a fact is missing."""
        nodes = [start]
        for relation in path:
            value = self.world.facts.get((nodes[-1], relation))
            if value is None:
                return None
            nodes.append(value)
        return nodes

    def _walk(self, path: tuple[str, ...]) -> list[str] | None:
        """``[start, value_1, …]`` from a random start, or None if a fact is missing or the chain
        visits an entity twice (e.g. the founder of one's own employer)."""
        start = self._subject(RELATIONS[path[0]].subject_kinds)
        nodes = None if start is None else self._walk_from(start, path)
        if nodes is None or len(set(nodes)) < len(nodes):
            return None
        return nodes

    def _phrase(self, start: str, path: tuple[str, ...]) -> str:
        phrase = self._mention(start)
        for relation in path:
            phrase = self.rng.choice(RELATIONS[relation].descriptions).format(s=phrase)
        return phrase

    def _answers(self, kind: str, value: str) -> tuple[str, ...]:
        if kind in ENTITY_KINDS:
            return self.world.entities[value].aliases
        return _literal_aliases(kind, value)

    def _chain(self, length: int, type_name: str) -> _Draft | None:
        path = self.rng.choice(_PATHS[length])
        nodes = self._walk(path)
        if nodes is None:
            return None
        start, values = nodes[0], nodes[1:]
        question = self.rng.choice(RELATIONS[path[-1]].questions).format(
            s=self._phrase(start, path[:-1])
        )
        return _Draft(
            question=question,
            answers=self._answers(RELATIONS[path[-1]].value_kind, values[-1]),
            type=type_name,
            hops=_chain_hops(start, path),
            combine=("last", (length - 1,), ""),
            facts=tuple(zip((start, *values[:-1]), path, strict=True)),
        )

    def single_hop(self) -> _Draft | None:
        return self._chain(1, "single_hop")

    def bridge(self) -> _Draft | None:
        return self._chain(2, "bridge")

    def chain(self) -> _Draft | None:
        return self._chain(3, "chain")

    def comparison(self) -> _Draft | None:
        if self.rng.random() < 0.3:
            return self._same_country()
        kinds, relation, op, templates = self.rng.choice(_COMPARISONS)
        a, b = self._subject(kinds), self._subject(kinds)
        if a is None or b is None or a == b:
            return None
        value_a, value_b = self.world.facts[a, relation], self.world.facts[b, relation]
        if as_number(value_a) == as_number(value_b):
            return None
        smaller_first = as_number(value_a) < as_number(value_b)
        winner = a if smaller_first == (op == "argmin") else b
        question = self.rng.choice(templates).format(a=self._mention(a), b=self._mention(b))
        return _Draft(
            question=question,
            answers=self.world.entities[winner].aliases,
            type="comparison",
            hops=((a, -1, relation), (b, -1, relation)),
            combine=(op, (0, 1), ""),
            facts=((a, relation), (b, relation)),
        )

    def _same_country(self) -> _Draft | None:
        kind, path, templates = self.rng.choice(_SAME_COUNTRY)
        want_same = self.rng.random() < 0.5
        walked_a = self._walk_from(self.rng.choice(self.names_of_kind[kind]), path)
        if walked_a is None:
            return None
        for _ in range(20):
            b = self.rng.choice(self.names_of_kind[kind])
            walked_b = self._walk_from(b, path)
            if b != walked_a[0] and walked_b and (walked_b[-1] == walked_a[-1]) == want_same:
                break
        else:
            return None
        a = walked_a[0]
        n = len(path)
        hops = _chain_hops(a, path) + tuple(
            (subject, ref + n if ref >= 0 else ref, relation)
            for subject, ref, relation in _chain_hops(b, path)
        )
        facts = tuple(zip(walked_a[:-1], path, strict=True)) + tuple(
            zip(walked_b[:-1], path, strict=True)
        )
        question = self.rng.choice(templates).format(a=self._mention(a), b=self._mention(b))
        return _Draft(
            question=question,
            answers=("yes",) if want_same else ("no",),
            type="comparison",
            hops=hops,
            combine=("same", (n - 1, 2 * n - 1), ""),
            facts=facts,
        )

    def yes_no(self) -> _Draft | None:
        path = self.rng.choice(_PATHS[1] if self.rng.random() < 0.6 else _PATHS[2])
        nodes = self._walk(path)
        if nodes is None:
            return None
        start, values = nodes[0], nodes[1:]
        final = RELATIONS[path[-1]]
        truth = self.rng.random() < 0.5
        claimed = values[-1] if truth else self._confusable(final.value_kind, values[-1])
        if claimed is None:
            return None
        shown = self._mention(claimed) if final.value_kind in ENTITY_KINDS else claimed
        question = self.rng.choice(final.yes_no).format(s=self._phrase(start, path[:-1]), v=shown)
        return _Draft(
            question=question,
            answers=("yes",) if truth else ("no",),
            type="yes_no",
            hops=_chain_hops(start, path),
            combine=("equals", (len(path) - 1,), claimed),
            facts=tuple(zip((start, *values[:-1]), path, strict=True)),
        )

    def _confusable(self, kind: str, value: str) -> str | None:
        """A wrong value of the same kind; for people and organisations preferably a namesake."""
        rng = self.rng
        if kind == "person":
            namesakes = [p for p in self.surname_group[value.split(" ")[1]] if p != value]
            pool = namesakes or self.names_of_kind["person"]
        elif kind == "org":
            namesakes = [o for o in self.org_root_group[value.split(" ")[0]] if o != value]
            pool = namesakes or self.names_of_kind["org"]
        elif kind in ENTITY_KINDS:
            pool = self.names_of_kind[kind]
        elif kind == "year":
            return str(int(value) + rng.choice((-1, 1)) * rng.randint(1, 12))
        elif kind == "height":
            return f"{as_number(value) + rng.choice((-1, 1)) * rng.randint(2, 15)} cm"
        else:
            pool = self.populations
        wrong = rng.choice(pool)
        return None if wrong == value else wrong


def _chain_hops(start: str, path: tuple[str, ...]) -> tuple[tuple[str, int, str], ...]:
    """Plan hops for a chain: the first about ``start``, each later one about the previous value."""
    return tuple(
        (start, -1, relation) if index == 0 else ("", index - 1, relation)
        for index, relation in enumerate(path)
    )


def _metadata(draft: _Draft, world: WorldView) -> dict[str, Any]:
    supporting_docs = list(dict.fromkeys(world.fact_docs[fact] for fact in draft.facts))
    return {
        "type": draft.type,
        "corpus": world.config.name,
        "hops": len(draft.hops),
        "supporting_docs": supporting_docs,
        "supporting_facts": [
            {"subject": subject, "relation": relation, "value": world.facts[subject, relation]}
            for subject, relation in draft.facts
        ],
        "plan": {
            "hops": [
                {"subject": subject, "subject_ref": ref, "relation": relation}
                for subject, ref, relation in draft.hops
            ],
            "combine": {"op": draft.combine[0], "hops": list(draft.combine[1]),
                        "value": draft.combine[2]},
        },
    }  # fmt: skip


def generate_questions(world: WorldView, n: int) -> list[QAExample]:
    """``n`` distinct questions drawn by ``world.config.question_mix`` (seeded by the config).

    Raises ValueError when the world is too small to hold ``n`` distinct questions.
    """
    cfg = world.config
    rng = random.Random(f"{cfg.seed}/questions")
    maker = _QuestionMaker(world, rng)
    makers: dict[str, Callable[[], _Draft | None]] = {
        "single_hop": maker.single_hop,
        "bridge": maker.bridge,
        "chain": maker.chain,
        "comparison": maker.comparison,
        "yes_no": maker.yes_no,
    }
    types = [name for name, weight in cfg.question_mix if weight > 0]
    cum_weights = list(itertools.accumulate(weight for _, weight in cfg.question_mix if weight > 0))
    total = cum_weights[-1] if cum_weights else 0.0
    questions: list[QAExample] = []
    seen: set[str] = set()
    budget = 50 * n + 1000
    while len(questions) < n:
        budget -= 1
        if budget < 0:
            raise ValueError(
                f"could only draw {len(questions)} distinct questions of {n} from world "
                f"{cfg.name!r}; use a larger world (e.g. WorldConfig.sized_for({n}))"
            )
        draft = makers[types[bisect.bisect(cum_weights, rng.random() * total)]]()
        if draft is None or draft.question in seen:
            continue
        seen.add(draft.question)
        questions.append(
            QAExample(
                id=f"{cfg.name}-q{len(questions):06d}",
                question=draft.question,
                golden_answers=draft.answers,
                data_source=DATA_SOURCE,
                metadata=_metadata(draft, world),
            )
        )
    return questions
