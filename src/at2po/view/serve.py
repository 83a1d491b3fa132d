"""Serve a written report on 127.0.0.1 with the standard library's HTTP server."""

from __future__ import annotations

import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _QuietHandler(SimpleHTTPRequestHandler):
    """Serves the report's directory without a log line per request."""

    def log_message(self, format: str, *args: object) -> None:
        return


def report_server(report: Path, port: int) -> tuple[ThreadingHTTPServer, str]:
    """A server for ``report``'s directory on 127.0.0.1:``port`` (0: any free port) and its URL."""
    handler = functools.partial(_QuietHandler, directory=str(report.parent))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    return server, f"http://127.0.0.1:{server.server_address[1]}/{report.name}"
