"""The dashboard's page weight and first render, this checkout side by side with another (`--baseline`, e.g. a
worktree of main): two real `council serve`s (two SmolLM2-135M members each, a few answers given), and the
page opened `--repeats` times in each, interleaved, in headless Chromium with its cache off.

    python -m bench.dashboard --baseline ../main [--repeats 10]

Prints a table (medians) and writes bench/results/dashboard.json. Bytes are the page's own files (`/ui/…`):
`transferred` as sent (gzip where the server compresses), `decoded` once unpacked; times are from navigation
start: first contentful paint, the first snapshot drawn (`window.council.timings.firstSnapshot`), the charts
drawn (`firstCharts`, where the page has charts) and the load event.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from council.setup.catalog import by_name

HERE = Path(__file__).resolve().parents[1]
RESULTS = HERE / "bench" / "results"
MEASURE = """
    const nav = performance.getEntriesByType('navigation')[0];
    const files = performance.getEntriesByType('resource').filter((r) => new URL(r.name).pathname.startsWith('/ui/'));
    const paint = performance.getEntriesByName('first-contentful-paint')[0];
    const t = window.council.timings;
    return {transferred: nav.transferSize + files.reduce((n, r) => n + r.transferSize, 0),
            decoded: nav.decodedBodySize + files.reduce((n, r) => n + r.decodedBodySize, 0), files: files.length + 1,
            fcp_ms: paint ? paint.startTime : null, first_data_ms: t.firstSnapshot ?? null,
            charts_ms: t.firstCharts ?? null, load_ms: nav.loadEventEnd - nav.startTime};"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def policy_text(history: bool) -> str:
    model = by_name("smollm2-135m")
    assert model is not None and model.path.exists(), "smollm2-135m: run `council setup` first"
    server = "server: {history: 1s}\n" if history else ""  # a checkout without charts has no such setting
    return (f"gpus: [{{name: cpu, memory: 4GiB}}]\nslots: {{size: 512MiB, reserve: 0}}\n{server}"
            f"models:\n  smol: {{path: {model.path}, ctx_size: 512}}\n"
            "councils:\n  pair: {members: [{model: smol, sampling: {max_tokens: 4}},\n"
            "                      {model: smol, sampling: {max_tokens: 4}}]}\n")


def start(source: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`council serve` from `source` (its own package, through PYTHONPATH), ready and with a few ballots."""
    history = "history: Duration" in (source / "council" / "policy" / "schema.py").read_text()
    policy = workdir / "policy.yaml"
    policy.write_text(policy_text(history))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(source)}
    proc = subprocess.Popen([sys.executable, "-m", "council", "serve", str(policy), "--port", str(port)],
                            stdout=(workdir / "serve.log").open("wb"), stderr=subprocess.STDOUT, env=env,
                            cwd=workdir, start_new_session=True)  # not this folder: `-m` puts the cwd first
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"council serve ({source}) did not get ready:\n"
                               f"{(workdir / 'serve.log').read_text()[-2000:]}")
        time.sleep(0.2)
    for _ in range(5):
        httpx.post(f"{url}/v1/chat/completions", timeout=60,
                   json={"model": "pair", "messages": [{"role": "user", "content": "Say hi"}]}).raise_for_status()
    return proc, url


def wait_for_points(url: str, points: int = 3) -> None:
    """Until the router's history has a few points (a 1 s step), so the charts have lines to draw."""
    deadline = time.monotonic() + 60
    while len(httpx.get(f"{url}/admin/history", timeout=5).json()["times"]) < points:
        assert time.monotonic() < deadline, f"{url}: no history points"
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def browser(profile: Path) -> WebDriver:
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    if Path("/usr/bin/chromium").exists():
        options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    return driver


def load(driver: WebDriver, url: str, charts: bool) -> dict[str, Any]:
    driver.get(f"{url}/ui")
    deadline = time.monotonic() + 30
    want = "firstCharts" if charts else "firstSnapshot"
    while not driver.execute_script(f"return window.council?.timings?.{want} !== undefined "
                                    "&& document.readyState === 'complete';"):
        assert time.monotonic() < deadline, f"the page at {url} never drew"
        time.sleep(0.02)
    result: dict[str, Any] = driver.execute_script(MEASURE)
    return result


def served_from(url: str) -> str:
    """Which checkout answers (a check that PYTHONPATH won over this one's editable install): by its page's script,
    since uPlot was served (`/ui/vendor/`) one commit before the page drew charts with it."""
    return "charts" if "/admin/history" in httpx.get(f"{url}/ui/app.js", timeout=5).text else "no charts"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout (e.g. main's worktree)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("SE_AVOID_STATS", "true")
    sources = {"before": args.baseline.resolve(), "after": HERE}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sources}
    with tempfile.TemporaryDirectory() as tmp:
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        driver = None
        try:
            for name, source in sources.items():
                (Path(tmp) / name).mkdir()
                servers[name] = start(source, Path(tmp) / name)
            charts = {name: "/admin/history" in (source / "council" / "server" / "static" / "app.js").read_text()
                      for name, source in sources.items()}
            for name, (_, url) in servers.items():
                assert served_from(url) == ("charts" if charts[name] else "no charts"), f"{name}: the wrong checkout"
                if charts[name]:
                    wait_for_points(url)
            driver = browser(Path(tmp) / "chromium")
            for name, (_, url) in servers.items():  # one unmeasured load each: Chromium's own start-up
                load(driver, url, charts[name])
            for _ in range(args.repeats):  # interleaved, so a busy shared machine slows both alike
                for name, (_, url) in servers.items():
                    runs[name].append(load(driver, url, charts[name]))
        finally:
            if driver is not None:
                driver.quit()
            for proc, _ in servers.values():
                stop(proc)
    keys = ["transferred", "decoded", "files", "fcp_ms", "first_data_ms", "charts_ms", "load_ms"]
    medians = {name: {k: (statistics.median(v) if (v := [r[k] for r in rs if r[k] is not None]) else None)
                      for k in keys} for name, rs in runs.items()}
    print(f"{'':>14}  {'before':>10}  {'after':>10}  {'after/before':>12}")
    for k in keys:
        b, a = medians["before"][k], medians["after"][k]
        ratio = f"{a / b:.2f}" if a is not None and b else "–"
        print(f"{k:>14}  {'–' if b is None else f'{b:.0f}':>10}  {'–' if a is None else f'{a:.0f}':>10}  {ratio:>12}")
    RESULTS.mkdir(exist_ok=True)
    doc = {"repeats": args.repeats, "cpus": os.cpu_count(), "baseline": str(sources["before"]),
           "medians": medians, "runs": runs}
    (RESULTS / "dashboard.json").write_text(json.dumps(doc, indent=2))
    print(f"wrote {RESULTS / 'dashboard.json'}")


if __name__ == "__main__":
    main()
