"""The Search-R1-compatible retrieval server over real loopback HTTP, and its CLI."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from at2po.cli import retriever as retriever_cli
from at2po.tasks.datasets import QAExample
from at2po.tasks.retrieval import BM25Retriever, Document, HTTPRetriever, write_corpus
from at2po.tasks.retrieval.http_client import QueriesRejected
from at2po.tasks.retrieval.server import ServerLimits, create_app, serve_in_background
from at2po.tasks.search_env import SearchQAEnv
from at2po.tasks.search_tool import MESSAGES, SearchTool

CORPUS = [
    Document("maren", '"Maren Tolvik"\nMaren Tolvik was born in Bergen and became a cartographer.'),
    Document("oskar", '"Oskar Lindqvist"\nOskar Lindqvist composed operas in Uppsala.'),
    Document("bergen", '"Bergen"\nBergen is a harbour city on the west coast of Norway.'),
    Document("uppsala", '"Uppsala"\nUppsala is a university town north of Stockholm.'),
    Document("ada", '"Ada Brenner"\nAda Brenner designed suspension bridges across the Rhine.'),
    Document("rhine", '"Rhine"\nThe Rhine flows from the Alps to the North Sea.'),
]
QUERIES = ["Maren Tolvik birthplace", "operas Uppsala", "Rhine Alps", "Bergen Norway harbour"]
LIMITS = ServerLimits(
    default_topk=3, topk_max=5, max_queries=4, max_query_chars=60, max_passages=12
)


@pytest.fixture(scope="module")
def bm25() -> BM25Retriever:
    return BM25Retriever(CORPUS)


@pytest.fixture(scope="module")
def base_url(bm25):
    app = create_app(bm25, kind="bm25", corpus_size=len(CORPUS), limits=LIMITS)
    with serve_in_background(app) as url:
        yield url


def test_client_over_http_returns_the_in_process_passages(bm25, base_url):
    with HTTPRetriever(f"{base_url}/retrieve", timeout_s=5) as client:
        assert client.search(QUERIES, k=3) == bm25.search(QUERIES, k=3)
        assert client.search(["zzzz unknown"], k=2) == [[]]


def test_response_with_scores_has_the_search_r1_shape(bm25, base_url):
    body = {"queries": QUERIES[:2], "topk": 2, "return_scores": True}
    answer = httpx.post(f"{base_url}/retrieve", json=body).json()
    expected = [
        [{"document": {"id": p.doc_id, "contents": p.contents}, "score": p.score} for p in hits]
        for hits in bm25.search(QUERIES[:2], k=2)
    ]
    assert answer == {"result": expected}


def test_response_without_scores_lists_bare_documents(bm25, base_url):
    answer = httpx.post(f"{base_url}/retrieve", json={"queries": [QUERIES[0]]}).json()
    expected = [[{"id": p.doc_id, "contents": p.contents} for p in bm25.search(QUERIES[:1], 3)[0]]]
    assert answer == {"result": expected}


def test_single_query_form_defaults_to_three_passages(base_url):
    answer = httpx.post(f"{base_url}/retrieve", json={"query": "Bergen Uppsala Rhine"}).json()
    assert len(answer["result"]) == 1
    assert len(answer["result"][0]) == 3


def test_health_reports_kind_size_and_limits(base_url):
    health = httpx.get(f"{base_url}/health").json()
    assert health["status"] == "ok"
    assert health["retriever"] == "bm25"
    assert health["corpus_size"] == len(CORPUS)
    assert health["topk_max"] == LIMITS.topk_max


@pytest.mark.parametrize(
    ("request_kwargs", "status", "complaint"),
    [
        ({}, 422, "invalid request body"),
        ({"content": b"not json", "headers": {"content-type": "application/json"}}, 422, "JSON"),
        ({"json": {}}, 422, 'exactly one of "query" and "queries"'),
        ({"json": {"query": "a", "queries": ["b"]}}, 422, "exactly one"),
        ({"json": {"queries": []}}, 422, '"queries" is empty'),
        ({"json": {"query": "Bergen", "topk": 0}}, 422, '"topk" must be between 1 and 5'),
        ({"json": {"query": "Bergen", "topk": 10**6}}, 422, '"topk" must be between 1 and 5'),
        ({"json": {"query": "Bergen", "topk": "many"}}, 422, "topk"),
        ({"json": {"queries": ["a"] * 5}}, 413, "at most 4"),
        ({"json": {"queries": ["ok", "x" * 61]}}, 413, "query 1 has 61 characters"),
        ({"json": {"query": 17}}, 422, "query"),
        ({"json": {"query": "Bergen", "topk": True}}, 422, "topk"),
        ({"json": {"query": "Bergen", "topk": "3"}}, 422, "topk"),
        ({"json": {"query": "Bergen", "topk": 3.0}}, 422, "topk"),
        ({"json": {"query": "Bergen", "return_scores": "yes"}}, 422, "return_scores"),
        ({"json": {"query": "Bergen", "return_scores": 1}}, 422, "return_scores"),
        ({"json": {"queries": ["a"] * 4, "topk": 4}}, 413, "16 passages"),
        ({"content": b'{"query": "Bergen \xff"}'}, 422, "not UTF-8 (byte 18)"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(base_url, request_kwargs, status, complaint):
    response = httpx.post(f"{base_url}/retrieve", **request_kwargs)
    assert response.status_code == status
    assert complaint in response.json()["error"]


def test_oversized_body_is_refused_before_parsing(bm25):
    limits = ServerLimits(max_body_bytes=100)
    app = create_app(bm25, kind="bm25", corpus_size=len(CORPUS), limits=limits)
    with serve_in_background(app) as url:
        declared = httpx.post(f"{url}/retrieve", json={"queries": ["Bergen " * 30]})

        def chunks():  # no Content-Length: the limit must hold for streamed bodies too
            yield b'{"queries": ["'
            yield b"Bergen " * 30
            yield b'"]}'

        streamed = httpx.post(f"{url}/retrieve", content=chunks())
        small = httpx.post(f"{url}/retrieve", json={"query": "Bergen"})
    for response in (declared, streamed):
        assert response.status_code == 413
        assert "exceeds 100 bytes" in response.json()["error"]
    assert small.status_code == 200


def test_the_largest_allowed_request_is_answered(bm25, base_url):
    body = {"queries": QUERIES[:3], "topk": 4}  # 12 passages: exactly max_passages
    answer = httpx.post(f"{base_url}/retrieve", json=body)
    assert answer.status_code == 200
    assert len(answer.json()["result"]) == 3


@pytest.fixture(scope="module")
def impatient_url(bm25):
    """A server that gives each request head and body 0.5 s."""
    limits = ServerLimits(request_timeout_s=0.5)
    app = create_app(bm25, kind="bm25", corpus_size=len(CORPUS), limits=limits)
    with serve_in_background(app, limits=limits) as url:
        yield url


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = socket.create_connection((host, int(port)))
    connection.settimeout(30)
    return connection


def _raw_exchange(url: str, sent: bytes) -> bytes:
    """Send raw bytes; everything the server answers until it closes (socket timeout: 30 s)."""
    received = b""
    with _connect(url) as connection:
        connection.sendall(sent)
        while chunk := connection.recv(65536):
            received += chunk
    return received


HEAD_408 = b'{"error": "no complete request head within 0.5 s; closing"}'
BODY_408 = b"the request body did not arrive within 0.5 s"


@pytest.mark.parametrize(
    ("sent", "complaint"),
    [
        (b"", HEAD_408),  # a connection that never sends a request
        (b"POST /retrieve HTTP/1.1\r\nhost: x\r\n", HEAD_408),  # a head that never ends
        (b"POST /retrieve HTTP/1.1\r\nhost: x\r\ncontent-length: 9\r\n\r\n{", BODY_408),
    ],
)
def test_an_incomplete_request_gets_408_and_the_connection_closed(impatient_url, sent, complaint):
    answer = _raw_exchange(impatient_url, sent)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert complaint in answer


def test_an_unfinished_head_over_16_kib_gets_uvicorns_400(impatient_url):
    unfinished = b"GET /health HTTP/1.1\r\nhost: x\r\nx-padding: " + b"a" * 17_000
    answer = _raw_exchange(impatient_url, unfinished)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.endswith(b"Invalid HTTP request received.")


def test_a_keep_alive_connection_gets_the_head_deadline_again(impatient_url):
    request = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
    answer = _raw_exchange(impatient_url, request + b"GET /health HTTP/1.1\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.count(b"HTTP/1.1 ") == 2
    assert HEAD_408 in answer


def test_connections_over_the_limit_get_503(bm25):
    limits = ServerLimits(max_connections=3)
    app = create_app(bm25, kind="bm25", corpus_size=len(CORPUS), limits=limits)
    with serve_in_background(app, limits=limits) as url:
        idle = [_connect(url) for _ in range(3)]
        busy = httpx.get(f"{url}/health")
        for connection in idle:
            connection.close()
        served = httpx.get(f"{url}/health")
    assert busy.status_code == 503
    assert served.status_code == 200


def test_concurrent_clients_all_succeed(bm25, base_url):
    expected = bm25.search(QUERIES, k=3)
    client = HTTPRetriever(f"{base_url}/retrieve", timeout_s=10)

    def worker(seed: int) -> bool:
        return all(client.search(QUERIES, k=3) == expected for _ in range(10))

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(worker, range(8)))
    client.close()


def test_backend_failure_is_a_500_with_the_reason(bm25):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}/retrieve"
    proxy = HTTPRetriever(dead_url, timeout_s=0.5, retries=0)
    with serve_in_background(create_app(proxy, kind="http", corpus_size=0)) as url:
        response = httpx.post(f"{url}/retrieve", json={"query": "Bergen"})
    assert response.status_code == 500
    assert "RetrieverUnavailable" in response.json()["error"]


# ---------------------------------------------------------------- batches over the server's limits

HARBOUR = "Bergen is a harbour city on the west coast of Norway."
EXAMPLE = QAExample("q", "Which city is a harbour on the west coast of Norway?", ("Bergen",), "t")


@pytest.fixture(scope="module")
def default_limits_url(bm25):
    """A server with the CLI's default limits (1,024 queries per request)."""
    with serve_in_background(create_app(bm25, kind="bm25", corpus_size=len(CORPUS))) as url:
        yield url


def _search_env(url: str) -> SearchQAEnv:
    return SearchQAEnv(SearchTool(HTTPRetriever(f"{url}/retrieve", timeout_s=10), timeout_s=30))


def test_a_round_of_1025_searches_all_succeed(default_limits_url):
    env = _search_env(default_limits_url)
    states = [env.reset(EXAMPLE)] * 1025
    outcomes = env.step_batch(states, ["<search>Bergen harbour</search>"] * 1025)
    assert [outcome.info["problem"] for outcome in outcomes] == [None] * 1025
    assert all(HARBOUR in outcome.observation for outcome in outcomes)
    assert {outcome.state.tool_calls for outcome in outcomes} == {1}


def test_a_query_with_a_lone_surrogate_fails_alone(default_limits_url):
    env = _search_env(default_limits_url)
    texts = ["<search>Bergen harbour</search>", "<search>\ud800 X</search>"]
    texts.append("<search>Rhine</search>")
    outcomes = env.step_batch([env.reset(EXAMPLE)] * 3, texts)
    assert [outcome.info["problem"] for outcome in outcomes] == [None, "search_failed", None]
    assert outcomes[1].info["tool_failed"]
    assert MESSAGES["search_failed"] in outcomes[1].observation
    assert HARBOUR in outcomes[0].observation
    assert "The Rhine flows from the Alps" in outcomes[2].observation


def test_client_reads_the_server_limits_from_health(bm25):
    limits = ServerLimits(max_queries=5, max_passages=8)
    with serve_in_background(create_app(bm25, kind="bm25", corpus_size=6, limits=limits)) as url:
        client = HTTPRetriever(f"{url}/retrieve")
        assert client.batch_limit(1) == 5  # max_queries binds
        assert client.batch_limit(3) == 2  # 8 passages // 3 per query
        assert client.search(QUERIES * 3, k=3) == bm25.search(QUERIES * 3, k=3)


def test_client_splits_a_batch_the_server_refuses_with_413(bm25, base_url):
    client = HTTPRetriever(f"{base_url}/retrieve", max_batch=1000)  # believes in a larger limit
    queries = QUERIES * 3  # 12 queries; LIMITS takes 4 per request
    assert client.search(queries, k=2) == bm25.search(queries, k=2)


def test_a_query_the_server_refuses_alone_fails_alone(bm25, base_url):
    client = HTTPRetriever(f"{base_url}/retrieve", max_batch=1000)
    queries = [QUERIES[0], "Bergen " * 20, QUERIES[1]]  # the middle one is over 60 characters
    with pytest.raises(QueriesRejected) as rejected:
        client.search(queries, k=3)
    assert set(rejected.value.reasons) == {1}
    assert "query 0 has 140 characters" in rejected.value.reasons[1]
    expected = bm25.search([QUERIES[0], QUERIES[1]], k=3)
    assert rejected.value.results == [expected[0], None, expected[1]]


# ---------------------------------------------------------------- CLI


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    retriever_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["retriever", "serve", *argv])


def test_cli_builds_saves_then_loads_the_index(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(CORPUS, corpus)
    index = tmp_path / "index"
    built, size = retriever_cli.build_retriever(
        _serve_args("--corpus", str(corpus), "--index", str(index))
    )
    assert size == len(CORPUS)
    assert (index / "at2po_index.json").is_file()
    loaded, _ = retriever_cli.build_retriever(_serve_args("--index", str(index)))
    assert loaded.search(QUERIES, k=3) == built.search(QUERIES, k=3)


def test_cli_refuses_an_index_built_from_another_corpus(tmp_path):
    BM25Retriever(CORPUS).save(tmp_path / "index")
    other = tmp_path / "other.jsonl"
    write_corpus(CORPUS[:3], other)
    with pytest.raises(ValueError, match="different corpus"):
        retriever_cli.build_retriever(
            _serve_args("--corpus", str(other), "--index", str(tmp_path / "index"))
        )


def test_cli_refuses_an_index_holding_a_file_of_another_index(tmp_path):
    BM25Retriever(CORPUS).save(tmp_path / "index")
    BM25Retriever(CORPUS[:3] + CORPUS[:2:-1]).save(tmp_path / "other")  # same size, other order
    vocab = tmp_path / "index" / "bm25s" / "vocab.index.json"
    vocab.write_bytes((tmp_path / "other" / "bm25s" / "vocab.index.json").read_bytes())
    with pytest.raises(ValueError) as refused:  # run() turns it into SystemExit("at2po …: …")
        retriever_cli.build_retriever(_serve_args("--index", str(tmp_path / "index")))
    message = str(refused.value)
    assert message.startswith(f"{vocab} is not the file this index was saved with")
    assert "\n" not in message


def test_cli_without_corpus_or_index_says_what_is_missing(tmp_path):
    with pytest.raises(SystemExit, match="--corpus is required"):
        retriever_cli.run(_serve_args("--index", str(tmp_path / "empty")))
    with pytest.raises(SystemExit, match="does not exist"):
        retriever_cli.run(_serve_args("--corpus", str(tmp_path / "absent.jsonl")))


def test_cli_refuses_a_port_out_of_range_in_one_line(tmp_path):
    write_corpus(CORPUS, tmp_path / "corpus.jsonl")
    args = _serve_args("--corpus", str(tmp_path / "corpus.jsonl"), "--port", "99999")
    with pytest.raises(SystemExit) as refused:
        retriever_cli.run(args)
    assert str(refused.value) == (
        "at2po retriever serve: port 99999 is out of range; give a port from 1 to 65535 "
        "(0: any free)"
    )


def test_cli_refuses_a_port_in_use_before_building_the_index(tmp_path):
    index = tmp_path / "index"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = _serve_args("--corpus", str(tmp_path / "absent.jsonl"), "--index", str(index))
        args.port = port
        with pytest.raises(SystemExit, match=f"cannot listen on 127.0.0.1:{port} .*free port"):
            retriever_cli.run(args)
    assert not index.exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("stop_signal", "exit_status"), [(signal.SIGINT, 0), (signal.SIGTERM, -signal.SIGTERM)]
)
def test_cli_serves_then_drains_and_stops_on_a_signal(tmp_path, stop_signal, exit_status):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(CORPUS, corpus)
    port = _free_port()
    script = (
        "import argparse, sys\n"
        "from at2po.cli.retriever import add_parser, run\n"
        "parser = argparse.ArgumentParser()\n"
        "add_parser(parser.add_subparsers())\n"
        "sys.exit(run(parser.parse_args(sys.argv[1:])))\n"
    )
    command = [sys.executable, "-c", script, "retriever", "serve", "--corpus", str(corpus)]
    command += ["--port", str(port), "--topk-max", "4"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        health = _wait_for_health(f"http://127.0.0.1:{port}", server)
        assert health["corpus_size"] == len(CORPUS)
        assert health["topk_max"] == 4
        answer = httpx.post(f"http://127.0.0.1:{port}/retrieve", json={"query": QUERIES[0]})
        assert answer.json()["result"][0][0]["id"] == "maren"
    finally:
        server.send_signal(stop_signal)
        output = server.communicate(timeout=20)[0].decode()
    assert server.returncode == exit_status, output
    assert "Application shutdown complete" in output
    assert "Traceback" not in output


def _wait_for_health(url: str, process: subprocess.Popen, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {process.stdout.read().decode()}")
        try:
            return httpx.get(f"{url}/health", timeout=1).json()
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("server did not become healthy")


def test_request_model_documents_the_protocol():
    schema = create_app(BM25Retriever(CORPUS), kind="bm25", corpus_size=6).openapi()
    fields = schema["components"]["schemas"]["RetrieveRequest"]["properties"]
    assert set(fields) == {"query", "queries", "topk", "return_scores"}
