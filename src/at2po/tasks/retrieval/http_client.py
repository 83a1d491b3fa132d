"""A :class:`Retriever` that asks a server speaking Search-R1's ``POST /retrieve`` protocol.

Request ``{"queries": [...], "topk": k, "return_scores": true}``; response
``{"result": [[{"document": {"id": ..., "contents": ...}, "score": ...}, ...], ...]}`` with one list
per query (servers that leave out scores send the bare documents; both are read). Works with
``at2po retriever serve`` and with Search-R1/FlashRAG-style servers.

Connection failures, timeouts and 5xx answers are retried with exponential backoff
(``backoff_s · 2^attempt``, capped); when every attempt fails the call raises
:class:`RetrieverUnavailable`, whose message names the URL and how to start a server.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import httpx

from at2po.tasks.retrieval.base import Passage, check_search_args

_RETRYABLE_STATUS = frozenset({500, 502, 503, 504})


class RetrievalError(RuntimeError):
    """A retrieval request failed; the subclasses say whether to fix the server or the request."""


class RetrieverUnavailable(RetrievalError):
    """The server could not be reached or kept failing (connection, timeout, 5xx) after retries."""


class RetrievalRejected(RetrievalError):
    """The server refused the request as invalid (a 4xx answer); retrying would not help."""


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
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(
                f"retriever URL {url!r} must start with http:// or https://, "
                "e.g. http://127.0.0.1:8000/retrieve"
            )
        if retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError("need retries >= 0, timeout_s > 0 and backoff_s >= 0")
        self.url = url
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s))

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """One ``/retrieve`` call for all queries; raises :class:`RetrievalError` subclasses."""
        check_search_args(queries, k)
        if not queries:
            return []
        payload = {"queries": list(queries), "topk": k, "return_scores": True}
        body = self._post_with_retries(payload)
        return _parse_result(body, expected_lists=len(queries), url=self.url)

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
                    f"{response.status_code}: {_error_text(response)}"
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


def _parse_result(body: object, *, expected_lists: int, url: str) -> list[list[Passage]]:
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
