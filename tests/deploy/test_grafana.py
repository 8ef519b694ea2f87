"""deploy/grafana/council.json: it loads as a dashboard, and every metric its PromQL reads is one that a live
`council serve` exposes on /metrics (scraped after real council requests, so the labelled series exist)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from council.members.binary import LlamaServerInfo
from council.setup.synthetic import write_qwen35
from tests.policies import member_entry, policy_yaml
from tests.servers import CouncilServer, start_council_serve

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "council.json"
KEY = "grafana-test-key-0123456789"
SLOW = "grafana-slow-key-0123456789"  # rate-limited: its second request is refused
# Every panel the issue names, by a word of its title.
WANTED = ("Requests per second", "Latency per council", "Router overhead", "Agreement", "Early stops",
          "Degraded answers", "Decode speed", "Draft acceptance", "Restarts", "Process states", "Slots in use")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(doc: dict) -> list[str]:
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in doc["templating"]["list"] if v["type"] == "query"]
    return exprs


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers before a selector `{`, a range `[`, or alone,
    that are not functions, keywords or label names."""
    stripped = re.sub(r'"[^"]*"', '""', expr)  # label values and regexes are not names
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    stripped = re.sub(r"\{[^}]*\}", "{}", stripped)  # label matchers
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped))
    functions = {"sum", "max", "min", "avg", "count", "rate", "increase", "irate", "histogram_quantile",
                 "label_values", "le", "council", "process", "seat", "topk", "abs", "clamp_min"}
    return {n for n in names if not n.startswith("__") and n not in functions and not n.isdigit()}


def test_the_dashboard_loads_and_has_every_panel_the_issue_names() -> None:
    doc = dashboard()
    assert doc["uid"] == "council" and doc["title"] and isinstance(doc["schemaVersion"], int)
    titles = [p["title"] for p in doc["panels"]]
    for want in WANTED:
        assert any(want in t for t in titles), (want, titles)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for t in p.get("targets", []):
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
    assert all(metric_names(q) for q in queries(doc)), "a query reads no metric"


def test_metric_names_are_found_in_promql() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(council_request_seconds_bucket'
            '{model=~"$council"}[$__rate_interval]))) / council_slots_total')
    assert metric_names(expr) == {"council_request_seconds_bucket", "council_slots_total"}


@pytest.fixture(scope="module")
def council(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: LlamaServerInfo) -> Iterator[CouncilServer]:
    """A real `council serve`: two members of the synthetic qwen35 model with MTP (so draft acceptance is
    measured), and a rate-limited key (so a refusal is counted)."""
    workdir = tmp_path_factory.mktemp("grafana")
    syn = write_qwen35(workdir / "syn.gguf")
    policy = policy_yaml(
        {"syn": {"path": syn, "ctx_size": 512, "threads": 1, "draft": {"type": "mtp", "n_max": 2}}},
        {"pair": {"members": [member_entry("syn", max_tokens=8), member_entry("syn", max_tokens=8, seed=3)],
                  "vote": {"extract": "text"}}},
        memory="1GiB", server={"api_keys": [{"name": "ci", "env": "GRAFANA_TEST_KEY", "scopes": ["chat", "admin"]},
                                            {"name": "slow", "env": "GRAFANA_SLOW_KEY", "rate_limit": 0.2}]})
    env = {"COUNCIL_HOME": str(workdir), "LLAMA_SERVER": str(llama_server_bin.path), "GRAFANA_TEST_KEY": KEY,
           "GRAFANA_SLOW_KEY": SLOW}
    server = start_council_serve(policy, workdir, env)
    yield server
    assert server.stop() == 0, server.log()[-2000:]


def scrape(server: CouncilServer) -> dict[str, set[str]]:
    """Sample name -> its label names, from the live /metrics."""
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def test_every_metric_the_dashboard_reads_is_exposed_by_a_live_council(council: CouncilServer) -> None:
    body = {"model": "pair", "messages": [{"role": "user", "content": "abc"}]}
    slow = {"Authorization": f"Bearer {SLOW}"}
    assert httpx.post(f"{council.url}/v1/chat/completions", json=body, headers=slow, timeout=60).status_code == 200
    refused = httpx.post(f"{council.url}/v1/chat/completions", json=body, headers=slow, timeout=60)
    assert refused.status_code == 429, refused.text  # 0.2 requests/s: the second at once is refused
    doc = dashboard()
    used = set().union(*(metric_names(q) for q in queries(doc)))
    # Processes' tok/s and draft acceptance come from the supervisor's scrape of each llama-server: keep
    # asking until it has run.
    deadline = time.monotonic() + 60
    while True:
        reply = httpx.post(f"{council.url}/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert reply.status_code == 200, reply.text
        exposed = scrape(council)
        missing = sorted(used - set(exposed))
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, f"the dashboard reads metrics that council serve does not expose: {missing}"
    # The labels the panels group and filter by exist on the metrics they read.
    for q in queries(doc):
        names = metric_names(q)
        labels = set().union(*(exposed[n] for n in names))
        grouped = {lb.strip() for g in re.findall(r"\bby \(([^)]*)\)", q) for lb in g.split(",")} - {"le"}
        matched = set(re.findall(r"([a-z_]+)=~?\"", q))
        assert (grouped | matched) <= labels, (q, grouped | matched, labels)
