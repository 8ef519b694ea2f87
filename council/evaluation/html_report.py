"""`council eval --html`: the report as one self-contained page (no network).

The page holds the JSON report (`--json`'s document, without its `records`: the answers themselves are not
drawn) and draws every chart from it in the browser with uPlot; uPlot, the palette shared with the dashboard and the
page's own script and styles are package data, inlined.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from council.evaluation.calls import CallsReport
from council.evaluation.score import EvalReport

Report = EvalReport | CallsReport


def _asset(package: str, *parts: str) -> str:
    return files(package).joinpath(*parts).read_text(encoding="utf-8")


def page_data(reports: Sequence[Report], title: str) -> dict[str, Any]:
    """What the page embeds and draws from: each report as `--json` writes it, less `records`."""
    return {"title": title, "reports": [r.model_dump(exclude={"records"}) for r in reports]}


def _script_json(doc: object) -> str:
    # Inside <script>, "</script>" or "<!--" in a string would end or confuse the element: no "<" is left raw.
    return json.dumps(doc, separators=(",", ":")).replace("<", "\\u003c")


def render(reports: Sequence[Report], title: str) -> str:
    """The page: uPlot, the report's script and styles, and the report, all inline."""
    css = _asset("council", "assets", "uplot", "uPlot.min.css") + _asset("council.evaluation", "report_page",
                                                                         "report.css")
    # uPlot's MIT license travels with every copy of it, this page included.
    uplot = f'/*! uPlot\n{_asset("council", "assets", "uplot", "LICENSE").replace("*/", "")}*/\n' + _asset(
        "council", "assets", "uplot", "uPlot.iife.min.js")
    # The colours are the dashboard's too (council/assets/palette.js): its globals, before the script using them.
    script = _asset("council", "assets", "palette.js") + _asset("council.evaluation", "report_page", "report.js")
    escaped = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{escaped}</title>\n'
            f"<style>{css}</style>\n</head><body><main></main>\n"
            f'<script type="application/json" id="report-data">{_script_json(page_data(reports, title))}</script>\n'
            f"<script>{uplot}</script>\n<script>{script}</script>\n</body></html>\n")
