"""What a world is made of, as its readers see it: :class:`Entity` and :class:`WorldView`.

The bottom of the worlds package: it imports none of the package's other modules, so that
:mod:`~at2po.tasks.worlds.questions` can read a world without importing the generator that builds
one (the generator imports the questions, never the other way round).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Entity:
    """A named thing with its own documents.

    ``name`` is canonical (no quotes, a country's short form). ``aliases`` are accepted answer
    strings; ``mentions`` are the ways the corpus writes it (a title in quotes; a country by its
    short or long form).
    """

    name: str
    kind: str
    aliases: tuple[str, ...]
    mentions: tuple[str, ...]


class WorldSettings(Protocol):
    """The settings a world's questions depend on (a :class:`~.generator.WorldConfig` has them)."""

    @property
    def seed(self) -> int:
        """Seed of every random choice."""
        ...

    @property
    def name(self) -> str:
        """Prefix of document and question ids."""
        ...

    @property
    def question_mix(self) -> tuple[tuple[str, float], ...]:
        """Relative weight of each question type."""
        ...


class WorldView(Protocol):
    """A world as its questions read it (a :class:`~.generator.World` is one)."""

    @property
    def config(self) -> WorldSettings:
        """The settings the world was generated from."""
        ...

    @property
    def entities(self) -> Mapping[str, Entity]:
        """Every entity by canonical name."""
        ...

    @property
    def facts(self) -> Mapping[tuple[str, str], str]:
        """``(subject, relation) -> value``, all canonical strings."""
        ...

    @property
    def fact_docs(self) -> Mapping[tuple[str, str], str]:
        """``(subject, relation) -> id`` of the document that states the fact."""
        ...

    def entities_of(self, kind: str) -> list[Entity]:
        """All entities of one kind, in creation order."""
        ...
