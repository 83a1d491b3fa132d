"""``at2po retriever serve``: serve a corpus over Search-R1's ``POST /retrieve`` protocol.

    at2po retriever serve --corpus wiki.jsonl --index runs/wiki-bm25 --port 8000

BM25 (default): ``--index DIR`` caches the built index; later runs load it (``--corpus`` may then be
left out; when given, it must be the corpus the index was built from). Dense: ``--index DIR`` is
where the corpus embeddings are cached.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from at2po.tasks.retrieval.base import Retriever

_RETRIEVERS = ("bm25", "dense")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    retriever = subparsers.add_parser(
        "retriever", help="retrieval server for the search tool (Search-R1 /retrieve protocol)"
    )
    commands = retriever.add_subparsers(dest="retriever_command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve a JSONL corpus over HTTP",
        description="Serve a JSONL corpus ({'id', 'contents'} per line) at POST /retrieve.",
    )
    serve.add_argument("--corpus", help="JSONL corpus, one {'id', 'contents'} object per line")
    serve.add_argument(
        "--index",
        metavar="DIR",
        help="bm25: where the index is saved and loaded from; dense: the embedding cache",
    )
    serve.add_argument("--retriever", choices=_RETRIEVERS, default="bm25", help="(default: bm25)")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)"
    )
    serve.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    serve.add_argument(
        "--topk", type=int, default=3, help="passages per query when a request gives none (3)"
    )
    serve.add_argument("--topk-max", type=int, default=100, help="largest topk a request may ask")
    serve.add_argument(
        "--max-queries", type=int, default=1024, help="most queries in one request (1024)"
    )
    serve.add_argument(
        "--max-query-chars", type=int, default=2000, help="longest query, in characters (2000)"
    )
    serve.add_argument(
        "--max-passages",
        type=int,
        default=10_240,
        help="most passages in one response, queries × topk (10240)",
    )
    serve.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time a client has to send a request's head, and again its body (10)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=128,
        help="open connections beyond which requests get 503 (128)",
    )
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build or load the retriever, then serve until interrupted."""
    from at2po.tasks.retrieval.server import ServerLimits, create_app, open_listener, run_server

    try:
        limits = ServerLimits(
            default_topk=args.topk,
            topk_max=args.topk_max,
            max_queries=args.max_queries,
            max_query_chars=args.max_query_chars,
            max_passages=args.max_passages,
            request_timeout_s=args.request_timeout,
            max_connections=args.max_connections,
        )
        listener = open_listener(args.host, args.port)  # before a slow build: fail fast
        retriever, corpus_size = build_retriever(args)
    except (OSError, ValueError, ImportError) as error:
        raise SystemExit(f"at2po retriever serve: {error}") from error
    app = create_app(retriever, kind=args.retriever, corpus_size=corpus_size, limits=limits)
    port = listener.getsockname()[1]
    print(f"serving {corpus_size} documents ({args.retriever}) at http://{args.host}:{port}")
    run_server(app, listener, limits=limits)
    return 0


def build_retriever(args: argparse.Namespace) -> tuple[Retriever, int]:
    """The retriever ``serve`` options describe and its corpus size; ValueError says what is off."""
    from at2po.tasks.retrieval.corpus import documents_fingerprint, load_corpus

    if args.retriever == "dense":
        if not args.corpus:
            raise ValueError("--retriever dense needs --corpus")
        from at2po.tasks.retrieval.dense import DenseRetriever

        documents = load_corpus(args.corpus)
        return DenseRetriever(documents, cache_dir=args.index), len(documents)

    from at2po.tasks.retrieval.bm25 import BM25Retriever, has_saved_index

    if args.index and has_saved_index(args.index):
        started = time.perf_counter()
        retriever = BM25Retriever.load(args.index)
        print(f"loaded BM25 index {args.index} in {time.perf_counter() - started:.1f} s")
        if args.corpus and documents_fingerprint(load_corpus(args.corpus)) != documents_fingerprint(
            retriever.documents
        ):
            raise ValueError(
                f"the index in {args.index} was built from a different corpus than "
                f"{args.corpus}; delete {args.index} to rebuild it, or pass another --index"
            )
        return retriever, len(retriever.documents)
    if not args.corpus:
        where = f"no index in {args.index}" if args.index else "no --index given"
        raise ValueError(f"--corpus is required ({where})")
    documents = load_corpus(args.corpus)
    started = time.perf_counter()
    retriever = BM25Retriever(documents)
    print(
        f"built BM25 index over {len(documents)} documents in {time.perf_counter() - started:.1f} s"
    )
    if args.index:
        retriever.save(args.index)
        print(f"saved the index to {args.index}")
    return retriever, len(documents)
