"""The dashboard (`/ui`) in a real headless Chromium against a real `council serve` with real members.

`COUNCIL_SCREENSHOT=1` also writes the README's screenshot, docs/ui.png (in the last-hour test: its charts
have points by then).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import httpx
import openai
import pytest
from aiohttp import web
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.policies import member_entry, policy_yaml
from tests.servers import CouncilServer, free_port

CHAT_KEY, ADMIN_KEY = "chat-key-0123456789", "admin-key-9876543210"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "ui.png"
CHROME_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--window-size=1400,1000"]


def policy(syn: Path, api_keys: list[dict[str, object]] | None = None, history: str | None = None,
           solo: tuple[str, int] = ("solo", 1)) -> str:
    """`solo`: the second council's name and how many members of `other` it has."""
    models = {"syn": {"path": syn, "ctx_size": 512, "draft": {"type": "mtp", "n_max": 2}},
              "other": {"path": syn, "ctx_size": 512}, "long": {"path": syn, "ctx_size": 8192}}
    # alphabet: two quick members decide the vote; the slow third is cancelled.
    councils = {"alphabet": {"members": [member_entry("syn", max_tokens=6), member_entry("syn", max_tokens=6),
                                         member_entry("long", max_tokens=6000)],
                             "vote": {"strategy": "majority", "extract": "text"}},
                solo[0]: {"members": [member_entry("other", max_tokens=6) for _ in range(solo[1])]}}
    server = {"host": "127.0.0.1", "port": 8080, **({"api_keys": api_keys} if api_keys else {}),
              **({"history": history} if history else {})}
    return policy_yaml(models, councils, server=server)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium through chromedriver (Debian's `chromium` and `chromium-driver`; `./dev test`
    installs them), with the console log kept for the no-errors check."""
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not Path(driver_path).exists():
        pytest.fail("chromedriver not found: apt-get install chromium chromium-driver (./dev test does)")
    options = webdriver.ChromeOptions()
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    if Path("/usr/bin/chromium").exists():
        options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def until(check: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    """Poll `check` until it returns something truthy (a re-rendered element counts as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def console_errors(driver: WebDriver) -> list[dict[str, object]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def member_states(driver: WebDriver) -> dict[str, str]:
    return driver.execute_script("""
        return Object.fromEntries([...document.querySelectorAll('#member-rows tr')].map(
            (tr) => [tr.dataset.name, tr.querySelector('.state').dataset.state]));""")


def row_text(driver: WebDriver, name: str, cell: str) -> str:
    return driver.execute_script("const tr = [...document.querySelectorAll('#member-rows tr')]"
                                 ".find((r) => r.dataset.name === arguments[0]);"
                                 "return tr ? tr.querySelector(arguments[1]).textContent : '';", name, cell)


def test_dashboard_shows_members_state_changes_and_playground_ballots(
        serve: Callable[..., CouncilServer], syn: Path, browser: WebDriver) -> None:
    server = serve(policy(syn))
    members = httpx.get(f"{server.url}/admin/members").json()["members"]
    browser.get(f"{server.url}/ui")
    states = until(lambda: (s := member_states(browser)) and len(s) == len(members) and s, "the member rows")
    assert set(states) == {m["name"] for m in members} == {"alphabet/0", "alphabet/1", "alphabet/2", "solo/0"}
    until(lambda: set(member_states(browser).values()) == {"ready"}, "every member ready on the page")
    for m in members:
        assert row_text(browser, m["name"], ".pid") == str(m["pid"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gpus .slot.held")) == 4  # a slot per process
    timing = browser.execute_script("""
        const nav = performance.getEntriesByType('navigation')[0];
        const files = performance.getEntriesByType('resource').filter((r) => r.name.includes('/ui/'));
        return {load_ms: nav.loadEventEnd - nav.startTime, first_data_ms: window.council.timings.firstSnapshot,
                bytes: nav.decodedBodySize + files.reduce((n, r) => n + r.decodedBodySize, 0),
                sent: nav.transferSize + files.reduce((n, r) => n + r.transferSize, 0)};""")
    print(f"dashboard: {timing['bytes']} bytes ({timing['sent']} transferred), load {timing['load_ms']:.0f} ms, "
          f"first data {timing['first_data_ms']:.0f} ms")
    # uPlot is most of it; gzip on the wire (bench/dashboard.py measures it against the page without charts).
    assert timing["load_ms"] < 5000 and timing["bytes"] < 128 * 1024 and timing["sent"] < 64 * 1024

    # A member killed from outside: backoff and back to ready on the page, without a reload.
    browser.execute_script("window.notReloaded = true;")
    victim = next(m for m in members if m["name"] == "alphabet/0")
    os.kill(victim["pid"], signal.SIGKILL)
    seen: set[str] = set()

    def back_to_ready() -> bool:
        state = member_states(browser).get("alphabet/0")
        seen.add(state)
        return state == "ready" and row_text(browser, "alphabet/0", ".pid") not in ("", str(victim["pid"]))

    until(back_to_ready, "alphabet/0 restarted on the page", timeout=60)
    history = row_text(browser, "alphabet/0", ".history")
    assert "backoff" in seen or "ready→backoff" in history, (seen, history)
    assert "warming→ready" in history and row_text(browser, "alphabet/0", ".restarts") == "1"
    assert browser.execute_script("return window.notReloaded === true;")

    # The playground: the streamed answer and its ballot, which matches /v1/ballots/{id}.
    browser.find_element(By.CSS_SELECTOR, "#pg-model option[value='alphabet']").click()
    question = browser.find_element(By.ID, "pg-question")
    question.clear()
    question.send_keys("Say the alphabet")
    browser.find_element(By.ID, "pg-ask").click()
    until(lambda: browser.find_element(By.ID, "pg-answer").get_attribute("data-done") == "true", "the answer")
    assert browser.find_element(By.ID, "pg-answer").text == "abcdef"
    shown = browser.find_element(By.CSS_SELECTOR, "#pg-ballot .ballot")
    ballot_id = shown.get_attribute("data-ballot")
    ballot = httpx.get(f"{server.url}/v1/ballots/{ballot_id}").json()
    rows = shown.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert [(r.get_attribute("data-member"), r.get_attribute("data-status"),
             r.find_element(By.CSS_SELECTOR, ".extracted").text) for r in rows] == [
        (m["name"], m["status"], m["extracted"] or "") for m in ballot["members"]]
    assert ballot["answer"] == "abcdef" and ballot["early_stop"] is True
    assert [m["status"] for m in ballot["members"]] == ["ok", "ok", "cancelled"]

    # The same ballot arrives in Votes (over the event stream, with its question) and opens in full.
    vote = until(lambda: browser.find_elements(By.CSS_SELECTOR, f"#ballot-rows tr[data-ballot='{ballot_id}']"),
                 "the ballot in Votes")[0]
    assert "Say the alphabet" in vote.text and "100%" in vote.text
    assert [(c.get_attribute("data-member"), c.get_attribute("data-status"))
            for c in vote.find_elements(By.CSS_SELECTOR, ".chip")] == [
        ("alphabet/0", "winner"), ("alphabet/1", "winner"), ("alphabet/2", "cancelled")]
    vote.click()
    until(lambda: browser.find_elements(By.CSS_SELECTOR, f"#ballot-full .ballot[data-ballot='{ballot_id}']"),
          "the full ballot")
    browser.find_element(By.CSS_SELECTOR, "#ballot-dialog form button").click()

    # A member's log tail on click (and live lines after it).
    browser.find_element(By.CSS_SELECTOR, "#member-rows tr[data-name='solo/0']").click()
    until(lambda: "llama" in browser.find_element(By.ID, "log-lines").text.lower()
          or "server" in browser.find_element(By.ID, "log-lines").text.lower(), "the log tail")
    assert console_errors(browser) == []


def page_history(driver: WebDriver) -> dict[str, object]:
    """What each chart draws (its uPlot's data: times, then one list per series) and the series' names."""
    return driver.execute_script("""
        return Object.fromEntries(Object.entries(window.council.plots).map(([chart, plot]) =>
            [chart, {times: plot.data[0], series: Object.fromEntries(
                plot.series.slice(1).map((s, i) => [s.label, plot.data[i + 1]]))}]));""")


def values_since(shown: dict[str, object], chart: str, series: str, since: float) -> list[float]:
    """The non-null values a chart draws for one series at points after `since`."""
    drawn = shown.get(chart)
    if not isinstance(drawn, dict) or series not in drawn["series"]:
        return []
    return [v for t, v in zip(drawn["times"], drawn["series"][series], strict=True) if t > since and v is not None]


def assert_drawn_as_served(shown: dict[str, object], served: dict[str, object]) -> None:
    """Every chart draws the router's own series (read after the page, so the router may have a point more)."""
    charts = served["charts"]
    assert isinstance(charts, dict) and set(shown) <= set(charts)
    for chart, drawn in shown.items():
        times = drawn["times"]  # type: ignore[index]
        assert times == served["times"][:len(times)], chart  # type: ignore[index]
        for name, values in drawn["series"].items():  # type: ignore[index]
            assert values == charts[chart][name][:len(times)], (chart, name)


def test_dashboard_charts_grow_while_a_council_answers_and_survive_a_member_sigkill(
        serve: Callable[..., CouncilServer], syn: Path, browser: WebDriver) -> None:
    server = serve(policy(syn, history="1s"))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    browser.get(f"{server.url}/ui")
    until(lambda: "requests" in page_history(browser), "the first point on the page")

    def ask_until(check: Callable[[dict[str, object]], bool], what: str, timeout: float = 90) -> dict[str, object]:
        """Ask the council (a real client) until the page draws what `check` wants."""
        deadline = time.monotonic() + timeout
        while True:
            reply = client.chat.completions.create(model="alphabet", messages=[{"role": "user", "content": "abc"}])
            assert reply.choices[0].message.content == "abcdef"
            shown = page_history(browser)
            if check(shown):
                return shown
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {shown}"

    started = 0.0
    shown = ask_until(lambda s: len(values_since(s, "agreement", "alphabet", started)) >= 3
                      and values_since(s, "latency", "alphabet", started)
                      and values_since(s, "tokens_per_second", "alphabet/0", started)
                      and values_since(s, "draft_acceptance", "alphabet/0", started), "the council's series")
    assert set(values_since(shown, "agreement", "alphabet", started)) == {1.0}  # two quick seats agree
    assert all(0 < v < 60 for v in values_since(shown, "latency", "alphabet", started))
    assert all(0 <= v <= 1 for v in values_since(shown, "draft_acceptance", "alphabet/0", started))
    assert set(shown["requests"]["series"]) == {"in flight", "waiting"}  # type: ignore[index]
    times = shown["requests"]["times"]  # type: ignore[index]
    assert times == sorted(set(times)) and len(times) >= 3
    assert_drawn_as_served(shown, httpx.get(f"{server.url}/admin/history").json())

    # SIGKILL one process: the series keep their points and go on while the supervisor restarts it.
    browser.execute_script("window.notReloaded = true;")
    victim = next(m for m in httpx.get(f"{server.url}/admin/members").json()["members"] if m["name"] == "alphabet/0")
    killed = time.time()
    os.kill(victim["pid"], signal.SIGKILL)
    until(lambda: member_states(browser).get("alphabet/0") == "ready"
          and row_text(browser, "alphabet/0", ".pid") not in ("", str(victim["pid"])), "alphabet/0 restarted",
          timeout=90)
    restarted = time.time()
    # A restart can take less than one history step on quiet cores, so ask for a point after the kill (the
    # series went on), not for one inside the outage.
    until(lambda: any(t > killed for t in page_history(browser)["requests"]["times"]),  # type: ignore[index]
          "a point after the kill", timeout=30)
    kept = page_history(browser)["requests"]["times"]  # type: ignore[index]
    assert kept[:len(times)] == times, "the points from before the kill were lost"
    shown = ask_until(lambda s: len(values_since(s, "agreement", "alphabet", restarted)) >= 2
                      and values_since(s, "tokens_per_second", "alphabet/0", restarted)
                      and values_since(s, "draft_acceptance", "alphabet/0", restarted), "the series after the restart")
    assert_drawn_as_served(shown, httpx.get(f"{server.url}/admin/history").json())
    assert browser.execute_script("return window.notReloaded === true;")
    assert console_errors(browser) == []

    if os.environ.get("COUNCIL_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        width, height = browser.execute_script("const e = document.documentElement;"  # < 300 KB
                                               "return [e.scrollWidth, Math.min(e.scrollHeight, 1250)];")
        shot = browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
        SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))


def read_events(lines: Iterator[str], until_kind: str) -> list[tuple[str, dict[str, object]]]:
    """Server-sent events off a stream's lines, up to and including the first of `until_kind`."""
    events, kind = [], ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[6:])))
            if kind == until_kind:
                return events
    raise AssertionError(f"the stream ended before a {until_kind} event")


def test_event_stream_follows_the_scope(serve: Callable[..., CouncilServer], syn: Path) -> None:
    digest = hashlib.sha256(CHAT_KEY.encode()).hexdigest()
    keys = [{"name": "app", "sha256": digest}, {"name": "ops", "env": "ADMIN_KEY", "scopes": ["chat", "admin"]}]
    server = serve(policy(syn, keys), env={"ADMIN_KEY": ADMIN_KEY})
    chat, ops = ({"Authorization": f"Bearer {k}"} for k in (CHAT_KEY, ADMIN_KEY))
    assert httpx.get(f"{server.url}/admin/events").status_code == 401
    with httpx.Client(base_url=server.url, timeout=30) as client, \
            client.stream("GET", "/admin/events", headers=chat) as as_chat, \
            client.stream("GET", "/admin/events", headers=ops) as as_admin:
        assert as_chat.headers["content-type"].startswith("text/event-stream")
        chat_lines, admin_lines = as_chat.iter_lines(), as_admin.iter_lines()
        [(_, first)] = read_events(chat_lines, "snapshot")
        assert first["scopes"] == ["chat"] and "members" not in first and "slots" not in first
        assert set(first["councils"]) == {"alphabet", "solo"}
        [(_, first)] = read_events(admin_lines, "snapshot")
        assert first["scopes"] == ["chat", "admin"] and len(first["members"]) == 4 and first["slots"]["gpus"]
        def ask(question: str, key: dict[str, str]) -> dict[str, object]:
            body = {"model": "alphabet", "messages": [{"role": "user", "content": question}]}
            return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=key, timeout=30).json()

        theirs = ask("the admin's question", ops)  # another key's ballot: the chat key never sees it
        answer = ask("my question", chat)
        seen_by_chat = read_events(chat_lines, "ballot")
        assert [k for k, _ in seen_by_chat] == ["ballot"]  # no member or log events for the chat scope
        assert seen_by_chat[0][1]["id"] == answer["id"] and seen_by_chat[0][1]["question"] == "my question"
        assert httpx.get(f"{server.url}/v1/ballots/{theirs['id']}", headers=chat).status_code == 404
        assert httpx.get(f"{server.url}/v1/ballots/{answer['id']}", headers=chat).json()["owner"] == "app"
        seen_by_admin = read_events(admin_lines, "ballot")
        seen_by_admin += read_events(admin_lines, "ballot")  # the admin scope sees every key's ballots
        ballots = [data for kind, data in seen_by_admin if kind == "ballot"]
        assert [(b["question"], b["owner"]) for b in ballots] == [("the admin's question", "ops"),
                                                                  ("my question", "app")]
        assert ballots[-1]["members"] == answer["council"]["members"]  # type: ignore[index]
        if "log" not in {k for k, _ in seen_by_admin}:  # the members log each request, maybe after the vote
            read_events(admin_lines, "log")
    # The last hour's series: the chat scope gets the councils' charts only, like their ballots.
    assert httpx.get(f"{server.url}/admin/history").status_code == 401
    for_chat, for_ops = (httpx.get(f"{server.url}/admin/history", headers=h).json() for h in (chat, ops))
    assert set(for_chat["charts"]) == {"agreement", "latency"} and for_chat["step"] == 10
    assert set(for_ops["charts"]) == {"tokens_per_second", "draft_acceptance", "requests", "agreement", "latency"}
    log = httpx.get(f"{server.url}/admin/members/alphabet/0/log", headers=ops).json()
    assert log["name"] == "alphabet/0" and log["lines"]
    assert httpx.get(f"{server.url}/admin/members/alphabet/0/log", headers=chat).status_code == 403
    assert httpx.get(f"{server.url}/admin/members/nope/log", headers=ops).status_code == 404


def chart_cells(driver: WebDriver) -> set[str]:
    return {e.get_attribute("data-chart") for e in driver.find_elements(By.CSS_SELECTOR, "#charts [data-chart]")}


def test_dashboard_with_keys_asks_for_one_and_follows_its_scope(
        serve: Callable[..., CouncilServer], syn: Path, browser: WebDriver) -> None:
    digest = hashlib.sha256(CHAT_KEY.encode()).hexdigest()
    keys = [{"name": "app", "sha256": digest}, {"name": "ops", "env": "ADMIN_KEY", "scopes": ["chat", "admin"]}]
    server = serve(policy(syn, keys), env={"ADMIN_KEY": ADMIN_KEY})
    body = {"model": "alphabet", "messages": [{"role": "user", "content": "the admin's question"}]}
    theirs = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30,
                        headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()["id"]
    browser.get(f"{server.url}/ui")
    until(lambda: browser.find_element(By.ID, "key-form").is_displayed(), "the key prompt")
    assert not browser.find_element(By.ID, "main").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, "#member-rows tr, #gpus .gpu, #pg-model option") == []
    assert console_errors(browser) == []  # without a key the page asks nothing it would be refused

    def use_key(key: str) -> None:
        browser.find_element(By.ID, "key-input").send_keys(key)
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()

    use_key(CHAT_KEY)  # the chat scope: ballots and the playground, no members or slots
    until(lambda: browser.find_element(By.ID, "main").is_displayed(), "the page with a chat key")
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "#pg-model option"), "the playground's models")
    assert not browser.find_element(By.ID, "members").is_displayed()
    assert not browser.find_element(By.ID, "slots").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, "#member-rows tr") == []
    assert browser.find_element(By.ID, "votes").is_displayed()
    until(lambda: chart_cells(browser) == {"agreement", "latency"}, "the councils' charts only")
    # Votes: this key's own ballots, whole (its question, and the full ballot on click); the admin's not at all.
    assert browser.find_elements(By.CSS_SELECTOR, "#ballot-rows tr") == []
    browser.find_element(By.CSS_SELECTOR, "#pg-model option[value='alphabet']").click()
    browser.find_element(By.ID, "pg-question").send_keys("my question")
    browser.find_element(By.ID, "pg-ask").click()
    until(lambda: browser.find_element(By.ID, "pg-answer").get_attribute("data-done") == "true", "the answer")
    mine = browser.find_element(By.CSS_SELECTOR, "#pg-ballot .ballot").get_attribute("data-ballot")
    vote = until(lambda: browser.find_elements(By.CSS_SELECTOR, "#ballot-rows tr"), "the ballot in Votes")[0]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#ballot-rows tr")) == 1
    assert vote.get_attribute("data-ballot") == mine and "my question" in vote.text
    vote.click()
    until(lambda: browser.find_elements(By.CSS_SELECTOR, f"#ballot-full .ballot[data-ballot='{mine}']"),
          "the full ballot")
    browser.find_element(By.CSS_SELECTOR, "#ballot-dialog form button").click()

    browser.find_element(By.ID, "forget-key").click()
    until(lambda: browser.find_element(By.ID, "key-form").is_displayed(), "the key prompt again")
    use_key(ADMIN_KEY)
    until(lambda: set(member_states(browser).values()) == {"ready"} and len(member_states(browser)) == 4,
          "the members with an admin key")
    assert browser.find_element(By.ID, "slots").is_displayed()
    until(lambda: len(chart_cells(browser)) == 5, "every chart with an admin key")
    shown = [r.get_attribute("data-ballot") for r in browser.find_elements(By.CSS_SELECTOR, "#ballot-rows tr")]
    assert shown == [mine, theirs]  # every key's ballots, newest first
    assert console_errors(browser) == []


def test_a_members_log_opens_whatever_its_council_is_named(
        serve: Callable[..., CouncilServer], syn: Path, browser: WebDriver) -> None:
    """A council named with `#` and `?`: the log view asked `/admin/members/odd#1?x/0/log` as it was written, so
    the browser cut the path at `#` and the log could not be read."""
    name = "odd#1?x/0"
    server = serve(policy_yaml({"other": {"path": syn, "ctx_size": 512}},
                               {"odd#1?x": {"members": [member_entry("other", max_tokens=6)]}},
                               server={"host": "127.0.0.1", "port": 8080}))
    browser.get(f"{server.url}/ui")
    until(lambda: member_states(browser).get(name) == "ready", "the member ready on the page")
    browser.execute_script("[...document.querySelectorAll('#member-rows tr')]"
                           ".find((r) => r.dataset.name === arguments[0]).click();", name)
    until(lambda: browser.find_element(By.ID, "log-name").text == name, "the log view")
    lines = str(until(lambda: (text := browser.find_element(By.ID, "log-lines").text)
                      and ("could not read" in text or "server" in text.lower()) and text, "the log tail"))
    assert "could not read the log" not in lines
    assert console_errors(browser) == []


def test_following_a_log_of_long_lines_costs_each_line_once(
        serve: Callable[..., CouncilServer], syn: Path, browser: WebDriver) -> None:
    """The log panel was rebuilt from every kept line (up to 400 of 8 KiB) for each new one: a member writing long
    lines fast (llama-server `--verbose` logs request bodies on one line) laid out megabytes a line, and 300 such
    lines froze the page for 18 s. New lines are now added once, the oldest taken off, a frame at a time."""
    server = serve(policy(syn))
    browser.get(f"{server.url}/ui")
    until(lambda: member_states(browser).get("solo/0") == "ready", "the member ready on the page")
    browser.find_element(By.CSS_SELECTOR, "#member-rows tr[data-name='solo/0']").click()
    until(lambda: browser.find_element(By.ID, "log-name").text == "solo/0", "the log view")
    until(lambda: browser.find_element(By.ID, "log-lines").text, "the log tail")
    inserted = browser.execute_script("""
        const pre = document.getElementById("log-lines");
        window.inserted = 0;
        new MutationObserver((records) => { for (const r of records) for (const n of r.addedNodes)
            window.inserted += n.textContent.length; }).observe(pre, { childList: true, subtree: true,
                                                                      characterData: true });
        for (let i = 0; i < 300; i++)
          window.council.handle({ kind: "log", data: { member: "solo/0", line: `${"x".repeat(8192)} ${i}` } });
        return window.inserted;""")
    assert inserted == 0  # nothing laid out until the next frame
    until(lambda: browser.execute_script(
        "return document.getElementById('log-lines').lastChild.textContent.endsWith(' 299\\n');"), "the last line")
    shown = browser.execute_script("""
        const pre = document.getElementById("log-lines");
        return { inserted: window.inserted, nodes: pre.childNodes.length };""")
    assert shown["inserted"] <= 300 * 8200, shown  # each line once (before: ~370 MB for these 300)
    assert shown["nodes"] <= 400, shown
    assert console_errors(browser) == []


def test_the_page_keeps_the_series_the_router_keeps(
        serve: Callable[..., CouncilServer], syn: Path, browser: WebDriver) -> None:
    """A chart holds 64 series. The router kept those of processes reloaded away and left out the ones running now,
    while the page, which followed every value the stream carried, drew 70 (64 after a reload of the page). Now
    the longest silent make room on both, and the stream carries what the router kept."""
    from council.server.history import MAX_SERIES, History, point_json

    server = serve(policy(syn, history="1s"))
    browser.get(f"{server.url}/ui")
    until(lambda: browser.execute_script("return window.council.state.history !== null;"), "the history read")
    hist = browser.execute_script("return window.council.state.history;")
    mirror = History(step=hist["step"], window=hist["window"])
    start = time.time() + 3600  # after any point the router takes meanwhile
    steps = [{f"old{i}": 1.0 for i in range(MAX_SERIES)}, {f"old{i}": 1.0 for i in range(10)},
             {**{f"old{i}": 2.0 for i in range(5)}, **{f"new{i}": 3.0 for i in range(6)}}]
    for k, values in enumerate(steps):
        kept = mirror.add(start + k, {"tokens_per_second": values})
        browser.execute_script("window.council.handle({kind: 'history', data: arguments[0]});",
                               point_json(start + k, kept, ("tokens_per_second",)))
    drawn = browser.execute_script("""
        const series = window.council.state.history.charts.tokens_per_second;
        return Object.keys(series).filter((name) => /^(old|new)/.test(name)).sort();""")
    assert drawn == sorted(mirror.to_json()["charts"]["tokens_per_second"]), drawn
    assert len(drawn) == MAX_SERIES and "new5" in drawn and "old9" in drawn
    assert console_errors(browser) == []


def page_picture(driver: WebDriver) -> dict[str, object]:
    """What the page shows of the policy: the slot legend's processes, the playground's choices, the step."""
    return driver.execute_script("""
        return {slots: [...document.querySelectorAll('#gpus [data-process]')].map((e) => e.dataset.process).sort(),
                playground: [...document.querySelectorAll('#pg-model option')].map((o) => o.value),
                step: document.getElementById('history-step').textContent};""")


def test_dashboard_follows_a_reload(serve: Callable[..., CouncilServer], syn: Path, browser: WebDriver) -> None:
    """Before, a reload reached only the member rows: the page kept the old slot plan, offered the removed
    council in the playground (404 when asked) and not the new one, and kept the old history step."""
    server = serve(policy(syn, history="1s"))
    browser.get(f"{server.url}/ui")
    until(lambda: page_picture(browser) == {"slots": ["alphabet/0", "alphabet/1", "alphabet/2", "solo/0"],
                                            "playground": ["alphabet", "solo", "long", "other", "syn"],
                                            "step": "· a point every 1 s"}, "the page before the reload")
    browser.execute_script("window.notReloaded = true;")

    server.policy_path.write_text(policy(syn, history="2s", solo=("duo", 2)))
    reloaded = httpx.post(f"{server.url}/admin/reload", timeout=60)
    assert reloaded.status_code == 200, reloaded.text
    processes = sorted({m["process"] for m in httpx.get(f"{server.url}/admin/slots").json()["members"]})
    assert "duo/0" in processes and "solo/0" not in processes
    assert httpx.get(f"{server.url}/admin/history").json()["step"] == 2
    until(lambda: page_picture(browser) == {"slots": processes,
                                            "playground": ["alphabet", "duo", "long", "other", "syn"],
                                            "step": "· a point every 2 s"}, "the page after the reload")
    assert browser.execute_script("return window.council.state.history.step;") == 2  # it trims to the new window
    assert browser.execute_script("return window.notReloaded === true;")  # the stream told it, not a new load

    # The new council answers from the playground.
    until(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, "the new council ready")
    browser.find_element(By.CSS_SELECTOR, "#pg-model option[value='duo']").click()
    browser.find_element(By.ID, "pg-question").send_keys("Say the alphabet")
    browser.find_element(By.ID, "pg-ask").click()
    until(lambda: browser.find_element(By.ID, "pg-answer").get_attribute("data-done") == "true", "the answer")
    assert browser.find_element(By.ID, "pg-answer").text == "abcdef"
    assert console_errors(browser) == []


def test_more_councils_than_the_palette_share_no_colour(
        serve: Callable[..., CouncilServer], syn: Path, browser: WebDriver) -> None:
    """The palette has 9 colours and the page reused them: with 12 councils, c00 and c09 (c01 and c10, c02 and
    c11) drew their lines and slots in one colour, which nothing else on the strip or the chart tells apart."""
    names = [f"c{i:02d}" for i in range(12)]
    server = serve(policy_yaml({"other": {"path": syn, "ctx_size": 512}},
                               {n: {"members": [member_entry("other", max_tokens=6)]} for n in names},
                               server={"host": "127.0.0.1", "port": 8080, "history": "1s"}))
    browser.get(f"{server.url}/ui")
    until(lambda: len(member_states(browser)) == 12, "the member rows")
    for name in names:  # an answer each: a line each in the councils' charts, tok/s in the processes' chart
        body = {"model": name, "messages": [{"role": "user", "content": "abc"}]}
        assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30).status_code == 200

    def strokes() -> dict[str, dict[str, str]]:
        return browser.execute_script("""
            return Object.fromEntries(Object.entries(window.council.plots).map(([chart, u]) => [chart,
                Object.fromEntries(u.series.slice(1).map((s, i) => [s.label, s.stroke(u, i + 1)]))]));""")

    drawn = until(lambda: (s := strokes()) and all(len(s.get(c, {})) == 12 for c in
                                                   ("agreement", "latency", "tokens_per_second")) and s,
                  "a line per council and per process", timeout=60)
    for chart in ("agreement", "latency", "tokens_per_second"):
        assert len(set(drawn[chart].values())) == 12, (chart, drawn[chart])  # type: ignore[index]
    assert drawn["agreement"] == drawn["latency"]  # type: ignore[index]  # a council's colour is its own
    # The slot strip: a colour per council, the one its lines have (the first 9 are the palette's, as before).
    held = browser.execute_script("""
        return [...document.querySelectorAll('#gpus .slot.held')].map((e) =>
            [e.title.match(/council (\\S+)\\)/)[1], e.style.getPropertyValue('--c')]);""")
    assert sorted(map(tuple, held)) == sorted(drawn["agreement"].items())  # type: ignore[index]
    assert drawn["agreement"]["c00"] == "#4e79a7" and drawn["agreement"]["c08"] == "#9c755f"  # type: ignore[index]
    assert console_errors(browser) == []


class FlakyFront:
    """A front for one router, as HAProxy is in the compose stack: every request goes through to the router, but
    while `failing` is set `GET /admin/history` is answered 503 (counted in `refused`), and `after_snapshot`'s
    bytes go out on an event stream after its first snapshot. Runs its own event loop in a thread."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.url = upstream, ""
        self.failing = threading.Event()
        self.refused = 0
        self.after_snapshot = b""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FlakyFront:
        self._thread.start()
        port = free_port()
        asyncio.run_coroutine_threadsafe(self._start(port), self._loop).result(10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(20)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self, port: int) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()

    async def _stop(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/admin/history" and self.failing.is_set():
            self.refused += 1
            return web.Response(status=503, text="no router could answer")
        sent = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with self._session.request(request.method, self.upstream + request.path_qs, headers=sent,
                                         data=await request.read()) as up:
            reply = web.StreamResponse(status=up.status, headers={
                k: v for k, v in up.headers.items() if k.lower() in ("content-type", "cache-control")})
            await reply.prepare(request)
            buffer, extra = b"", self.after_snapshot if request.path == "/admin/events" else b""
            async for chunk in up.content.iter_any():
                if not extra:
                    await reply.write(chunk)
                    continue
                buffer += chunk  # whole events only, so the extra ones go in between two
                end = buffer.find(b"\n\n", buffer.find(b"event: snapshot"))
                if end < 0 or b"event: snapshot" not in buffer:
                    continue
                await reply.write(buffer[:end + 2] + extra + buffer[end + 2:])
                buffer, extra = b"", b""
            return reply


def test_dashboard_reads_the_history_again_after_it_failed(
        serve: Callable[..., CouncilServer], syn: Path, browser: WebDriver) -> None:
    """A failed GET /admin/history (a 5xx, a blip) left the charts at "could not read the history" until the
    stream reconnected: nothing asked again, and every `history` event meanwhile was kept, without bound. The page
    asks again (1 s, 2 s, ... at most every 30 s) and keeps no more points than a ring holds."""
    server = serve(policy(syn, history="1s"))
    capacity = 3600  # an hour of 1 s points
    stale = time.time() - 2 * capacity  # points older than any the router has: the load leaves them out
    extra = 400 + capacity  # more than a ring holds, as over an hour of failing reads would bring
    with FlakyFront(server.url) as front:
        front.failing.set()
        front.after_snapshot = b"".join(
            b"event: history\ndata: " + json.dumps({"time": stale + i, "charts": {
                "requests": {"in flight": 0.0, "waiting": 0.0}}}).encode() + b"\n\n" for i in range(extra))
        browser.get(f"{front.url}/ui")
        pending = "return window.council.state.pendingPoints.map((p) => p.time);"
        kept = until(lambda: (times := browser.execute_script(pending)) and stale + extra - 1 in times and times,
                     "the stream's points, kept while the history cannot be read")
        assert len(kept) <= capacity and kept[0] >= stale + extra - capacity, len(kept)  # the newest kept
        until(lambda: front.refused >= 3, "the page asking again", timeout=20)  # 1 s, then 2 s
        assert len(browser.execute_script(pending)) <= capacity
        assert "could not read the history" in browser.find_element(By.ID, "charts").text

        front.failing.clear()  # the router answers: the charts are the router's own, as if nothing failed
        until(lambda: browser.execute_script("return window.council.state.history !== null;"), "the history read",
              timeout=20)
        shown = until(lambda: "requests" in (drawn := page_history(browser)) and drawn, "the charts")
        assert_drawn_as_served(shown, httpx.get(f"{server.url}/admin/history").json())  # no stale point drawn
        assert browser.execute_script("return window.council.state.pendingPoints.length;") == 0
        assert "could not read the history" not in browser.find_element(By.ID, "charts").text  # it stayed, before

        # Charts already drawn, then a reload's fresh snapshot whose history read fails: drawn again after it.
        front.failing.set()
        refused = front.refused
        browser.execute_script("window.notReloaded = true;")
        assert httpx.post(f"{server.url}/admin/reload", timeout=60).status_code == 200
        until(lambda: front.refused >= refused + 2, "the page asking again after the reload", timeout=20)
        front.failing.clear()
        until(lambda: browser.execute_script("return window.council.state.history !== null;"), "the history read",
              timeout=20)
        drawn = until(lambda: browser.execute_script("""
            const plots = Object.values(window.council.plots);  // drawn in the page, not in cells it let go
            return "requests" in window.council.plots && plots.every((u) => u.root.isConnected) && plots.length;"""),
                      "the charts on the page")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#charts [data-chart] canvas")) == drawn
        assert_drawn_as_served(page_history(browser), httpx.get(f"{server.url}/admin/history").json())
        assert browser.execute_script("return window.notReloaded === true;")
        failed = [e for e in console_errors(browser) if "/admin/history" not in str(e["message"])]
        assert failed == []  # the refused reads are logged by the browser; nothing else went wrong
