"""A retrieval server speaking Search-R1's HTTP protocol (FastAPI app, served by uvicorn).

``POST /retrieve`` takes ``{"queries": [str, ...]}`` (Search-R1, ATPO) or ``{"query": str}``
(skyrl-gym), an optional ``"topk"`` (default 3) and ``"return_scores"`` (default false), and answers
one list per query, best first::

    return_scores true:  {"result": [[{"document": {"id": "7", "contents": "…"}, "score": 8.1}, …]]}
    return_scores false: {"result": [[{"id": "7", "contents": "…"}, …]]}

which is the shape of Search-R1's ``retrieval_server.py`` in both cases. ``GET /health`` reports the
retriever kind and the corpus size. Bad requests get a 4xx JSON ``{"error": "..."}`` that says what
to change. Searches run in a worker-thread pool, so slow queries never block the event loop.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from at2po.tasks.retrieval.base import Passage, Retriever

logger = logging.getLogger(__name__)

_REQUEST_SHAPE = (
    'expected {"query": str} or {"queries": [str, ...]}, optionally "topk" (int) and '
    '"return_scores" (bool)'
)


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for; larger requests are refused with a 4xx answer."""

    default_topk: int = 3
    """Passages per query when the request gives no ``topk`` (Search-R1 and the papers use 3)."""
    topk_max: int = 100
    """Largest ``topk`` a request may ask for."""
    max_queries: int = 1024
    """Most queries in one request (Search-R1 clients send a whole rollout batch at once)."""
    max_query_chars: int = 2000
    """Longest query, in characters."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body, in bytes."""

    def __post_init__(self) -> None:
        if not 1 <= self.default_topk <= self.topk_max:
            raise ValueError(
                f"need 1 <= default_topk <= topk_max, got {self.default_topk} and {self.topk_max}"
            )
        if min(self.max_queries, self.max_query_chars, self.max_body_bytes) < 1:
            raise ValueError("max_queries, max_query_chars and max_body_bytes must be positive")


class RetrieveRequest(BaseModel):
    """Body of ``POST /retrieve``; unknown fields are ignored, as Search-R1's server does."""

    model_config = ConfigDict(extra="ignore")

    query: str | None = None
    queries: list[str] | None = None
    topk: int | None = None
    return_scores: bool = False


class _RequestProblem(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _checked_queries(request: RetrieveRequest, limits: ServerLimits) -> tuple[list[str], int]:
    if (request.query is None) == (request.queries is None):
        raise _RequestProblem(422, f'give exactly one of "query" and "queries"; {_REQUEST_SHAPE}')
    queries = [request.query] if request.query is not None else list(request.queries or [])
    if not queries:
        raise _RequestProblem(422, '"queries" is empty; send at least one query')
    if len(queries) > limits.max_queries:
        raise _RequestProblem(
            413,
            f"{len(queries)} queries in one request; this server takes at most "
            f"{limits.max_queries} (split the batch)",
        )
    for position, query in enumerate(queries):
        if len(query) > limits.max_query_chars:
            raise _RequestProblem(
                413,
                f"query {position} has {len(query)} characters; the limit is "
                f"{limits.max_query_chars} (shorten it)",
            )
    topk = limits.default_topk if request.topk is None else request.topk
    if not 1 <= topk <= limits.topk_max:
        raise _RequestProblem(422, f'"topk" must be between 1 and {limits.topk_max}, got {topk}')
    return queries, topk


def _hit_json(passage: Passage, with_score: bool) -> dict:
    document = {"id": passage.doc_id, "contents": passage.contents}
    return {"document": document, "score": passage.score} if with_score else document


def create_app(
    retriever: Retriever,
    *,
    kind: str,
    corpus_size: int,
    limits: ServerLimits | None = None,
) -> FastAPI:
    """The ASGI app serving ``retriever``; ``kind`` and ``corpus_size`` are reported by /health."""
    limits = limits or ServerLimits()
    app = FastAPI(title="at2po retrieval server", version="1")

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        return JSONResponse(
            {"error": f"invalid request body ({problems}); {_REQUEST_SHAPE}"}, status_code=422
        )

    @app.exception_handler(_RequestProblem)
    async def _bad_request(_: Request, problem: _RequestProblem) -> JSONResponse:
        return JSONResponse({"error": problem.message}, status_code=problem.status)

    @app.post("/retrieve")
    async def retrieve(request: RetrieveRequest) -> JSONResponse:
        queries, topk = _checked_queries(request, limits)
        try:
            hits = await run_in_threadpool(retriever.search, queries, topk)
        except Exception as error:  # the server answers every request, even when its backend fails
            logger.exception("retrieval failed")
            return JSONResponse(
                {"error": f"retrieval failed: {type(error).__name__}: {error}"}, status_code=500
            )
        result = [[_hit_json(p, request.return_scores) for p in passages] for passages in hits]
        return JSONResponse({"result": result})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "retriever": kind, "corpus_size": corpus_size, **asdict(limits)}

    app.add_middleware(_BodySizeLimit, max_bytes=limits.max_body_bytes)
    return app


class _BodySizeLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` with 413 before the app parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        advice = "send fewer or shorter queries"
        too_large = JSONResponse(
            {"error": f"request body exceeds {self.max_bytes} bytes; {advice}"}, status_code=413
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        buffered: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]

        async def replay() -> Message:
            return buffered.pop() if buffered else await receive()

        await self.app(scope, replay, send)


def warn_if_exposed(host: str) -> None:
    """Log a warning when ``host`` is not a loopback address: the server has no authentication."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        logger.warning(
            "binding the retrieval server to %s: it has no authentication, so anyone who can "
            "reach this address can query it; use 127.0.0.1 unless you need remote clients",
            host,
        )


def run_server(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` in the foreground until SIGINT or SIGTERM, then finish open requests and stop.

    After the graceful shutdown uvicorn re-raises the signal: SIGINT (Ctrl+C) then returns here
    quietly, SIGTERM ends the process with the usual "terminated by SIGTERM" status.
    """
    warn_if_exposed(host)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", access_log=False, timeout_graceful_shutdown=5
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


@contextlib.contextmanager
def serve_in_background(
    app: FastAPI, *, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 10.0
) -> Iterator[str]:
    """Serve ``app`` from a daemon thread on ``host:port`` (0 = a free port); yield its base URL.

    Leaving the block asks uvicorn to stop and waits for the thread, so tests and benchmarks get
    a real loopback HTTP server without a subprocess.
    """
    warn_if_exposed(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only then, and
    # without it Nagle's algorithm meets delayed ACKs and every response waits ~40 ms.
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    bound_port = listener.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="retrieval-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            listener.close()
            raise RuntimeError(f"the retrieval server did not start on {host}:{bound_port}")
        time.sleep(0.01)
    url_host = f"[{host}]" if ":" in host else host
    try:
        yield f"http://{url_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()
