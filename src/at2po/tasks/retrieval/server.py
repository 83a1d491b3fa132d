"""A retrieval server speaking Search-R1's HTTP protocol (FastAPI app, served by uvicorn).

``POST /retrieve`` takes ``{"queries": [str, ...]}`` (Search-R1, ATPO) or ``{"query": str}``
(skyrl-gym), an optional ``"topk"`` (default 3) and ``"return_scores"`` (default false), and answers
one list per query, best first::

    return_scores true:  {"result": [[{"document": {"id": "7", "contents": "…"}, "score": 8.1}, …]]}
    return_scores false: {"result": [[{"id": "7", "contents": "…"}, …]]}

which is the shape of Search-R1's ``retrieval_server.py`` in both cases. ``GET /health`` reports the
retriever kind, the corpus size and the :class:`ServerLimits` (clients read ``max_queries`` and
``max_passages`` there to size their batches). Bad requests get a 4xx JSON ``{"error": "..."}``
that says what to change; fields must have their JSON type (``"topk": "3"`` or ``true`` is
refused, not coerced). Searches and the JSON encoding of their answers run in a worker-thread
pool, so neither a slow query nor a large answer blocks the event loop.

Limits for use beyond loopback: the request body size, the passages per response, a deadline for
each request's head (enforced in the connection protocol, since uvicorn has none: its keep-alive
timer restarts on every byte) and one for its body (408), and uvicorn's own ``limit_concurrency``
(503 beyond ``max_connections``). The error contract is tabled in docs/tasks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
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
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

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
    max_passages: int = 10_240
    """Most passages one response may hold (queries × topk): a response is at most this many
    times the longest document (plus ids and scores)."""
    request_timeout_s: float = 10.0
    """Seconds a client has to send a request's head, and again its body (408 after that)."""
    max_connections: int = 128
    """Open connections (or requests in flight) beyond which new requests get 503 (uvicorn's
    ``limit_concurrency``)."""

    def __post_init__(self) -> None:
        if not 1 <= self.default_topk <= self.topk_max:
            raise ValueError(
                f"need 1 <= default_topk <= topk_max, got {self.default_topk} and {self.topk_max}"
            )
        counts = {
            "max_queries": self.max_queries,
            "max_query_chars": self.max_query_chars,
            "max_body_bytes": self.max_body_bytes,
            "max_passages": self.max_passages,
            "max_connections": self.max_connections,
        }
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")


class RetrieveRequest(BaseModel):
    """Body of ``POST /retrieve``; unknown fields are ignored, as Search-R1's server does.

    Strict: every field must have its JSON type (``"topk": "3"``, ``"topk": true`` and
    ``"return_scores": "yes"`` are refused, not read as 3, 1 and true).
    """

    model_config = ConfigDict(extra="ignore", strict=True)

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
    if len(queries) * topk > limits.max_passages:
        raise _RequestProblem(
            413,
            f"{len(queries)} queries × topk {topk} = {len(queries) * topk} passages; this server "
            f"answers at most {limits.max_passages} per request (send fewer queries or a "
            "smaller topk)",
        )
    return queries, topk


_COMPACT_JSON: dict = {"ensure_ascii": False, "separators": (",", ":")}


def _hit_json(passage: Passage, with_score: bool) -> dict:
    document = {"id": passage.doc_id, "contents": passage.contents}
    return {"document": document, "score": passage.score} if with_score else document


def _search_as_json(
    retriever: Retriever, queries: list[str], topk: int, with_scores: bool
) -> bytes:
    """The encoded ``{"result": ...}`` answer, for a worker thread: both parts can be slow.

    Each query's list is encoded by its own ``json.dumps`` call: one call over a whole answer of
    megabytes holds the GIL throughout (tens of milliseconds), stalling the event loop even
    from another thread; between small calls the interpreter can switch to the loop.
    """
    hits = retriever.search(queries, topk)
    lists = [
        json.dumps([_hit_json(p, with_scores) for p in passages], **_COMPACT_JSON)
        for passages in hits
    ]
    return f'{{"result":[{",".join(lists)}]}}'.encode()


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
        return _error_response(422, f"invalid request body ({problems}); {_REQUEST_SHAPE}")

    @app.exception_handler(_RequestProblem)
    async def _bad_request(_: Request, problem: _RequestProblem) -> JSONResponse:
        return _error_response(problem.status, problem.message)

    @app.post("/retrieve")
    async def retrieve(request: RetrieveRequest) -> Response:
        queries, topk = _checked_queries(request, limits)
        try:
            answer = await run_in_threadpool(
                _search_as_json, retriever, queries, topk, request.return_scores
            )
        except Exception as error:  # the server answers every request, even when its backend fails
            logger.exception("retrieval failed")
            return _error_response(500, f"retrieval failed: {type(error).__name__}: {error}")
        return Response(answer, media_type="application/json")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "retriever": kind, "corpus_size": corpus_size, **asdict(limits)}

    app.add_middleware(
        _BodyGuard, max_bytes=limits.max_body_bytes, timeout_s=limits.request_timeout_s
    )
    return app


def _error_response(status: int, message: str) -> JSONResponse:
    """The server's error answer: ``{"error": message}`` with ``status``."""
    return JSONResponse({"error": message}, status_code=status)


class _BodyGuard:
    """ASGI middleware: read the whole request body before the app sees it, and answer

    413 when it exceeds ``max_bytes`` (by its Content-Length or as it streams in), 408 when it
    does not arrive within ``timeout_s``, 422 when it is not UTF-8. A client that disconnects
    mid-body gets no answer and the app never runs.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return
        body = await self._checked_body(receive)
        if isinstance(body, Response):
            await body(scope, receive, send)
            return
        if body is None:  # the client went away
            return
        buffered: list[Message] = [{"type": "http.request", "body": body}]

        async def replay() -> Message:
            return buffered.pop() if buffered else await receive()

        await self.app(scope, replay, send)

    async def _checked_body(self, receive: Receive) -> bytes | Response | None:
        """The UTF-8 body read within the deadline, else the error answer; None on a disconnect."""
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.timeout_s)
        except asyncio.TimeoutError:
            return _error_response(
                408, f"the request body did not arrive within {self.timeout_s:g} s; send it at once"
            )
        if not isinstance(body, bytes):
            return body
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as error:
            return _error_response(
                422, f"the request body is not UTF-8 (byte {error.start}); send UTF-8 JSON"
            )
        return body

    async def _read_body(self, receive: Receive) -> bytes | Response | None:
        """The body; a 413 response when it grows past the limit; None on a disconnect."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return self._too_large()
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> JSONResponse:
        return _error_response(
            413, f"request body exceeds {self.max_bytes} bytes; send fewer or shorter queries"
        )


class _HeadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 connection protocol plus a deadline for each request head.

    uvicorn closes idle keep-alive connections but restarts that timer on every byte, so a
    client sending its head slowly (or a connection that never sends one) is kept forever. Here
    a connection waiting for a request head (when opened, and after each response) gets
    ``head_timeout_s`` seconds to complete it; then it is answered 408 and closed. Subclasses
    set ``head_timeout_s`` (:func:`_protocol_with_head_deadline`).
    """

    head_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if not self._awaiting_head():
            self._disarm_head_deadline()

    def on_response_complete(self) -> None:
        self._arm_head_deadline()  # before super(): it handles a pipelined request at once
        super().on_response_complete()

    def _awaiting_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_deadline_passed)

    def _disarm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline_passed(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._awaiting_head():
            return
        body = json.dumps(
            {"error": f"no complete request head within {self.head_timeout_s:g} s; closing"}
        ).encode()
        head = (
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


def _protocol_with_head_deadline(timeout_s: float) -> type[H11Protocol]:
    """A :class:`_HeadDeadlineProtocol` class whose head deadline is ``timeout_s`` seconds."""
    return type("HeadDeadlineProtocol", (_HeadDeadlineProtocol,), {"head_timeout_s": timeout_s})


def _uvicorn_config(app: FastAPI, limits: ServerLimits, **options: object) -> uvicorn.Config:
    """uvicorn settings shared by :func:`run_server` and :func:`serve_in_background`."""
    return uvicorn.Config(
        app,
        http=_protocol_with_head_deadline(limits.request_timeout_s),
        limit_concurrency=limits.max_connections,
        access_log=False,
        **options,  # type: ignore[arg-type]
    )


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


def open_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: any free one) for uvicorn to listen on.

    Binding before a slow index build makes a bad ``--port`` fail at once. Raises ValueError
    naming the address and the fix when the port is out of range or cannot be bound. Warns when
    ``host`` is not a loopback address (:func:`warn_if_exposed`).
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range; give a port from 1 to 65535 (0: any free)")
    warn_if_exposed(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only then, and
    # without it Nagle's algorithm meets delayed ACKs and every response waits ~40 ms.
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise ValueError(
            f"cannot listen on {host}:{port} ({error.strerror or error}); give a free port and "
            "an address of this machine"
        ) from error
    return listener


def run_server(
    app: FastAPI, listener: socket.socket, *, limits: ServerLimits | None = None
) -> None:
    """Serve ``app`` on ``listener`` (:func:`open_listener`) in the foreground until SIGINT or
    SIGTERM, then finish open requests and stop.

    After the graceful shutdown uvicorn re-raises the signal: SIGINT (Ctrl+C) then returns here
    quietly, SIGTERM ends the process with the usual "terminated by SIGTERM" status.
    """
    config = _uvicorn_config(
        app, limits or ServerLimits(), log_level="info", timeout_graceful_shutdown=5
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[listener])


@contextlib.contextmanager
def serve_in_background(
    app: FastAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout_s: float = 10.0,
    limits: ServerLimits | None = None,
) -> Iterator[str]:
    """Serve ``app`` from a daemon thread on ``host:port`` (0: a free port); yield its base URL.

    Leaving the block asks uvicorn to stop and waits for the thread, so tests and benchmarks get
    a real loopback HTTP server without a subprocess.
    """
    listener = open_listener(host, port)
    bound_port = listener.getsockname()[1]
    config = _uvicorn_config(
        app, limits or ServerLimits(), log_level="warning", timeout_graceful_shutdown=2
    )
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
