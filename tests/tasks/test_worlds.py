"""Synthetic worlds: determinism, question schema and answers, text round trip, splits, export."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.cli.main import main as cli_main
from at2po.tasks.datasets import load_questions
from at2po.tasks.retrieval.corpus import load_corpus
from at2po.tasks.rewards import normalize_answer
from at2po.tasks.worlds import (
    QUESTION_TYPES,
    WorldConfig,
    build_splits,
    export_splits,
    generate_world,
)
from at2po.tasks.worlds.names import NameMaker, name_inventory, partition_of
from at2po.tasks.worlds.splits import build_world_sets, world_set_seed
from at2po.tasks.worlds.templates import (
    GOVERNMENT_FORMS,
    ORG_SUFFIXES,
    RELATIONS,
    ReadFact,
    read_facts,
    render_fact,
)

METADATA_KEYS = {"corpus", "type", "hops", "supporting_docs", "supporting_facts", "plan"}


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig.sized_for(1500, seed=11))


def _numeric(value: str) -> int:
    return int(value.split(" ")[0].replace(",", ""))


def _answer_from_facts(world, metadata) -> str:
    """Run a plan directly on the world's fact table (no text, no retrieval): the reference."""
    values: list[str] = []
    hops = metadata["plan"]["hops"]
    for hop in hops:
        subject = hop["subject"] if hop["subject_ref"] < 0 else values[hop["subject_ref"]]
        values.append(world.facts[subject, hop["relation"]])
    combine = metadata["plan"]["combine"]
    chosen = combine["hops"]
    if combine["op"] == "last":
        return values[chosen[0]]
    if combine["op"] == "equals":
        return "yes" if values[chosen[0]] == combine["value"] else "no"
    if combine["op"] == "same":
        return "yes" if values[chosen[0]] == values[chosen[1]] else "no"
    ordered = sorted(chosen, key=lambda i: _numeric(values[i]))
    best = ordered[0] if combine["op"] == "argmin" else ordered[-1]
    return hops[best]["subject"]


def test_same_config_gives_the_same_world_and_another_seed_another():
    cfg = WorldConfig(seed=3, n_questions=60)
    first, second = generate_world(cfg), generate_world(cfg)
    assert first.documents == second.documents
    assert first.questions == second.questions
    assert [q.metadata for q in first.questions] == [q.metadata for q in second.questions]
    other = generate_world(WorldConfig(seed=4, n_questions=60))
    assert other.documents != first.documents


def test_more_questions_leave_the_corpus_and_earlier_questions_unchanged():
    small = generate_world(WorldConfig(seed=5, n_questions=40))
    large = generate_world(WorldConfig(seed=5, n_questions=120))
    assert small.documents == large.documents
    assert large.questions[:40] == small.questions


def test_every_question_has_the_schema_and_its_plan_gives_a_golden_answer(world):
    assert len(world.questions) == 1500
    assert {q.metadata["type"] for q in world.questions} == set(QUESTION_TYPES)
    assert len({q.id for q in world.questions}) == len(world.questions)
    assert len({q.question for q in world.questions}) == len(world.questions)
    doc_ids = {d.doc_id for d in world.documents}
    for q in world.questions:
        meta = q.metadata
        assert set(meta) == METADATA_KEYS
        assert q.question.endswith("?") and q.data_source == "worlds"
        assert isinstance(q.golden_answers, tuple) and q.golden_answers
        plan_hops = meta["plan"]["hops"]
        assert meta["hops"] == len(plan_hops) == len(meta["supporting_facts"])
        assert set(meta["supporting_docs"]) <= doc_ids
        for index, hop in enumerate(plan_hops):
            assert hop["relation"] in RELATIONS
            assert -1 <= hop["subject_ref"] < index
            assert (hop["subject_ref"] == -1) == bool(hop["subject"])
        for fact in meta["supporting_facts"]:
            assert world.facts[fact["subject"], fact["relation"]] == fact["value"]
            assert world.fact_docs[fact["subject"], fact["relation"]] in meta["supporting_docs"]
        expected = {
            "single_hop": {1},
            "bridge": {2},
            "chain": {3},
            "comparison": {2, 4},
            "yes_no": {1, 2},
        }[meta["type"]]
        assert meta["hops"] in expected
        reference = normalize_answer(_answer_from_facts(world, meta))
        assert reference in {normalize_answer(a) for a in q.golden_answers}, q


def test_question_wording_names_the_start_entity(world):
    for q in world.questions:
        for hop in q.metadata["plan"]["hops"]:
            if hop["subject"]:
                assert hop["subject"] in q.question


def test_yes_no_and_same_country_answers_are_balanced(world):
    answers = Counter(
        q.golden_answers[0]
        for q in world.questions
        if q.metadata["plan"]["combine"]["op"] in ("same", "equals")
    )
    assert set(answers) == {"yes", "no"}
    assert 0.3 < answers["yes"] / sum(answers.values()) < 0.7


def test_aliases_cover_long_country_forms_populations_heights_and_unique_surnames(world):
    countries = world.entities_of("country")
    assert all(
        len(c.aliases) == 2
        and re.fullmatch(rf"({'|'.join(GOVERNMENT_FORMS)}) of {c.name}", c.aliases[1])
        for c in countries
    )
    surnames = Counter(p.name.split(" ")[1] for p in world.entities_of("person"))
    for person in world.entities_of("person"):
        surname = person.name.split(" ")[1]
        assert person.aliases == (
            (person.name, surname) if surnames[surname] == 1 else (person.name,)
        )
    by_type = {
        q.metadata["supporting_facts"][-1]["relation"]: q
        for q in world.questions
        if q.metadata["plan"]["combine"]["op"] == "last"
    }
    population = by_type["population"]
    assert population.golden_answers[1] == population.golden_answers[0].replace(",", "")
    height = by_type["height"]
    number = height.golden_answers[0].removesuffix(" cm")
    assert height.golden_answers == (f"{number} cm", number, f"{number} centimetres")


def test_reading_the_whole_corpus_recovers_exactly_the_fact_table(world):
    read = {
        (fact.subject, fact.relation, fact.value)
        for document in world.documents
        for relation in RELATIONS
        for fact in read_facts(document.contents, relation)
    }
    assert read == {(s, r, v) for (s, r), v in world.facts.items()}


def test_facts_are_spread_over_documents_and_every_phrasing_is_used(world):
    titles = Counter(d.contents.split("\n", 1)[0] for d in world.documents)
    assert max(titles.values()) == 3
    assert sum(count > 1 for count in titles.values()) > 0.2 * len(titles)
    corpus = "\n".join(d.contents for d in world.documents).lower()
    for relation in RELATIONS.values():
        for phrasing in relation.phrasings:
            for piece in re.split(r"\{[so]\}", phrasing):
                assert piece.strip(" .").lower() in corpus, (relation.name, phrasing)


def test_documents_stay_short_enough_for_the_search_tool_cut(world):
    assert max(len(" ".join(d.contents.split())) for d in world.documents) < 500


def test_distractors_share_names_with_supporting_documents(world):
    people = [p.name for p in world.entities_of("person")]
    surnames = Counter(name.split(" ")[1] for name in people)
    assert sum(surnames[name.split(" ")[1]] > 1 for name in people) > 0.5 * len(people)
    near_twins = [
        (a, b)
        for a in people
        for b in people
        if a < b
        and a.split(" ")[1] == b.split(" ")[1]
        and len(a) == len(b)
        and sum(x != y for x, y in zip(a, b, strict=True)) == 1
    ]
    assert len(near_twins) > 0.05 * len(people)
    cities = {c.name for c in world.entities_of("city")}
    assert any(org.name.split(" ")[0] in cities for org in world.entities_of("org"))

    name_words = {w for name in people for w in name.split(" ")} | cities
    title_of = {d.doc_id: d.contents.split("\n", 1)[0].strip('"') for d in world.documents}
    docs_with_word: dict[str, set[str]] = {}
    for doc_id, title in title_of.items():
        for word in set(title.split(" ")) & name_words:
            docs_with_word.setdefault(word, set()).add(doc_id)
    with_distractor = 0
    for q in world.questions:
        support = set(q.metadata["supporting_docs"])
        with_distractor += any(
            docs_with_word.get(word, set()) - support
            for doc_id in support
            for word in set(title_of[doc_id].split(" ")) & name_words
        )
    assert with_distractor > 0.7 * len(world.questions)


_word = st.from_regex(r"[A-Z][a-z]{3,8}", fullmatch=True)
_MENTIONS = {
    "person": st.tuples(_word, _word).map(lambda t: (f"{t[0]} {t[1]}",) * 2),
    "city": _word.map(lambda w: (w, w)),
    "country": st.tuples(_word, st.sampled_from(GOVERNMENT_FORMS), st.booleans()).map(
        lambda t: (f"the {t[1]} of {t[0]}" if t[2] else t[0], t[0])
    ),
    "org": st.tuples(_word, st.sampled_from(ORG_SUFFIXES)).map(lambda t: (f"{t[0]} {t[1]}",) * 2),
    "novel": st.from_regex(r"[A-Z][A-Za-z ]{2,20}[a-z]", fullmatch=True).map(
        lambda t: (f'"{t}"', t)
    ),
    "year": st.integers(1000, 2999).map(lambda n: (str(n), str(n))),
    "population": st.integers(1, 9_999_999).map(lambda n: (f"{n:,}", f"{n:,}")),
    "height": st.tuples(st.integers(100, 299), st.booleans()).map(
        lambda t: (f"{t[0]} {'centimetres' if t[1] else 'cm'}", f"{t[0]} cm")
    ),
}
_MENTIONS["film"] = _MENTIONS["album"] = _MENTIONS["novel"]


@st.composite
def _rendered_fact(draw):
    relation = draw(st.sampled_from(sorted(RELATIONS)))
    spec = RELATIONS[relation]
    subject_shown, subject = draw(_MENTIONS[draw(st.sampled_from(spec.subject_kinds))])
    value_shown, value = draw(_MENTIONS[spec.value_kind])
    phrasing = draw(st.sampled_from(spec.phrasings))
    return relation, subject, value, render_fact(phrasing, subject_shown, value_shown)


@settings(max_examples=300, deadline=None)
@given(_rendered_fact(), _rendered_fact())
def test_every_phrasing_reads_back_in_a_passage_as_the_search_tool_shows_it(fact, neighbour):
    relation, subject, value, sentence = fact
    passage = f'Doc 1: "{subject}" {neighbour[3]} {sentence} {neighbour[3]}'
    assert ReadFact(subject, relation, value) in set(read_facts(passage, relation))


def test_name_partitions_are_fixed_and_names_never_repeat():
    maker = NameMaker(random.Random(0), "test")
    words = [maker.word() for _ in range(300)]
    assert len(set(words)) == 300
    assert {partition_of(w) for w in words} == {"test"}
    near = maker.near(words[0])
    assert near is not None and len(near) == len(words[0])
    assert sum(a != b for a, b in zip(near, words[0], strict=True)) == 1
    with pytest.raises(ValueError, match="name source"):
        NameMaker(random.Random(0), "holdout")


def test_splits_come_from_disjoint_worlds():
    worlds = build_splits(seed=2, n_train=300, n_dev=60, n_test=80)
    assert {split: len(w.questions) for split, w in worlds.items()} == {
        "train": 300,
        "dev": 60,
        "test": 80,
    }
    train_tokens = set(
        re.findall(r"[A-Za-z]+", " ".join(d.contents for d in worlds["train"].documents))
    )
    train_text = "\n".join(d.contents for d in worlds["train"].documents)
    for split in ("dev", "test"):
        for entity in worlds[split].entities.values():
            assert not re.search(rf"\b{re.escape(entity.name)}\b", train_text), entity.name
            if entity.kind in ("person", "city", "country"):
                assert not set(entity.name.split(" ")) & train_tokens, entity.name
                assert {partition_of(w) for w in entity.name.split(" ")} == {split}
    assert not {d.doc_id for d in worlds["train"].documents} & {
        d.doc_id for d in worlds["test"].documents
    }
    assert build_splits(seed=2, n_train=300, n_dev=0, n_test=80).keys() == {"train", "test"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"partition": "holdout"}, "partition"),
        ({"n_people": 3}, "n_people"),
        ({"n_countries": 8, "n_cities": 5}, "n_cities"),
        ({"question_mix": (("trivia", 1.0),)}, "trivia"),
        ({"near_name_rate": 1.5}, "near_name_rate"),
    ],
)
def test_bad_configs_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        WorldConfig(**overrides)


def test_a_world_too_small_for_the_questions_says_how_to_fix_it():
    with pytest.raises(ValueError, match="sized_for"):
        generate_world(
            WorldConfig(
                n_questions=500,
                question_mix=(("single_hop", 1.0),),
                n_people=8,
                n_cities=4,
                n_countries=2,
                n_orgs=2,
                n_works=2,
            )
        )


def test_build_splits_refuses_per_split_fields():
    with pytest.raises(ValueError, match="name"):
        build_splits(seed=0, n_train=10, n_dev=0, n_test=0, name="mine")


def test_question_mix_selects_types():
    only = generate_world(WorldConfig(n_questions=50, question_mix=(("chain", 1.0),)))
    assert {q.metadata["type"] for q in only.questions} == {"chain"}
    assert all(q.metadata["hops"] == 3 for q in only.questions)


def test_export_round_trips_through_the_library_loaders(tmp_path):
    worlds = build_splits(seed=1, n_train=120, n_dev=0, n_test=40)
    written = export_splits(worlds, tmp_path)
    corpus = load_corpus(written["corpus"])
    assert corpus == [d for w in worlds.values() for d in w.documents]
    for split, world in worlds.items():
        for fmt in ("jsonl", "parquet"):
            loaded = load_questions(tmp_path / f"{split}.{fmt}")
            assert loaded == list(world.questions)
            assert [q.metadata for q in loaded] == [q.metadata for q in world.questions]
    manifest = json.loads(written["manifest"].read_text())
    assert manifest["splits"]["test"]["questions"] == 40
    assert manifest["splits"]["test"]["config"]["partition"] == "test"
    with pytest.raises(ValueError, match="formats"):
        export_splits(worlds, tmp_path, formats=("csv",))


def test_cli_generate_writes_the_files(tmp_path, capsys):
    out = tmp_path / "worlds"
    code = cli_main(
        ["worlds", "generate", "--out", str(out), "--seed", "4", "--n-train", "30", "--n-dev",
         "10", "--n-test", "10", "--formats", "jsonl"]
    )  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "corpus.jsonl",
        "dev.jsonl",
        "manifest.json",
        "test.jsonl",
        "train.jsonl",
    ]
    assert "train: 30 questions" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("sizes", "complaint"),
    [
        (["--n-train", "1000000000"], "ask for 1,000,001,500 questions; at most 1,000,000"),
        (["--n-train", "999000", "--n-dev", "1001"], "ask for 1,001,001 questions"),
    ],
)
def test_cli_generate_refuses_absurd_sizes_before_starting(tmp_path, sizes, complaint):
    out = tmp_path / "worlds"
    with pytest.raises(SystemExit) as refused:
        cli_main(["worlds", "generate", "--out", str(out), *sizes])
    assert str(refused.value).startswith("at2po worlds generate: --n-train ")
    assert complaint in str(refused.value)
    assert not out.exists()


# ---------------------------------------------------------------- shared-name worlds (the default)
def test_shared_worlds_draw_every_name_word_from_the_inventory():
    inventory = set(name_inventory())
    for seed in (0, 1):
        world = generate_world(WorldConfig(seed=seed, partition="shared", n_questions=20))
        words = [
            word
            for kind in ("person", "city", "country")
            for entity in world.entities_of(kind)
            for word in entity.name.split(" ")
        ]
        words += [entity.name.split(" ")[0] for entity in world.entities_of("org")]
        assert len(words) > 150 and set(words) <= inventory


def test_a_fact_of_one_shared_world_says_nothing_about_another():
    """Remembering every fact of 20 training worlds answers at most 2 % of 200 held-out
    questions (the strongest answer-without-searching baseline: exact hop-by-hop recall)."""
    sets = build_world_sets(0, {"train": 2000, "dev": 200}, questions_per_world=100)
    memory: dict[tuple[str, str], str] = {}
    for world in sets["train"]:
        memory.update(world.facts)
    right = 0
    for question in (q for world in sets["dev"] for q in world.questions):
        values: list[str] = []
        for hop in question.metadata["plan"]["hops"]:
            subject = hop["subject"] if hop["subject_ref"] < 0 else values[hop["subject_ref"]]
            values.append(memory.get((subject, hop["relation"]), ""))
        right += values[-1] in question.golden_answers
    assert right / 200 <= 0.02


def test_world_sets_are_many_worlds_each_with_its_own_corpus_and_seed():
    sets = build_world_sets(3, {"train": 250, "dev": 100}, questions_per_world=100, n_novel=30)
    assert [w.config.name for w in sets["train"]] == ["train000", "train001", "train002"]
    assert [len(w.questions) for w in sets["train"]] == [100, 100, 50]
    assert [w.config.seed for w in sets["dev"]] == [world_set_seed(3, "dev", 0)]
    assert sets["novel"][0].config.partition == "test" and len(sets["novel"][0].questions) == 30
    for group in sets.values():
        for world in group:
            assert {q.metadata["corpus"] for q in world.questions} == {world.config.name}
    seeds = [w.config.seed for group in sets.values() for w in group]
    assert len(set(seeds)) == len(seeds)


def test_held_out_worlds_never_reuse_a_demonstration_seed():
    from at2po.models.bootstrap import BootstrapConfig

    demo = BootstrapConfig()
    used = {s for seeds in demo.world_seeds().values() for s in seeds}
    for seed in range(3):
        held_out = {world_set_seed(seed, "dev", i) for i in range(50)}
        held_out |= {world_set_seed(seed, "test", i) for i in range(50)}
        assert not held_out & used


def test_the_environment_searches_each_question_in_its_own_world():
    from at2po.models.demos import worlds_env
    from at2po.tasks.search_env import SearchEnvConfig

    sets = build_world_sets(0, {"train": 100, "dev": 100})
    worlds = [*sets["train"], *sets["dev"]]
    env = worlds_env(worlds, SearchEnvConfig())
    for world in worlds:
        question = world.questions[0]
        subject = question.metadata["plan"]["hops"][0]["subject"]
        outcome = env.step(env.reset(question), f"<search>{subject}</search>")
        own_docs = {d.contents.split("\n", 1)[0] for d in world.documents}
        titles = [line.split('" ', 1)[0] + '"' for line in outcome.observation.splitlines()[1:-1]]
        titles = [t.split(": ", 1)[1] for t in titles]
        assert titles and all(title in own_docs for title in titles)
