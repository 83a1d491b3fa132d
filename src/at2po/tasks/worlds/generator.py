"""Seeded fictional knowledge bases ("worlds"): entities, facts, a corpus about them, and questions.

A world holds countries, cities in them, people, organisations and works (novels, films, albums),
linked by the relations of :mod:`at2po.tasks.worlds.templates` (born_in, works_for, spouse,
founded_by, author, located_in, capital, population, …). Every relation is functional, so a chain of
relations names exactly one answer.

The corpus is written like short encyclopedia passages (Search-R1 layout: the quoted title on the
first line). The facts about one entity are shuffled and spread over one to three passages with the
same title, each fact in a randomly chosen phrasing. Names are made to collide, so that retrieval
has to be read carefully: people share surnames, some people have a near-twin whose first name
differs by one vowel (``Maren Tolvik`` / ``Marin Tolvik``), organisations are named after cities
(``Velmora Dynamics`` while ``Velmora`` is a city elsewhere) or people's surnames, and titles reuse
city names and surnames.

The same ``WorldConfig`` always gives the same world. Entities, documents and questions draw from
separate seeded streams, so asking for more questions leaves the corpus unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from types import MappingProxyType

from at2po.tasks.datasets import QAExample
from at2po.tasks.retrieval.corpus import Document
from at2po.tasks.worlds.model import Entity
from at2po.tasks.worlds.names import NAME_SOURCES, NameMaker
from at2po.tasks.worlds.questions import QUESTION_TYPES, generate_questions
from at2po.tasks.worlds.templates import (
    ENTITY_KINDS,
    GOVERNMENT_FORMS,
    ORG_SUFFIXES,
    RELATIONS,
    RELATIONS_OF_KIND,
    WORK_KINDS,
    render_fact,
)

_OCCUPATIONS = (
    "engineer", "painter", "economist", "architect", "botanist", "chemist", "diplomat",
    "sculptor", "historian", "surveyor", "physician", "cartographer", "composer", "teacher",
)  # fmt: skip
_CITY_FEATURES = (
    "old harbour", "river markets", "stone bridges", "spring festival", "textile mills",
    "hillside gardens", "clock tower", "salt flats", "lantern parade", "copper mines",
)  # fmt: skip
_ORG_SECTORS = ("trading", "research", "publishing", "engineering", "shipping", "farming")
_GENRES = {
    "novel": ("mystery", "historical", "comic", "adventure", "epistolary"),
    "film": ("drama", "thriller", "documentary", "comedy", "western"),
    "album": ("folk", "jazz", "electronic", "choral", "rock"),
}
_TITLE_NOUNS = (
    "Tides", "Lanterns", "Orchard", "Winter", "Harbour", "Garden", "Echo", "Mirror", "River",
    "Crown", "Voyage", "Silence", "Ashes", "Bridge", "Stranger", "Letters", "Island", "Summer",
)  # fmt: skip
_TITLE_PATTERNS = (
    "The {n} of {x}",
    "{x} Rising",
    "Songs of {x}",
    "The Last {n} of {x}",
    "Beyond {x}",
    "{x} at Dusk",
    "The {x} {n}",
    "{a_n} for {x}",
)


def _with_article(phrase: str) -> str:
    """``a``/``an`` + phrase, by its first letter (``an engineer``, ``a jazz album``)."""
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


@dataclass(frozen=True)
class WorldConfig:
    """Everything that decides a world. The same config always gives the same world."""

    seed: int = 0
    """Seed of every random choice (names, facts, phrasings, questions)."""
    name: str = "world"
    """Prefix of document ids (``{name}-d000012``) and question ids (``{name}-q000003``)."""
    partition: str = "train"
    """Where name words come from: ``shared`` (the closed inventory every shared world draws
    from, one token each in the tiny policy's tokenizer) or a partition of fresh words
    (``train``, ``dev``, ``test``; worlds of different partitions share no name word)."""
    n_countries: int = 6
    n_cities: int = 30
    n_people: int = 120
    n_orgs: int = 24
    n_works: int = 45
    n_questions: int = 200
    question_mix: tuple[tuple[str, float], ...] = (
        ("single_hop", 0.2),
        ("bridge", 0.25),
        ("chain", 0.2),
        ("comparison", 0.2),
        ("yes_no", 0.15),
    )
    """Relative weight of each question type (see :mod:`at2po.tasks.worlds.questions`)."""
    spouse_rate: float = 0.4
    """Fraction of people who are married (to another person of the world)."""
    near_name_rate: float = 0.15
    """Fraction of people created as a near-twin of an earlier person (first name one vowel
    apart, same surname)."""
    shared_name_rate: float = 0.3
    """Fraction of organisations and titles named after a city or a person's surname."""
    surname_pool: float = 0.5
    """Distinct surnames per person: lower values make more people share a surname."""
    max_docs_per_entity: int = 3
    """An entity's facts are spread over at most this many documents (all with its title)."""

    def __post_init__(self) -> None:
        if self.partition not in NAME_SOURCES:
            raise ValueError(
                f"WorldConfig.partition={self.partition!r}; use one of {list(NAME_SOURCES)}"
            )
        minimums = {
            "n_countries": 2,
            "n_cities": 4,
            "n_people": 8,
            "n_orgs": 2,
            "n_works": 2,
            "n_questions": 0,
            "max_docs_per_entity": 1,
        }
        for field_name, minimum in minimums.items():
            if getattr(self, field_name) < minimum:
                raise ValueError(
                    f"WorldConfig.{field_name}={getattr(self, field_name)} is too small; "
                    f"it must be at least {minimum}"
                )
        if self.n_cities < self.n_countries:
            raise ValueError(
                f"WorldConfig.n_cities={self.n_cities} < n_countries={self.n_countries}: "
                "every country needs at least one city (its capital)"
            )
        for field_name in ("spouse_rate", "near_name_rate", "shared_name_rate"):
            if not 0.0 <= getattr(self, field_name) <= 1.0:
                raise ValueError(f"WorldConfig.{field_name} must lie in [0, 1]")
        if not 0.0 < self.surname_pool <= 1.0:
            raise ValueError("WorldConfig.surname_pool must lie in (0, 1]")
        unknown = [kind for kind, _ in self.question_mix if kind not in QUESTION_TYPES]
        if unknown:
            raise ValueError(
                f"WorldConfig.question_mix names unknown types {unknown}; known: {QUESTION_TYPES}"
            )
        if self.n_questions and not any(weight > 0 for _, weight in self.question_mix):
            raise ValueError("WorldConfig.question_mix needs at least one positive weight")

    @classmethod
    def sized_for(cls, n_questions: int, **overrides: object) -> WorldConfig:
        """A config whose entity counts grow with ``n_questions`` (about one person per 2.5)."""
        n_people = max(120, round(n_questions / 2.5))
        sizes: dict[str, object] = {
            "n_questions": n_questions,
            "n_people": n_people,
            "n_cities": max(30, n_people // 6),
            "n_countries": max(6, n_people // 60),
            "n_orgs": max(24, n_people // 5),
            "n_works": max(45, round(n_people / 2.5)),
        }
        sizes.update(overrides)
        return cls(**sizes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class World:
    """A generated world: its entities, facts, corpus and questions (read-only mappings)."""

    config: WorldConfig
    entities: MappingProxyType[str, Entity]
    facts: MappingProxyType[tuple[str, str], str]
    """``(subject, relation) -> value``, all canonical strings."""
    fact_docs: MappingProxyType[tuple[str, str], str]
    """``(subject, relation) -> id`` of the document that states the fact."""
    documents: tuple[Document, ...]
    questions: tuple[QAExample, ...] = field(default=())

    def entities_of(self, kind: str) -> list[Entity]:
        """All entities of one kind, in creation order."""
        return [e for e in self.entities.values() if e.kind == kind]


def _population(rng: random.Random) -> int:
    """Log-uniform between 5,000 and 5,000,000, kept to four significant figures."""
    raw = math.exp(rng.uniform(math.log(5_000), math.log(5_000_000)))
    magnitude = 10 ** max(0, int(math.log10(raw)) - 3)
    return int(round(raw / magnitude) * magnitude)


class _Builder:
    """Creates entities and facts of one world, in a fixed order, from one random stream."""

    def __init__(self, cfg: WorldConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(f"{cfg.seed}/entities")
        self.names = NameMaker(self.rng, cfg.partition)
        self.entities: dict[str, Entity] = {}
        self.facts: dict[tuple[str, str], str] = {}
        self.by_kind: dict[str, list[str]] = {kind: [] for kind in ENTITY_KINDS}
        self.birth_year: dict[str, int] = {}

    def add(
        self, name: str, kind: str, aliases: tuple[str, ...], mentions: tuple[str, ...]
    ) -> None:
        self.entities[name] = Entity(name, kind, aliases, mentions)
        self.by_kind[kind].append(name)

    def build(self) -> None:
        self._countries_and_cities()
        self._people()
        self._orgs()
        self._works()

    def _countries_and_cities(self) -> None:
        cfg, rng = self.cfg, self.rng
        for _ in range(cfg.n_countries):
            short = self.names.word()
            long_form = f"{rng.choice(GOVERNMENT_FORMS)} of {short}"
            self.add(short, "country", (short, long_form), (short, f"the {long_form}"))
        countries = self.by_kind["country"]
        for index in range(cfg.n_cities):
            city = self.names.word()
            self.add(city, "city", (city,), (city,))
            country = countries[index] if index < len(countries) else rng.choice(countries)
            self.facts[city, "located_in"] = country
            self.facts[city, "population"] = f"{_population(rng):,}"
        cities_of: dict[str, list[str]] = {}
        for city in self.by_kind["city"]:
            cities_of.setdefault(self.facts[city, "located_in"], []).append(city)
        for country in countries:
            self.facts[country, "capital"] = rng.choice(cities_of[country])

    def _people(self) -> None:
        cfg, rng = self.cfg, self.rng
        first_names = [self.names.word() for _ in range(max(8, cfg.n_people // 4))]
        surnames = [
            self.names.word() for _ in range(max(4, round(cfg.n_people * cfg.surname_pool)))
        ]
        people = self.by_kind["person"]
        while len(people) < cfg.n_people:
            if people and rng.random() < cfg.near_name_rate:
                first, surname = rng.choice(people).split(" ")
                twin = self.names.near(first)
                if twin is None:
                    continue
                name = f"{twin} {surname}"
            else:
                name = f"{rng.choice(first_names)} {rng.choice(surnames)}"
            if name in self.entities:
                continue
            self.add(name, "person", (name,), (name,))
            year = rng.randint(1900, 1995)
            self.birth_year[name] = year
            self.facts[name, "birth_year"] = str(year)
            self.facts[name, "born_in"] = rng.choice(self.by_kind["city"])
            self.facts[name, "height"] = f"{rng.randint(150, 199)} cm"
        singles = [p for p in people if rng.random() < cfg.spouse_rate]
        rng.shuffle(singles)
        for a, b in zip(singles[0::2], singles[1::2], strict=False):
            self.facts[a, "spouse"] = b
            self.facts[b, "spouse"] = a
        surname_count: dict[str, int] = {}
        for person in people:
            surname = person.split(" ")[1]
            surname_count[surname] = surname_count.get(surname, 0) + 1
        for person in people:
            surname = person.split(" ")[1]
            if surname_count[surname] == 1:
                self.entities[person] = Entity(person, "person", (person, surname), (person,))

    def _name_root(self) -> str:
        """A city name or a surname (a deliberate name clash) or a fresh word."""
        rng = self.rng
        if rng.random() < self.cfg.shared_name_rate:
            if rng.random() < 0.5:
                return rng.choice(self.by_kind["city"])
            return rng.choice(self.by_kind["person"]).split(" ")[1]
        return self.names.word()

    def _orgs(self) -> None:
        cfg, rng = self.cfg, self.rng
        people, cities = self.by_kind["person"], self.by_kind["city"]
        while len(self.by_kind["org"]) < cfg.n_orgs:
            name = f"{self._name_root()} {rng.choice(ORG_SUFFIXES)}"
            if name in self.entities:
                continue
            self.add(name, "org", (name,), (name,))
            founder = rng.choice(people)
            self.facts[name, "founded_by"] = founder
            self.facts[name, "founding_year"] = str(
                min(2024, self.birth_year[founder] + rng.randint(22, 60))
            )
            self.facts[name, "headquartered_in"] = rng.choice(cities)
        orgs = self.by_kind["org"]
        for person in people:
            self.facts[person, "works_for"] = rng.choice(orgs)

    def _works(self) -> None:
        cfg, rng = self.cfg, self.rng
        creator_relation = {"novel": "author", "film": "director", "album": "performer"}
        made = 0
        while made < cfg.n_works:
            kind = rng.choice(WORK_KINDS)
            pattern = rng.choice(_TITLE_PATTERNS)
            noun = rng.choice(_TITLE_NOUNS)
            a_noun = _with_article(noun)
            title = pattern.format(n=noun, a_n=a_noun[0].upper() + a_noun[1:], x=self._name_root())
            if title in self.entities:
                continue
            self.add(title, kind, (title,), (f'"{title}"',))
            creator = rng.choice(self.by_kind["person"])
            self.facts[title, creator_relation[kind]] = creator
            self.facts[title, "release_year"] = str(
                min(2024, self.birth_year[creator] + rng.randint(18, 60))
            )
            made += 1


def _pick(options: tuple[str, ...], rng: random.Random) -> str:
    """``rng.choice`` that draws nothing when there is a single option (most mentions)."""
    return options[0] if len(options) == 1 else rng.choice(options)


def _value_mention(kind: str, value: str, entities: dict[str, Entity], rng: random.Random) -> str:
    """How a value is written in one sentence: an entity by one of its mentions, a height in cm or
    centimetres, other literals as they are."""
    if kind in ENTITY_KINDS:
        return _pick(entities[value].mentions, rng)
    if kind == "height":
        return value if rng.random() < 0.5 else value.replace(" cm", " centimetres")
    return value


def _intro(entity: Entity, rng: random.Random) -> str:
    mention = entity.mentions[0]
    if entity.kind == "person":
        return f"{mention} is {_with_article(rng.choice(_OCCUPATIONS))}."
    if entity.kind == "city":
        return f"{mention} is known for its {rng.choice(_CITY_FEATURES)}."
    if entity.kind == "country":
        return f"{mention}, officially the {entity.aliases[1]}, is a sovereign state."
    if entity.kind == "org":
        return f"{mention} is {_with_article(rng.choice(_ORG_SECTORS))} organisation."
    return f"{mention} is {_with_article(rng.choice(_GENRES[entity.kind]))} {entity.kind}."


def _write_documents(
    cfg: WorldConfig, entities: dict[str, Entity], facts: dict[tuple[str, str], str]
) -> tuple[list[Document], dict[tuple[str, str], str]]:
    """Spread each entity's facts over 1..max_docs_per_entity passages titled with its name."""
    rng = random.Random(f"{cfg.seed}/documents")
    documents: list[Document] = []
    fact_docs: dict[tuple[str, str], str] = {}
    for entity in entities.values():
        relations = [r for r in RELATIONS_OF_KIND[entity.kind] if (entity.name, r) in facts]
        rng.shuffle(relations)
        n_docs = rng.randint(1, max(1, min(cfg.max_docs_per_entity, (len(relations) + 1) // 2)))
        cuts = sorted(rng.sample(range(1, len(relations)), n_docs - 1)) if n_docs > 1 else []
        bounds = [0, *cuts, len(relations)]
        for part in range(n_docs):
            doc_id = f"{cfg.name}-d{len(documents):06d}"
            sentences = [_intro(entity, rng)] if part == 0 else []
            for relation in relations[bounds[part] : bounds[part + 1]]:
                spec = RELATIONS[relation]
                value = facts[entity.name, relation]
                sentences.append(
                    render_fact(
                        rng.choice(spec.phrasings),
                        _pick(entity.mentions, rng),
                        _value_mention(spec.value_kind, value, entities, rng),
                    )
                )
                fact_docs[entity.name, relation] = doc_id
            documents.append(Document(doc_id, f'"{entity.name}"\n' + " ".join(sentences)))
    return documents, fact_docs


def generate_world(cfg: WorldConfig) -> World:
    """Build the world ``cfg`` describes: entities, facts, documents, ``cfg.n_questions``
    questions."""
    builder = _Builder(cfg)
    builder.build()
    documents, fact_docs = _write_documents(cfg, builder.entities, builder.facts)
    world = World(
        config=cfg,
        entities=MappingProxyType(builder.entities),
        facts=MappingProxyType(builder.facts),
        fact_docs=MappingProxyType(fact_docs),
        documents=tuple(documents),
    )
    return dataclasses.replace(world, questions=tuple(generate_questions(world, cfg.n_questions)))
