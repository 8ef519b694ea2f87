"""`council eval --html` and `python -m bench.accuracy --html`: the report as one page, opened in a real headless
Chromium. Built from real recordings in bench/records, re-scored offline (no model is asked): the page opens
without console errors or any request, and each chart's numbers, read back from the page, are the JSON report's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from council.evaluation.bfcl import BfclItem, download_wheel, load_bfcl
from council.evaluation.calls import score_calls
from council.evaluation.dataset import DatasetError
from council.evaluation.html_report import page_data, render
from council.evaluation.record import read_records
from council.evaluation.score import score
from council.policy.loading import load_policy
from tests.server.test_ui import browser, console_errors, until

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "bench" / "records"
POLICY = ROOT / "policies" / "self-consistency-qwen1.5b.yaml"

__all__ = ["browser"]  # the dashboard's headless Chromium fixture, shared


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def open_page(driver: WebDriver, path: Path) -> dict[str, Any]:
    driver.get(path.as_uri())
    until(lambda: driver.execute_script("return document.body.dataset.drawn"), "the charts")
    assert console_errors(driver) == []
    # Self-contained: nothing was fetched (no script, style, font or image from anywhere).
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    return driver.execute_script("return window.councilReport.doc")


def chart_data(driver: WebDriver, name: str) -> list[list[float | None]]:
    return driver.execute_script("return window.councilReport.charts[arguments[0]].data", name)


def legend_at(driver: WebDriver, name: str, idx: int) -> dict[str, str]:
    """Move the chart's cursor onto point `idx` and read its legend: series label -> the value it shows."""
    return driver.execute_script("""
        const u = window.councilReport.charts[arguments[0]], i = arguments[1];
        const at = u.valToPos(u.data[0][i], 'x');  // a horizontal chart's categories run down its left side
        u.setCursor(u.scales.x.ori === 1 ? {left: 1, top: at} : {left: at, top: 1});
        if (u.cursor.idx !== i) return null;
        return Object.fromEntries([...u.root.querySelectorAll('.u-legend .u-series')].map(
            (tr) => [tr.querySelector('.u-label').textContent, tr.querySelector('.u-value').textContent]));""",
                                 name, idx)


def hover_plans(driver: WebDriver, tokens: float, accuracy: float) -> str:
    """Put the plans chart's cursor on the point (tokens, accuracy) and read what the hover says, up to the
    tokens per item."""
    driver.execute_script("""
        const u = window.councilReport.charts['0:plans'];
        u.setCursor({left: u.valToPos(arguments[0], 'x'), top: u.valToPos(arguments[1], 'y')});""",
                          tokens, accuracy)
    return driver.find_element("id", "hover-0-plans").text.split(" tokens/item")[0] + " tokens/item"


def test_a_recorded_self_consistency_council_as_a_page(tmp_path: Path, browser: WebDriver) -> None:
    page, table = tmp_path / "accuracy.html", tmp_path / "accuracy.json"
    done = subprocess.run([sys.executable, "-m", "bench.accuracy", "--score-only", "--html", str(page), "--json",
                           str(table)], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    config = load_policy(POLICY).policy.councils["sc9"]
    records = sorted(read_records(RECORDS / "gsm8k-sc9.jsonl").values(), key=lambda r: r.index)
    report = score(records, "sc9", config, "gsm8k-sc9.jsonl")
    doc = open_page(browser, page)
    # The page embeds the report `council eval --json` writes (less the answers themselves), one per set.
    assert [r["data"] for r in doc["reports"]] == ["gsm8k-sc9.jsonl", "generated-sc9.jsonl"]
    assert doc["reports"][0] == json.loads(json.dumps(page_data([report], "")["reports"][0]))
    r = doc["reports"][0]
    assert r["items"] == 60 and r["greedy_member"] == "sc9/0" and len(r["members"]) == 9

    # Accuracy per seat: the bars are the members' accuracies; the greedy seat's bar and the samples' mean.
    seats = chart_data(browser, "0:seats")
    assert seats[1] == [m["accuracy"] for m in r["members"]]
    assert seats[2] == [r["samples_mean"]] * 9 and seats[3] == [r["council_accuracy"]] * 9
    for i, m in enumerate(r["members"]):
        legend = legend_at(browser, "0:seats", i)
        assert (legend["seat"], legend["accuracy"]) == (m["name"], pct(m["accuracy"]))
        assert legend["samples' mean"] == pct(r["samples_mean"])

    # Accuracy per strategy, every strategy and extractor scored.
    strategies = chart_data(browser, "0:strategies")
    assert strategies[1] == [s["accuracy"] for s in r["strategies"]]
    for i, s in enumerate(r["strategies"]):
        legend = legend_at(browser, "0:strategies", i)
        assert legend["strategy"].endswith(f"· {s['extract']}") and legend["accuracy"] == pct(s["accuracy"])

    # Accuracy against tokens: every plan drawn, the front the report marks joined, the council's line.
    plans = r["plans"]
    assert len(plans) >= 252  # 84 cascades under each of 3 votes, early stop and every member
    drawn = chart_data(browser, "0:plans")
    by_x = sorted(plans, key=lambda p: (p["tokens_per_item"], -p["accuracy"]))
    assert drawn[0] == [p["tokens_per_item"] for p in by_x]
    front = [p for p in by_x if p["pareto"]]
    assert [v for v in drawn[-3] if v is not None] == [p["accuracy"] for p in front]
    # The front the report marks is the real one: nothing beats a point of it on both axes.
    for p in front:
        assert not any(q["tokens_per_item"] <= p["tokens_per_item"] and q["accuracy"] >= p["accuracy"]
                       and (q["tokens_per_item"], q["accuracy"]) != (p["tokens_per_item"], p["accuracy"])
                       for q in plans)
    kept = [p for p in front if p["keeps_accuracy"]]
    assert kept and all(p["accuracy"] >= r["council_accuracy"] for p in kept)
    assert min(p["tokens_per_item"] for p in kept) < plans[0]["tokens_per_item"]  # cheaper than every member
    # Hovering a point names its plan, with the report's numbers.
    cheapest = kept[0]
    here = {p["name"] for p in plans
            if (p["tokens_per_item"], p["accuracy"]) == (cheapest["tokens_per_item"], cheapest["accuracy"])}
    assert hover_plans(browser, cheapest["tokens_per_item"], cheapest["accuracy"]) in {
        f"{name}: {pct(cheapest['accuracy'])} at {cheapest['tokens_per_item']:.0f} tokens/item" for name in here}
    rows = browser.execute_script("return [...document.querySelectorAll('#kept-0 tr')].slice(1)"
                                  ".map((tr) => [tr.cells[0].textContent, tr.cells[3].textContent])")
    assert rows == [[p["name"], pct(p["token_share"])] for p in kept]

    # Agreement per item, green where the council is right and red where it is wrong.
    items = sorted(r["items_scored"], key=lambda it: (-it["agreement"], it["index"]))
    right, wrong = chart_data(browser, "0:items")[1:]
    assert right == [it["agreement"] if it["correct"] else None for it in items]
    assert wrong == [None if it["correct"] else it["agreement"] for it in items]
    assert sum(it["correct"] for it in items) / 60 == pytest.approx(r["council_accuracy"])
    facts = browser.find_element("css selector", "#report-0 .facts").text
    assert pct(r["council_accuracy"]) in facts and pct(r["oracle"]) in facts


@pytest.fixture(scope="module")
def bfcl_items() -> Iterator[dict[str, BfclItem]]:
    try:
        wheel = download_wheel()
    except DatasetError as exc:
        pytest.skip(f"the bfcl-eval wheel cannot be downloaded: {exc}")
    yield {i.id: i for i in load_bfcl(wheel, ("simple_python", "multiple", "parallel", "parallel_multiple",
                                              "irrelevance", "live_simple"))}


def test_tool_calling_accuracy_per_category(tmp_path: Path, browser: WebDriver,
                                            bfcl_items: dict[str, BfclItem]) -> None:
    records = sorted(read_records(RECORDS / "agents-sc-qwen0.5b.jsonl").values(), key=lambda r: r.index)
    report = score_calls(records, list(bfcl_items.values()), "sc", "agents-sc-qwen0.5b.jsonl")
    page = tmp_path / "calls.html"
    page.write_text(render([report], "BFCL"))
    doc = open_page(browser, page)
    r = doc["reports"][0]
    assert r["kind"] == "function-calling" and r["categories"] == report.categories
    rows = [*report.members, *report.councils, report.oracle]
    drawn = chart_data(browser, "0:categories")
    labels = [*report.categories, "overall"]
    assert drawn[0] == list(range(len(labels)))
    for row, values in zip(rows, drawn[1:], strict=True):
        assert values == [c.accuracy for c in row.categories]
    overall = legend_at(browser, "0:categories", len(labels) - 1)
    assert overall[report.oracle.name] == pct(report.oracle.overall().accuracy)
    assert overall[report.councils[0].name] == pct(report.councils[0].overall().accuracy)
    # Agreement per item under the set vote: right where the council's calls are right.
    scored = sorted(report.items_scored, key=lambda it: (-it.agreement, it.index))
    right, wrong = chart_data(browser, "0:items")[1:]
    assert right == [it.agreement if it.correct else None for it in scored]
    assert wrong == [None if it.correct else it.agreement for it in scored]
    council_set = next(row for row in report.councils if row.name == "council (set)")
    assert sum(it.correct for it in scored) == council_set.overall().correct
    assert all(it.right_seats <= len(report.members) for it in scored)


def test_text_from_the_report_stays_text(tmp_path: Path, browser: WebDriver) -> None:
    """A data path or member name holding markup is shown as written, and cannot end the embedded JSON early."""
    from tests.evaluation.test_score import SAMPLES, SEATS, records

    odd = "odd</script><img src=x onerror=alert(1)>.jsonl"
    report = score(records(["11111", "01000", "10010"], SEATS), "sc", SAMPLES, odd)
    page = tmp_path / "odd.html"
    page.write_text(render([report], "<b>title</b>"))
    doc = open_page(browser, page)
    assert doc["reports"][0]["data"] == odd and doc["title"] == "<b>title</b>"
    assert browser.find_element("css selector", "#report-0 h2").text == f"sc on {odd}: 3 items"
    assert browser.find_element("css selector", "h1").text == "<b>title</b>"
    assert browser.execute_script("return document.images.length") == 0


def test_hovering_a_plan_names_the_point_under_the_cursor(tmp_path: Path, browser: WebDriver) -> None:
    """Plans under different votes that spend the same tokens per item share an x, and uPlot's cursor picks a
    point by x alone: hovering the lower of two such points named (and quoted the accuracy of) the other plan."""
    config = load_policy(POLICY).policy.councils["sc9"]
    records = sorted(read_records(RECORDS / "gsm8k-sc9.jsonl").values(), key=lambda r: r.index)
    page = tmp_path / "plans.html"
    page.write_text(render([score(records, "sc9", config, "gsm8k-sc9.jsonl")], ""))
    plans = open_page(browser, page)["reports"][0]["plans"]
    points: dict[tuple[float, float], set[str]] = {}
    for p in plans:
        points.setdefault((p["tokens_per_item"], p["accuracy"]), set()).add(p["name"])
    shared = [(x, y) for x, y in points if any(x == x2 and y != y2 for x2, y2 in points)]
    assert len(shared) >= 6  # the recording has several x values with plans of different accuracy
    for x, y in shared:
        assert hover_plans(browser, x, y) in {f"{name}: {pct(y)} at {x:.0f} tokens/item" for name in points[x, y]}
    assert console_errors(browser) == []


def series_colours(driver: WebDriver, name: str) -> dict[str, str]:
    """Each series of a chart (by its label, in order) and the colour uPlot fills it with (the bars; the plans'
    points)."""
    return dict(driver.execute_script("""
        const u = window.councilReport.charts[arguments[0]];
        return u.series.slice(1).map((s, i) => [s.label, s.fill ? s.fill(u, i + 1) : null]);""", name))


def test_no_two_rows_or_votes_share_a_colour(tmp_path: Path, browser: WebDriver,
                                              bfcl_items: dict[str, BfclItem]) -> None:
    """The per-category rows took 8 colours and the plans' votes 4, each modulo its list: with nine seats (14
    rows: the members, four call votes, the oracle) arm/0 and arm/1#7 were one colour, as were a first and fifth
    vote. They take the dashboard's paletteColour now, and votes leave green to the council's line."""
    records = sorted(read_records(RECORDS / "agents-brief-sc8-qwen1.5b.jsonl").values(), key=lambda r: r.index)
    calls = score_calls(records, list(bfcl_items.values()), "sc", "agents-brief-sc8-qwen1.5b.jsonl")
    rows = [row.name for row in [*calls.members, *calls.councils, calls.oracle]]
    assert len(rows) == 14
    # Six votes: the recording's plans relabelled (the page colours whatever votes a report holds; today's
    # `plan_votes` gives at most four).
    config = load_policy(POLICY).policy.councils["sc9"]
    sc9 = sorted(read_records(RECORDS / "gsm8k-sc9.jsonl").values(), key=lambda r: r.index)
    text = score(sc9, "sc9", config, "gsm8k-sc9.jsonl")
    text = text.model_copy(update={"plans": [p.model_copy(update={"vote": f"vote {i % 6}"})
                                             for i, p in enumerate(text.plans)]})
    page = tmp_path / "colours.html"
    page.write_text(render([text, calls], "colours"))
    open_page(browser, page)

    categories = series_colours(browser, "1:categories")
    assert list(categories) == rows and len(set(categories.values())) == 14, categories
    assert categories["arm/0"] == "#4e79a7" and categories["arm/1#7"] == "#9c755f"  # the dashboard's first 9
    plans = series_colours(browser, "0:plans")
    votes = {label: plans[label] for label in (f"vote {i}" for i in range(6))}
    assert len(set(votes.values())) == 6, votes
    council = browser.execute_script("""const u = window.councilReport.charts['0:plans'];
        const s = u.series.find((s) => s.label.startsWith('council, every member')); return s.stroke(u, 1);""")
    assert council not in votes.values() and "#59a14f" not in votes.values()  # green is the council's here
    assert console_errors(browser) == []
