"""Invented, pronounceable names built from syllables, kept apart between dataset splits.

A name is two or three syllables (onset + vowel + coda), capitalised: ``Maren``, ``Tolvik``,
``Ostravia``. No model has seen these names, so a question about them can only be answered by
searching the corpus.

Splits never share a name word. Every word falls into one of ten buckets by a fixed checksum
(``zlib.crc32`` of its lower-case letters, modulo 10); the train partition accepts buckets 0–7,
dev bucket 8 and test bucket 9. A test-split name therefore cannot occur in a train world, whatever
the seeds and sizes of the two worlds.
"""

from __future__ import annotations

import random
import re
import zlib

PARTITION_BUCKETS: dict[str, frozenset[int]] = {
    "train": frozenset(range(8)),
    "dev": frozenset({8}),
    "test": frozenset({9}),
}

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


class NameMaker:
    """Draws fresh name words for one world: never repeated, all from one split partition."""

    def __init__(self, rng: random.Random, partition: str) -> None:
        if partition not in PARTITION_BUCKETS:
            raise ValueError(
                f"unknown name partition {partition!r}; use one of {sorted(PARTITION_BUCKETS)}"
            )
        self._rng = rng
        self._buckets = PARTITION_BUCKETS[partition]
        self._used: set[str] = set()

    def _accepts(self, word: str) -> bool:
        lower = word.lower()
        if word in self._used or not 4 <= len(word) <= 9 or lower in _FUNCTION_WORDS:
            return False
        if _AWKWARD.search(lower):
            return False
        return zlib.crc32(lower.encode("utf-8")) % 10 in self._buckets

    def word(self) -> str:
        """A new capitalised word of two or three syllables, unused in this world."""
        rng = self._rng
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
                    return candidate
        return None
