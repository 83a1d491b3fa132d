"""Invented, pronounceable names built from syllables: a closed shared inventory, or fresh words
kept apart between dataset splits.

A name is two or three syllables (onset + vowel + coda), capitalised: ``Maren``, ``Tolvik``,
``Ostravia``. No model has seen these names, so a question about them can only be answered by
searching the corpus.

Two ways to draw a world's name words:

* ``shared`` (the default of the demo task): every world draws from one closed inventory of
  :data:`INVENTORY_SIZE` words (:func:`name_inventory`), fixed once for all. The tiny policy's
  tokenizer holds each of them as one token, so copying a name is copying one id. What keeps a
  world unmemorisable is that every world picks its names from the inventory and every fact
  afresh from its own seed: knowing that ``Tolvik`` was born in ``Maren`` in one world says
  nothing about another.
* ``train`` / ``dev`` / ``test`` partitions: fresh words made on the fly, split into pieces by the
  tokenizer, never shared between partitions ("novel names", the harder held-out set).

Partitions never share a name word. Every word falls into one of ten buckets by a fixed checksum
(``zlib.crc32`` of its lower-case letters, modulo 10); the train partition accepts buckets 0–7,
dev bucket 8 and test bucket 9. A test-split name therefore cannot occur in a train world, whatever
the seeds and sizes of the two worlds.
"""

from __future__ import annotations

import functools
import random
import re
import zlib

PARTITION_BUCKETS: dict[str, frozenset[int]] = {
    "train": frozenset(range(8)),
    "dev": frozenset({8}),
    "test": frozenset({9}),
}
SHARED = "shared"
"""The name source that draws from the closed inventory instead of a partition."""
NAME_SOURCES: tuple[str, ...] = (SHARED, *PARTITION_BUCKETS)
INVENTORY_SIZE = 512
"""Words of the closed inventory (a world of the default size uses about 180 of them)."""
_INVENTORY_SEED = "at2po/name-inventory/v1"

_ONSETS = (
    "b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "sh",
    "st", "t", "th", "tr", "v", "z",
)  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei")
_CODAS = ("", "", "", "n", "r", "l", "s", "k", "m", "v", "nd", "rn")
_ENDINGS = ("", "", "", "a", "ia", "or", "en", "ik", "ar", "is", "ova", "und", "eth", "wyn")
# English function words that invented names must avoid: retrievers drop them as stop words.
_FUNCTION_WORDS = frozenset((
    "about", "above", "after", "again", "also", "been", "before", "being", "below", "between",
    "both", "does", "down", "during", "each", "from", "further", "have", "having", "here", "into",
    "more", "most", "once", "only", "other", "over", "same", "should", "some", "such", "than",
    "that", "their", "them", "then", "there", "these", "they", "this", "those", "through", "under",
    "until", "very", "were", "what", "when", "where", "which", "while", "whom", "will", "with",
    "would", "your",
))  # fmt: skip
_AWKWARD = re.compile(r"[aeiou]{3}|[^aeiou]{4}|aa|ee|ii|oo|uu|([^aeioulnrst])\1|([lnrst])\2\2")


def partition_of(word: str) -> str:
    """The split partition (``train``, ``dev`` or ``test``) a name word belongs to."""
    bucket = zlib.crc32(word.lower().encode("utf-8")) % 10
    return next(name for name, buckets in PARTITION_BUCKETS.items() if bucket in buckets)


@functools.cache
def name_inventory() -> tuple[str, ...]:
    """The closed inventory: :data:`INVENTORY_SIZE` distinct words of the train partition, made
    from a fixed seed (the same on every machine and in every version of this module's v1)."""
    maker = NameMaker(random.Random(_INVENTORY_SEED), "train")
    return tuple(maker.word() for _ in range(INVENTORY_SIZE))


class NameMaker:
    """Draws name words for one world, never repeated: fresh words of one split partition, or
    words of the closed inventory (``source="shared"``)."""

    def __init__(self, rng: random.Random, source: str) -> None:
        if source not in NAME_SOURCES:
            raise ValueError(f"unknown name source {source!r}; use one of {list(NAME_SOURCES)}")
        self._rng = rng
        self._shared = source == SHARED
        self._buckets = PARTITION_BUCKETS["train" if self._shared else source]
        self._used: set[str] = set()
        self._unused: list[str] = list(name_inventory()) if self._shared else []
        self._inventory = frozenset(self._unused)

    def _accepts(self, word: str) -> bool:
        if self._shared:
            return word in self._inventory and word not in self._used
        lower = word.lower()
        if word in self._used or not 4 <= len(word) <= 9 or lower in _FUNCTION_WORDS:
            return False
        if _AWKWARD.search(lower):
            return False
        return zlib.crc32(lower.encode("utf-8")) % 10 in self._buckets

    def word(self) -> str:
        """A new capitalised word of two or three syllables, unused in this world."""
        rng = self._rng
        if self._shared:
            if not self._unused:
                raise ValueError(
                    f"the world needs more than the {INVENTORY_SIZE} words of the shared name "
                    "inventory; make it smaller (fewer people, cities, organisations, works)"
                )
            word = self._unused.pop(rng.randrange(len(self._unused)))
            self._used.add(word)
            return word
        while True:
            n_syllables = 2 if rng.random() < 0.7 else 3
            parts = [
                rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                for _ in range(n_syllables - 1)
            ]
            parts.append(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_ENDINGS))
            if rng.random() < 0.2:
                parts[0] = parts[0][1:] if parts[0][0] not in "aeiou" else parts[0]
            word = "".join(parts).capitalize()
            if self._accepts(word):
                self._used.add(word)
                return word

    def near(self, word: str) -> str | None:
        """A new word one vowel away from ``word`` (``Maren`` → ``Marin``), or None if none fits."""
        positions = [i for i, letter in enumerate(word) if letter.lower() in "aeiou"]
        self._rng.shuffle(positions)
        for i in positions:
            for vowel in self._rng.sample("aeiou", 5):
                replaced = vowel.upper() if i == 0 else vowel
                candidate = word[:i] + replaced + word[i + 1 :]
                if candidate != word and self._accepts(candidate):
                    self._used.add(candidate)
                    if self._shared:
                        self._unused.remove(candidate)
                    return candidate
        return None
