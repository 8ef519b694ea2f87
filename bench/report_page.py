"""What `council eval --html` costs to open: page weight and first render in headless Chromium.

    python -m bench.report_page [--loads 5] [--screenshot docs/eval-report.png]

The page of `python -m bench.accuracy --score-only --html` (the nine-seat council's GSM8K and generated sets,
re-scored offline from bench/records), as written and, for comparison, with each report's `records` (every
answer) embedded too. Each is opened `--loads` times in a fresh tab of headless Chromium (Debian's `chromium`
and `chromium-driver`, through selenium): first contentful paint, DOMContentLoaded, load, and the moment the
page's script has drawn every chart (performance.now() at its end), medians. `--screenshot` writes the README's
picture of the GSM8K section. Writes bench/results/report_page.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from council.evaluation.html_report import render
from council.evaluation.record import read_records
from council.evaluation.score import EvalReport, score
from council.policy.loading import load_policy

ROOT = Path(__file__).resolve().parent
POLICY = ROOT.parent / "policies" / "self-consistency-qwen1.5b.yaml"
SETS = ("gsm8k-sc9.jsonl", "generated-sc9.jsonl")
TIMING = """
const nav = performance.getEntriesByType('navigation')[0];
const fcp = performance.getEntriesByName('first-contentful-paint')[0];
return {fcp: fcp ? fcp.startTime : null, dom: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
        drawn: window.councilReport.drawnMs, resources: performance.getEntriesByType('resource').length};
"""


def reports() -> list[EvalReport]:
    config = load_policy(POLICY).policy.councils["sc9"]
    out = []
    for name in SETS:
        records = sorted(read_records(ROOT / "records" / name).values(), key=lambda r: r.index)
        out.append(score(records, "sc9", config, name))
    return out


def with_records(page: str, scored: list[EvalReport]) -> str:
    """The same page with every answer embedded as well (what embedding `--json`'s whole document would weigh)."""
    start = page.index('id="report-data">') + len('id="report-data">')
    end = page.index("</script>", start)
    doc = json.loads(page[start:end])
    for r, full in zip(doc["reports"], scored, strict=True):
        r["records"] = [rec.model_dump() for rec in full.records]
    return page[:start] + json.dumps(doc, separators=(",", ":")).replace("<", "\\u003c") + page[end:]


def browser():  # noqa: ANN201 (selenium is a test dependency, imported here only)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--window-size=1000,1000"):
        options.add_argument(flag)
    if Path("/usr/bin/chromium").exists():
        options.binary_location = "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return webdriver.Chrome(service=Service(driver), options=options)


def opened(driver, path: Path) -> dict[str, float]:  # noqa: ANN001
    driver.get("about:blank")
    driver.get(path.as_uri())
    deadline = time.monotonic() + 60
    while not driver.execute_script("return document.body && document.body.dataset.drawn"):
        assert time.monotonic() < deadline, f"{path.name}: the charts were never drawn"
        time.sleep(0.05)
    timing = driver.execute_script(TIMING)
    while timing["fcp"] is None:  # the paint entry comes after the script that drew the charts
        assert time.monotonic() < deadline, f"{path.name}: never painted"
        time.sleep(0.05)
        timing = driver.execute_script(TIMING)
    assert timing["resources"] == 0, "the page fetched something"
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--screenshot", type=Path, help="write a PNG of the GSM8K section here")
    args = parser.parse_args()
    scored = reports()
    page = render(scored, "bench.accuracy: council sc9 of self-consistency-qwen1.5b.yaml")
    pages = {"as written (report without records)": page, "with every answer embedded": with_records(page, scored)}
    rows = []
    driver = browser()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in pages.items():
                path = Path(tmp) / "report.html"
                path.write_text(text)
                loads = [opened(driver, path) for _ in range(args.loads)]
                rows.append({"page": name, "bytes": len(text.encode()), "loads": args.loads,
                             **{k: statistics.median(x[k] for x in loads) for k in ("fcp", "dom", "load", "drawn")}})
            if args.screenshot:
                path = Path(tmp) / "report.html"
                path.write_text(page)
                opened(driver, path)
                section = driver.find_element("id", "report-0")
                driver.set_window_size(1000, section.size["height"] + section.location["y"] + 160)
                section.screenshot(str(args.screenshot))
    finally:
        driver.quit()
    print(f"{'page':<40} {'bytes':>9} {'first paint ms':>15} {'DOMContentLoaded':>17} {'load ms':>8} "
          f"{'charts drawn ms':>16}")
    for r in rows:
        print(f"{r['page']:<40} {r['bytes']:>9,} {r['fcp']:>15.0f} {r['dom']:>17.0f} {r['load']:>8.0f} "
              f"{r['drawn']:>16.0f}")
    out = ROOT / "results" / "report_page.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"sets": SETS, "rows": rows}, indent=1) + "\n")
    if args.screenshot:
        print(f"screenshot: {args.screenshot} ({args.screenshot.stat().st_size:,} bytes)")


if __name__ == "__main__":
    sys.exit(main())
