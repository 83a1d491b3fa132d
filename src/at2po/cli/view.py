"""``at2po view``: one self-contained HTML report of runs' turn trees and curves.

    at2po view runs/quickstart                          # writes runs/quickstart/report.html
    at2po view runs/compare/at2po/seed0 runs/compare/grpo/seed0 --out cmp.html
    at2po view runs/compare --step 10 --serve           # every run under it; serve on 127.0.0.1

The page needs no network and no model: it opens from ``file://``. See docs/viewer.md.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    view = subparsers.add_parser(
        "view",
        help="write an offline HTML report of runs' turn trees and curves",
        description="Write one self-contained HTML page (no network needed) showing the runs' "
        "sampled turn trees (decoded turns, entropy, expansion picks, V and A, rewards, tokens "
        "with log-probs) and their curves, several runs overlaid. A directory without "
        "metrics.jsonl stands for the runs below it (as `at2po compare` writes them).",
    )
    view.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    view.add_argument(
        "--out", metavar="FILE", help="report file (default: report.html in the first RUN_DIR)"
    )
    view.add_argument(
        "--step", type=int, metavar="N", help="only the trees of step N (default: every step)"
    )
    view.add_argument(
        "--serve", action="store_true", help="serve the report on 127.0.0.1 until Ctrl-C"
    )
    view.add_argument(
        "--port", type=int, default=8765, help="port for --serve (default 8765; 0: any free)"
    )
    view.set_defaults(func=run_view)


def run_view(args: argparse.Namespace) -> int:
    from at2po.view.data import ViewError, report_data
    from at2po.view.page import render_page

    directories = [Path(d) for d in args.runs]
    out = Path(args.out) if args.out else directories[0] / "report.html"
    try:
        data = report_data(directories, args.step)
        page = render_page(data, "at2po view · " + " · ".join(r["name"] for r in data["runs"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except (ViewError, OSError) as error:
        raise SystemExit(f"at2po view: {error}") from None
    print(f"wrote {out} ({len(page) / 1e6:.2f} MB, {len(data['runs'])} runs)", flush=True)
    if args.serve:
        serve(out, args.port)
    return 0


def serve(report: Path, port: int) -> None:
    """Serve ``report`` until interrupted, printing its URL first."""
    from at2po.view.serve import report_server

    try:
        server, url = report_server(report, port)
    except OSError as error:
        raise SystemExit(
            f"at2po view: cannot serve on 127.0.0.1:{port} ({error}); pick another --port"
        ) from None
    print(f"serving {url} (Ctrl-C to stop)", flush=True)
    with server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
