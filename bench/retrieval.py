"""Retrieval benchmark: BM25 build/save/load time, query latency in process and over loopback HTTP.

Prints one JSON object per measurement. Targets: in-process p50 <= 2 ms per query at 100k documents;
the server answers 1,000 requests from 16 concurrent clients with zero errors. ``server_stall``:
how long one client's ``GET /health`` waits while another fetches 1,024-query answers (topk 10:
the largest the server allows by default; topk 100: the request of issue 16, now refused).

    .venv/bin/python bench/retrieval.py                      # 100k documents from synthetic worlds
    .venv/bin/python bench/retrieval.py --docs 20000 --source templates

Documents come from the synthetic-world generator (several worlds of ~25k documents each, so the
build stays fast) or, with ``--source templates``, from a simple biography template. Queries are
built from the documents themselves (title plus three content words, like an agent's query), so
``recall_at_3`` says how often the source document comes back in the top 3.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from at2po.tasks.retrieval.bm25 import BM25Retriever
from at2po.tasks.retrieval.corpus import Document

PEOPLE_PER_WORLD = 10_000  # about 25k documents per world; much larger worlds generate slowly


def world_documents(n_docs: int, seed: int) -> list[Document]:
    from at2po.tasks.worlds.generator import WorldConfig, generate_world

    documents: list[Document] = []
    world_index = 0
    while len(documents) < n_docs:
        n = PEOPLE_PER_WORLD
        config = WorldConfig(
            seed=seed + world_index,
            name=f"bench{world_index}",
            n_people=n,
            n_cities=n // 6,
            n_countries=n // 60,
            n_orgs=n // 5,
            n_works=int(n / 2.5),
            n_questions=0,
        )
        documents.extend(generate_world(config).documents)
        world_index += 1
    return documents[:n_docs]


def template_documents(n_docs: int, seed: int) -> list[Document]:
    rng = random.Random(seed)
    syllables = ["ka", "ri", "mo", "len", "tas", "vor", "eli", "dun", "sa", "bre", "nik", "ol"]
    jobs = ["painter", "surveyor", "chemist", "pilot", "composer", "judge", "botanist", "mason"]

    def name() -> str:
        return "".join(rng.choice(syllables) for _ in range(3)).capitalize()

    cities = [name() for _ in range(2000)]
    documents = []
    for i in range(n_docs):
        person = f"{name()} {name()}"
        text = (
            f"{person} was born in {rng.choice(cities)} in {rng.randint(1800, 2000)}. "
            f"{person} worked as a {rng.choice(jobs)} in {rng.choice(cities)} and married "
            f"{name()} {name()}."
        )
        documents.append(Document(f"t{i:07d}", f'"{person}"\n{text}'))
    return documents


def query_for(document: Document, rng: random.Random) -> str:
    title, _, body = document.contents.partition("\n")
    words = [w.strip(".,") for w in body.split() if len(w.strip(".,")) > 3]
    return " ".join([title.strip('"'), *rng.sample(words, min(3, len(words)))])


def percentile(values_ms: list[float], q: float) -> float:
    ordered = sorted(values_ms)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def emit(**record: object) -> None:
    print(json.dumps({"bench": "retrieval", **record}), flush=True)


def bench_in_process(retriever: BM25Retriever, queries: list[str], sources: list[str], k: int):
    latencies_ms, hits_at_k = [], 0
    for query, source in zip(queries, sources, strict=True):
        started = time.perf_counter()
        passages = retriever.search([query], k)[0]
        latencies_ms.append((time.perf_counter() - started) * 1e3)
        hits_at_k += any(p.doc_id == source for p in passages)
    emit(
        measurement="bm25_query_in_process",
        queries=len(queries),
        k=k,
        p50_ms=round(percentile(latencies_ms, 0.5), 3),
        p99_ms=round(percentile(latencies_ms, 0.99), 3),
        mean_ms=round(statistics.fmean(latencies_ms), 3),
        recall_at_3=round(hits_at_k / len(queries), 3),
        target_p50_ms=2.0,
    )
    started = time.perf_counter()
    retriever.search(queries, k)
    emit(
        measurement="bm25_query_batched",
        queries=len(queries),
        k=k,
        ms_per_query=round((time.perf_counter() - started) * 1e3 / len(queries), 3),
    )


def bench_server(index_dir: str, queries: list[str], requests: int, clients: int, k: int):
    """Serve the saved index with ``at2po retriever serve`` in its own process; clients here."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "at2po.cli.main", "retriever", "serve"]
    command += ["--index", index_dir, "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base_url, server)
        latencies_ms, errors, wall_s = hammer(base_url, queries, requests, clients, k)
        stalls = [quiet_probes(base_url), *(stall(base_url, queries, topk) for topk in (10, 100))]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    emit(
        measurement="server_loopback",
        requests=requests,
        clients=clients,
        k=k,
        p50_ms=round(percentile(latencies_ms, 0.5), 3),
        p99_ms=round(percentile(latencies_ms, 0.99), 3),
        throughput_rps=round(requests / wall_s, 1),
        errors=len(errors),
        first_errors=errors[:3],
    )
    for record in stalls:
        emit(measurement="server_stall", **record)


def wait_until_healthy(base_url: str, server: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            httpx.get(f"{base_url}/health", timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"the server at {base_url} did not become healthy in {timeout_s} s")


def hammer(base_url: str, queries: list[str], requests: int, clients: int, k: int):
    """``requests`` single-query POSTs spread over ``clients`` threads, one connection each."""
    latencies_ms: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop(client_index: int) -> None:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            for request_index in range(client_index, requests, clients):
                query = queries[request_index % len(queries)]
                body = {"query": query, "topk": k, "return_scores": True}
                started = time.perf_counter()
                try:
                    response = client.post("/retrieve", json=body)
                    ok = response.status_code == 200 and len(response.json()["result"]) == 1
                    problem = f"HTTP {response.status_code}"
                except httpx.HTTPError as error:
                    ok, problem = False, repr(error)
                elapsed_ms = (time.perf_counter() - started) * 1e3
                with lock:
                    latencies_ms.append(elapsed_ms)
                    if not ok:
                        errors.append(problem)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(client_loop, range(clients)))
    return latencies_ms, errors, time.perf_counter() - started


def stall(base_url: str, queries: list[str], topk: int, repeats: int = 5) -> dict:
    """``GET /health`` latency on one connection while another POSTs 1,024 queries at ``topk``
    ``repeats`` times (a server that encodes answers on its event loop stalls the probe)."""
    body = {"queries": [queries[i % len(queries)] for i in range(1024)], "topk": topk}
    body["return_scores"] = True
    answers: list[tuple[int, int, float]] = []
    probe_ms: list[float] = []
    done = threading.Event()

    def fetch_big_answers() -> None:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            for _ in range(repeats):
                started = time.perf_counter()
                response = client.post("/retrieve", json=body)
                elapsed_ms = (time.perf_counter() - started) * 1e3
                answers.append((response.status_code, len(response.content), elapsed_ms))
        done.set()

    def probe() -> None:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            while not (done.is_set() and probe_ms):  # at least one probe
                started = time.perf_counter()
                client.get("/health").raise_for_status()
                probe_ms.append((time.perf_counter() - started) * 1e3)
                time.sleep(0.002)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(probe), pool.submit(fetch_big_answers)]:
            future.result()
    return {
        "queries": 1024,
        "topk": topk,
        "request_bytes": len(json.dumps(body)),
        "status": sorted({status for status, _, _ in answers}),
        "response_bytes": max(size for _, size, _ in answers),
        "big_request_p50_ms": round(percentile([ms for _, _, ms in answers], 0.5), 1),
        **probe_summary(probe_ms),
    }


def probe_summary(probe_ms: list[float]) -> dict:
    return {
        "probes": len(probe_ms),
        "probe_p50_ms": round(percentile(probe_ms, 0.5), 2),
        "probe_p99_ms": round(percentile(probe_ms, 0.99), 1),
        "probe_max_ms": round(max(probe_ms), 1),
    }


def quiet_probes(base_url: str, probes: int = 500) -> dict:
    """``GET /health`` latency with no other client: the machine's noise floor for ``stall``."""
    probe_ms = []
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for _ in range(probes):
            started = time.perf_counter()
            client.get("/health").raise_for_status()
            probe_ms.append((time.perf_counter() - started) * 1e3)
            time.sleep(0.002)
    return {"topk": None, **probe_summary(probe_ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000, help="corpus size (100000)")
    parser.add_argument("--source", choices=("worlds", "templates"), default="worlds")
    parser.add_argument("--queries", type=int, default=1000, help="in-process queries (1000)")
    parser.add_argument("--requests", type=int, default=1000, help="HTTP requests (1000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients (16)")
    parser.add_argument("--k", type=int, default=3, help="passages per query (3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    make = world_documents if args.source == "worlds" else template_documents
    documents = make(args.docs, args.seed)
    emit(
        measurement="corpus",
        source=args.source,
        docs=len(documents),
        mean_chars=round(statistics.fmean(len(d.contents) for d in documents), 1),
        seconds=round(time.perf_counter() - started, 2),
        machine=platform.processor() or platform.machine(),
    )

    started = time.perf_counter()
    retriever = BM25Retriever(documents)
    emit(
        measurement="bm25_build",
        docs=len(documents),
        seconds=round(time.perf_counter() - started, 2),
    )

    rng = random.Random(args.seed)
    picked = rng.sample(documents, min(args.queries, len(documents)))
    queries = [query_for(d, rng) for d in picked]
    bench_in_process(retriever, queries, [d.doc_id for d in picked], args.k)

    with tempfile.TemporaryDirectory() as index_dir:
        started = time.perf_counter()
        retriever.save(index_dir)
        emit(measurement="bm25_save", seconds=round(time.perf_counter() - started, 2))
        started = time.perf_counter()
        BM25Retriever.load(index_dir)
        emit(measurement="bm25_load", seconds=round(time.perf_counter() - started, 2))
        bench_server(index_dir, queries, args.requests, args.clients, args.k)


if __name__ == "__main__":
    main()
