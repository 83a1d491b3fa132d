"""The relations of a world and every way they are written: fact sentences, noun phrases, questions.

One table drives both directions. The generator renders a fact ``(subject, relation, value)`` with
one of the relation's ``phrasings``; the expert compiles the same phrasings into regular
expressions and reads facts back out of retrieved text (:func:`read_facts`). A phrasing that the
reader cannot parse back is therefore a bug the tests catch, not a silent gap.

Values have kinds. Entity kinds (``person``, ``city``, ``country``, ``org``, ``novel``, ``film``,
``album``) name things that have their own documents; literal kinds (``year``, ``population``,
``height``) are numbers written in text. Each kind says how it looks in text (a regex) and how a
mention maps back to its canonical value (a country's long form ``the Republic of Ostravia`` maps
to ``Ostravia``; a height written ``182 centimetres`` maps to ``182 cm``; a title loses its
quotes).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

WORK_KINDS = ("novel", "film", "album")
ENTITY_KINDS = ("person", "city", "country", "org", *WORK_KINDS)
GOVERNMENT_FORMS = ("Republic", "Kingdom", "Federation", "Principality", "Commonwealth", "Union")
ORG_SUFFIXES = (
    "Dynamics", "Holdings", "Institute", "Foundation", "Studios", "Works", "Labs", "Group",
    "Press", "Systems", "Trading", "Mining", "Textiles", "Shipping",
)  # fmt: skip

_WORD = r"[A-Z][a-z]+"
_KIND_PATTERNS: dict[str, str] = {
    "person": rf"{_WORD} {_WORD}",
    "city": _WORD,
    "country": rf"(?:[Tt]he )?(?:{'|'.join(GOVERNMENT_FORMS)}) of {_WORD}|{_WORD}",
    "org": rf"{_WORD} (?:{'|'.join(ORG_SUFFIXES)})",
    "novel": r'"[^"\n]+"',
    "film": r'"[^"\n]+"',
    "album": r'"[^"\n]+"',
    "year": r"\d{4}",
    "population": r"\d{1,3}(?:,\d{3})*",
    "height": r"\d{3} (?:cm|centimetres)",
}
_COUNTRY_LONG_FORM = re.compile(rf"^(?:[Tt]he )?(?:{'|'.join(GOVERNMENT_FORMS)}) of ")


def canonical(kind: str, mention: str) -> str:
    """The canonical value of a mention as written in text (see the module docstring)."""
    if kind == "country":
        return _COUNTRY_LONG_FORM.sub("", mention)
    if kind in WORK_KINDS:
        return mention.strip('"')
    if kind == "height":
        return mention.split(" ", 1)[0] + " cm"
    return mention


@dataclass(frozen=True)
class Relation:
    """A functional relation ``subject -> value`` and all the text it is written in.

    ``label``: what the value is called ("birthplace"); the expert searches ``subject label``.
    ``phrasings``: fact sentences with ``{s}`` (subject) and ``{o}`` (value) slots.
    ``descriptions``: noun phrases naming the value through the subject ("the city where {s} was
    born"); only relations whose value is an entity have them, since only those can bridge hops.
    ``questions``: questions asking for the value. ``yes_no``: questions about a claimed value
    ``{v}``.
    ``symmetric``: ``r(a) = b`` implies ``r(b) = a`` (spouse).
    """

    name: str
    label: str
    subject_kinds: tuple[str, ...]
    value_kind: str
    phrasings: tuple[str, ...]
    questions: tuple[str, ...]
    yes_no: tuple[str, ...]
    descriptions: tuple[str, ...] = ()
    symmetric: bool = False

    @property
    def keywords(self) -> str:
        """The words of four letters or more in the phrasings, each once ("born native
        birthplace"). The expert's last retry adds them to the subject, so that the passage
        stating the fact ranks high whichever phrasing it used."""
        words = re.findall(r"[a-z]{4,}", " ".join(self.phrasings).lower())
        return " ".join(dict.fromkeys(words))


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation(
            "born_in",
            "birthplace",
            ("person",),
            "city",
            phrasings=(
                "{s} was born in {o}.",
                "{s} is a native of {o}.",
                "{o} is the birthplace of {s}.",
                "The birthplace of {s} is {o}.",
            ),
            questions=("Where was {s} born?", "In which city was {s} born?"),
            yes_no=("Was {s} born in {v}?",),
            descriptions=("the city where {s} was born", "the birthplace of {s}"),
        ),
        Relation(
            "birth_year",
            "year of birth",
            ("person",),
            "year",
            phrasings=(
                "{s} was born in {o}.",
                "{s} was born in the year {o}.",
                "The year of birth of {s} is {o}.",
                "{o} saw the birth of {s}.",
            ),
            questions=("In what year was {s} born?", "When was {s} born?"),
            yes_no=("Was {s} born in {v}?",),
        ),
        Relation(
            "works_for",
            "employer",
            ("person",),
            "org",
            phrasings=(
                "{s} works for {o}.",
                "{s} is employed by {o}.",
                "{o} employs {s}.",
                "{s} holds a position at {o}.",
            ),
            questions=("Which organisation does {s} work for?", "Which organisation employs {s}?"),
            yes_no=("Does {s} work for {v}?",),
            descriptions=("the organisation that employs {s}", "the employer of {s}"),
        ),
        Relation(
            "spouse",
            "spouse",
            ("person",),
            "person",
            phrasings=(
                "{s} is married to {o}.",
                "{s} and {o} are married.",
                "The spouse of {s} is {o}.",
            ),
            questions=("Who is {s} married to?", "Who is the spouse of {s}?"),
            yes_no=("Is {s} married to {v}?",),
            descriptions=("the spouse of {s}", "the person married to {s}"),
            symmetric=True,
        ),
        Relation(
            "height",
            "height",
            ("person",),
            "height",
            phrasings=(
                "{s} is {o} tall.",
                "{s} stands {o} tall.",
                "{s} has a height of {o}.",
                "The height of {s} is {o}.",
            ),
            questions=("How tall is {s}?", "What is the height of {s}?"),
            yes_no=("Is {s} {v} tall?",),
        ),
        Relation(
            "located_in",
            "country",
            ("city",),
            "country",
            phrasings=(
                "{s} is a city in {o}.",
                "{s} lies in {o}.",
                "{s} is located in {o}.",
                "The city of {s} belongs to {o}.",
            ),
            questions=("In which country is {s} located?", "Which country does {s} belong to?"),
            yes_no=("Is {s} located in {v}?",),
            descriptions=("the country where {s} lies", "the country that {s} belongs to"),
        ),
        Relation(
            "population",
            "population",
            ("city",),
            "population",
            phrasings=(
                "{s} has a population of {o}.",
                "{s} is home to {o} people.",
                "{o} people live in {s}.",
                "The population of {s} is {o}.",
            ),
            questions=("What is the population of {s}?", "How many people live in {s}?"),
            yes_no=("Does {s} have a population of {v}?",),
        ),
        Relation(
            "capital",
            "capital",
            ("country",),
            "city",
            phrasings=(
                "The capital of {s} is {o}.",
                "{o} is the capital of {s}.",
                "{s} has its capital at {o}.",
            ),
            questions=("What is the capital of {s}?", "Which city is the capital of {s}?"),
            yes_no=("Is {v} the capital of {s}?",),
            descriptions=("the capital of {s}",),
        ),
        Relation(
            "headquartered_in",
            "headquarters",
            ("org",),
            "city",
            phrasings=(
                "{s} is headquartered in {o}.",
                "{s} has its headquarters in {o}.",
                "{s} is based in {o}.",
                "The head office of {s} is in {o}.",
            ),
            questions=("Where is {s} headquartered?", "In which city is {s} based?"),
            yes_no=("Is {s} headquartered in {v}?",),
            descriptions=("the city where {s} is headquartered", "the home city of {s}"),
        ),
        Relation(
            "founded_by",
            "founder",
            ("org",),
            "person",
            phrasings=(
                "{s} was founded by {o}.",
                "{o} founded {s}.",
                "{s} was established by {o}.",
                "The founder of {s} is {o}.",
            ),
            questions=("Who founded {s}?", "Who is the founder of {s}?"),
            yes_no=("Was {s} founded by {v}?",),
            descriptions=("the founder of {s}", "the person who founded {s}"),
        ),
        Relation(
            "founding_year",
            "founding year",
            ("org",),
            "year",
            phrasings=(
                "{s} was founded in {o}.",
                "{s} was established in {o}.",
                "{s} has existed since {o}.",
                "{s} dates back to {o}.",
            ),
            questions=("In what year was {s} founded?", "When was {s} established?"),
            yes_no=("Was {s} founded in {v}?",),
        ),
        Relation(
            "author",
            "author",
            ("novel",),
            "person",
            phrasings=(
                "{s} is a novel by {o}.",
                "{s} was written by {o}.",
                "{o} wrote the novel {s}.",
                "{o} is the author of {s}.",
            ),
            questions=("Who wrote {s}?", "Who is the author of the novel {s}?"),
            yes_no=("Was {s} written by {v}?",),
            descriptions=("the author of {s}", "the writer of the novel {s}"),
        ),
        Relation(
            "director",
            "director",
            ("film",),
            "person",
            phrasings=(
                "{s} is a film directed by {o}.",
                "{s} was directed by {o}.",
                "{o} directed the film {s}.",
                "{o} is the director of {s}.",
            ),
            questions=("Who directed {s}?", "Who is the director of the film {s}?"),
            yes_no=("Was {s} directed by {v}?",),
            descriptions=("the director of {s}", "the person who directed {s}"),
        ),
        Relation(
            "performer",
            "artist",
            ("album",),
            "person",
            phrasings=(
                "{s} is an album by {o}.",
                "{s} was recorded by {o}.",
                "{o} recorded the album {s}.",
                "{o} is the artist behind {s}.",
            ),
            questions=("Who recorded {s}?", "Which artist made the album {s}?"),
            yes_no=("Was {s} recorded by {v}?",),
            descriptions=("the artist who recorded {s}", "the maker of the album {s}"),
        ),
        Relation(
            "release_year",
            "release year",
            WORK_KINDS,
            "year",
            phrasings=(
                "{s} was released in {o}.",
                "{s} came out in {o}.",
                "{s} first appeared in {o}.",
            ),
            questions=("In what year was {s} released?", "When did {s} come out?"),
            yes_no=("Was {s} released in {v}?",),
        ),
    )
}

# Facts a kind's documents state, in this order before shuffling (the generator reads it).
RELATIONS_OF_KIND: dict[str, tuple[str, ...]] = {
    kind: tuple(name for name, r in RELATIONS.items() if kind in r.subject_kinds)
    for kind in ENTITY_KINDS
}


def render_fact(phrasing: str, subject_mention: str, value_mention: str) -> str:
    """One fact sentence, its first letter capitalised (``the Republic of …`` starts ``The``)."""
    sentence = phrasing.format(s=subject_mention, o=value_mention)
    return sentence[0].upper() + sentence[1:]


@dataclass(frozen=True)
class ReadFact:
    """A fact found in text: canonical subject and value, and the relation that links them."""

    subject: str
    relation: str
    value: str


@cache
def _phrasing_patterns(relation: str) -> tuple[tuple[re.Pattern[str], str], ...]:
    """Per phrasing: a regex with groups ``s`` and ``o``, and the kind that canonicalises ``s``."""
    spec = RELATIONS[relation]
    subject_pattern = "|".join(_KIND_PATTERNS[kind] for kind in spec.subject_kinds)
    compiled = []
    for phrasing in spec.phrasings:
        pieces = re.split(r"(\{s\}|\{o\})", phrasing)
        regex = []
        for index, piece in enumerate(pieces):
            if piece == "{s}":
                regex.append(f"(?P<s>{subject_pattern})")
            elif piece == "{o}":
                regex.append(f"(?P<o>{_KIND_PATTERNS[spec.value_kind]})")
            elif index == 0 and piece:
                regex.append(f"[{piece[0].upper()}{piece[0].lower()}]{re.escape(piece[1:])}")
            else:
                regex.append(re.escape(piece))
        compiled.append((re.compile(r"(?<![\w\"])" + "".join(regex)), spec.subject_kinds[0]))
    return tuple(compiled)


def read_facts(text: str, relation: str) -> Iterator[ReadFact]:
    """Every statement of ``relation`` in ``text``, in canonical form (both ways if symmetric)."""
    spec = RELATIONS[relation]
    for pattern, subject_kind in _phrasing_patterns(relation):
        for match in pattern.finditer(text):
            subject = canonical(subject_kind, match["s"])
            value = canonical(spec.value_kind, match["o"])
            yield ReadFact(subject, relation, value)
            if spec.symmetric:
                yield ReadFact(value, relation, subject)


def as_number(value: str) -> int:
    """The integer in a canonical year, population or height (``1,234,000`` → 1234000)."""
    return int(value.split(" ")[0].replace(",", ""))
