"""A :class:`Retriever` that asks a server speaking Search-R1's ``POST /retrieve`` protocol.

Request ``{"queries": [...], "topk": k, "return_scores": true}``; response
``{"result": [[{"document": {"id": ..., "contents": ...}, "score": ...}, ...], ...]}`` with one list
per query (servers that leave out scores send the bare documents; both are read). Works with
``at2po retriever serve`` and with Search-R1/FlashRAG-style servers.

Connection failures, timeouts and 5xx answers are retried with exponential backoff
(``backoff_s · 2^attempt``, capped); when every attempt fails the call raises
:class:`RetrieverUnavailable`, whose message names the URL and how to start a server.

A batch larger than the server takes is split: the client reads the server's limits once from
``GET /health`` next to the ``/retrieve`` URL (``max_queries`` and ``max_passages``, as
``at2po retriever serve`` reports them; servers without them are sent whole batches), sends
chunks of at most that many queries, and splits any chunk the server still refuses with 413 in
halves until it is accepted. A query the server refuses on its own (413 for a single query) and
a query that cannot be sent (not encodable as UTF-8, e.g. a lone surrogate) fail alone: the call
raises :class:`QueriesRejected`, which carries the passages of every other query.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import httpx

from at2po.tasks.retrieval.base import Passage, QueryFailures, check_search_args

_RETRYABLE_STATUS = frozenset({500, 502, 503, 504})


class RetrievalError(RuntimeError):
    """A retrieval request failed; the subclasses say whether to fix the server or the request."""


class RetrieverUnavailable(RetrievalError):
    """The server could not be reached or kept failing (connection, timeout, 5xx) after retries."""


class RetrievalRejected(RetrievalError):
    """The server refused the request as invalid (a 4xx answer); retrying would not help.

    ``status`` is the HTTP status of the refusal (0 when the request could not be sent at all).
    """

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class QueriesRejected(RetrievalRejected, QueryFailures):
    """Some queries were refused or could not be sent; ``results`` holds the others' passages."""

    def __init__(self, message: str, results: list[list[Passage] | None], reasons: dict[int, str]):
        QueryFailures.__init__(self, message, results, reasons)
        self.status = 0


class HTTPRetriever:
    """Client of a ``/retrieve`` endpoint; thread-safe (one pooled ``httpx.Client``)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000/retrieve",
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.25,
        max_backoff_s: float = 2.0,
        max_batch: int | None = None,
    ):
        """``max_batch``: most queries per request; None reads the server's limits from its
        ``/health`` (see the module docstring)."""
        if not url.startswith(("http://", "https://")):
            raise ValueError(
                f"retriever URL {url!r} must start with http:// or https://, "
                "e.g. http://127.0.0.1:8000/retrieve"
            )
        if retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError("need retries >= 0, timeout_s > 0 and backoff_s >= 0")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.url = url
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s))
        self._server_limits: dict[str, int] | None = None  # read from /health when needed
        self._max_batch = max_batch
        self._limits_lock = threading.Lock()

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Passages for every query, in as many ``/retrieve`` calls as the server's limits need.

        Raises :class:`RetrievalError` subclasses: :class:`QueriesRejected` when only some
        queries failed (it carries the passages of the others).
        """
        check_search_args(queries, k)
        if not queries:
            return []
        results: list[list[Passage] | None] = [None] * len(queries)
        reasons = {i: why for i, query in enumerate(queries) if (why := _unsendable(query))}
        sendable = [i for i in range(len(queries)) if i not in reasons]
        chunk = self.batch_limit(k) or len(sendable) or 1
        for start in range(0, len(sendable), chunk):
            self._search_splitting(queries, sendable[start : start + chunk], k, results, reasons)
        if reasons:
            first = min(reasons)
            raise QueriesRejected(
                f"{len(reasons)} of {len(queries)} queries failed (query {first}: "
                f"{reasons[first]}); the others were answered",
                results,
                reasons,
            )
        return results  # type: ignore[return-value]  # no None is left without a reason

    def batch_limit(self, k: int) -> int | None:
        """Most queries one request may carry at ``topk=k``: ``max_batch`` if given, else what
        the server's ``/health`` reports (None when it reports no limit)."""
        if self._max_batch is not None:
            return self._max_batch
        limits = self._limits_from_health()
        bounds = [limits["max_queries"]] if "max_queries" in limits else []
        if "max_passages" in limits:
            bounds.append(max(1, limits["max_passages"] // k))
        return min(bounds, default=None)

    def _limits_from_health(self) -> dict[str, int]:
        """The server's integer limits from ``GET /health``, read once; {} when it has none."""
        with self._limits_lock:
            if self._server_limits is None:
                self._server_limits = self._fetch_health_limits()
            return self._server_limits or {}

    def _fetch_health_limits(self) -> dict[str, int] | None:
        """Limits from /health; {} when the server answers without them, None when it could not
        be asked (asked again on the next search)."""
        base, _, endpoint = self.url.rpartition("/")
        if endpoint != "retrieve":
            return {}
        try:
            response = self._client.get(f"{base}/health")
        except httpx.TransportError:
            return None
        try:
            body = response.json() if response.is_success else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            return {}
        return {
            name: value
            for name, value in body.items()
            if name in ("max_queries", "max_passages") and type(value) is int and value > 0
        }

    def _search_splitting(
        self,
        queries: Sequence[str],
        positions: list[int],
        k: int,
        results: list[list[Passage] | None],
        reasons: dict[int, str],
    ) -> None:
        """Search ``queries[positions]`` in one request, halving it while the server answers 413;
        a single query refused with 413 gets its reason in ``reasons``."""
        batch = [queries[i] for i in positions]
        payload = {"queries": batch, "topk": k, "return_scores": True}
        try:
            body = self._post_with_retries(payload)
        except RetrievalRejected as rejection:
            if rejection.status != 413:
                raise
            if len(positions) == 1:
                reasons[positions[0]] = str(rejection)
                return
            middle = len(positions) // 2
            for half in (positions[:middle], positions[middle:]):
                self._search_splitting(queries, half, k, results, reasons)
            return
        for i, passages in zip(positions, _parse_result(body, len(batch), self.url), strict=True):
            results[i] = passages

    def _post_with_retries(self, payload: dict) -> object:
        last_problem = ""
        attempts = self.retries + 1
        for attempt in range(attempts):
            if attempt > 0:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.TransportError as error:
                last_problem = f"{type(error).__name__}: {error}"
                continue
            if response.status_code in _RETRYABLE_STATUS:
                last_problem = f"HTTP {response.status_code}: {_error_text(response)}"
                continue
            if response.is_error:
                raise RetrievalRejected(
                    f"retrieval server at {self.url} rejected the request with HTTP "
                    f"{response.status_code}: {_error_text(response)}",
                    status=response.status_code,
                )
            try:
                return response.json()
            except ValueError as error:
                raise RetrievalError(
                    f"retrieval server at {self.url} answered with something that is not JSON: "
                    f"{response.text[:200]!r}"
                ) from error
        raise RetrieverUnavailable(
            f"retrieval server at {self.url} is unavailable after {attempts} attempt(s) "
            f"({last_problem}). Start one with `at2po retriever serve --corpus CORPUS.jsonl "
            "--port PORT` and point the retriever URL at http://127.0.0.1:PORT/retrieve"
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HTTPRetriever:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("detail") or body)[:300]
    return str(body)[:300]


def _unsendable(query: str) -> str | None:
    """Why ``query`` cannot go into a JSON request body (None when it can)."""
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as error:
        return (
            f"not valid Unicode text ({error.reason} at character {error.start}), so it cannot "
            "be sent; it was not searched"
        )
    return None


def _parse_result(body: object, expected_lists: int, url: str) -> list[list[Passage]]:
    def malformed(why: str) -> RetrievalError:
        return RetrievalError(
            f"response from {url} does not follow the Search-R1 /retrieve protocol: {why}"
        )

    if not isinstance(body, dict) or not isinstance(body.get("result"), list):
        raise malformed('expected a JSON object with a "result" list')
    result = body["result"]
    if len(result) != expected_lists:
        raise malformed(f"sent {expected_lists} queries but got {len(result)} result lists")
    passages: list[list[Passage]] = []
    for hits in result:
        if not isinstance(hits, list):
            raise malformed("each entry of result must be a list of hits")
        passages.append([_parse_hit(hit, malformed) for hit in hits])
    return passages


def _parse_hit(hit: object, malformed) -> Passage:
    if not isinstance(hit, dict):
        raise malformed("a hit must be a JSON object")
    document = hit.get("document", hit)
    if not isinstance(document, dict) or not isinstance(document.get("contents"), str):
        raise malformed('a hit needs a document with a "contents" string')
    score = hit.get("score", 0.0)
    if not isinstance(score, int | float):
        raise malformed("a score must be a number")
    return Passage(
        doc_id=str(document.get("id", "")), contents=document["contents"], score=float(score)
    )
