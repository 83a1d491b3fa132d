"""The report as one self-contained HTML page: the data as embedded JSON, script and style inlined.

Nothing is fetched when the page opens (no network, no CDN), so it works from ``file://``. The
data sits in a ``<script type="application/json">`` element; every ``<`` in it is written as the
JSON escape ``\\u003c``, so no text in a run (a ``</script>`` in a model's output, say) can end
the element early.
"""

from __future__ import annotations

import html
import json
from importlib.resources import files
from typing import Any


def embedded_json(data: Any) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element (module docstring)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")


def render_page(data: dict[str, Any], title: str) -> str:
    """The whole HTML page showing ``data`` (:func:`at2po.view.data.report_data`)."""
    assets = files("at2po.view")
    script = assets.joinpath("report.js").read_text(encoding="utf-8")
    style = assets.joinpath("report.css").read_text(encoding="utf-8")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{style}</style>\n</head>\n<body>\n"
        f'<script type="application/json" id="report-data">{embedded_json(data)}</script>\n'
        f"<script>\n{script}</script>\n</body>\n</html>\n"
    )
