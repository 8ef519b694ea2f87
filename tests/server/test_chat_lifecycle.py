"""A chat request's life against a real `council serve` with real llama-server members: a client that goes away
cancels its council (the members stop generating and are not blamed), and streamed answers carry the router's
own time and are counted."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from council.setup.catalog import by_name
from tests.servers import CouncilServer

SMOL = by_name("smollm2-135m")
assert SMOL
# Members that would generate for a long time (SmolLM2-135M on a CPU, 1,500 tokens with `ignore_eos`: tens of
# seconds at least), long after a client gives up.
LONG = {"max_tokens": 1500, "ignore_eos": True}


def policy(model: Path) -> str:
    return f"""
server: {{host: 127.0.0.1, port: 8080}}
gpus: [{{name: cpu, memory: 8GiB}}]
slots: {{size: 1GiB, reserve: 0}}
models:
  syn: {{path: {model}, ctx_size: 2048}}
councils:
  pair:
    members: [{{model: syn}}, {{model: syn}}]
    vote: {{strategy: majority, extract: text}}
    timeout: 5m
"""


def members(server: CouncilServer) -> list[dict[str, object]]:
    return list(httpx.get(f"{server.url}/admin/members", timeout=10).json()["members"])


def wait_members(server: CouncilServer, busy: bool, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while (any(m["in_flight"] for m in members(server))) != busy:
        assert time.monotonic() < deadline, f"{what}: {members(server)}"
        time.sleep(0.05)


def test_a_client_that_goes_away_cancels_its_council(serve: Callable[..., CouncilServer]) -> None:
    server = serve(policy(SMOL.path))
    url = f"{server.url}/v1/chat/completions"
    body = {"model": "pair", "messages": [{"role": "user", "content": "go"}], **LONG}
    pids = {m["name"]: m["pid"] for m in members(server)}
    for _ in range(2):  # twice non-streamed and once streamed: three cancels in a row on each member
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json=body, timeout=httpx.Timeout(30, read=1.5))  # an agent that times out
        wait_members(server, False, 5, "the members went on generating after the client left")
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=30) as streamed:
        assert streamed.status_code == 200
        wait_members(server, True, 10, "the streamed council never reached its members")
        next(streamed.iter_lines())  # the first keep-alive: the council is working
    wait_members(server, False, 5, "the members went on generating after the stream was closed")
    after = members(server)
    # A cancel is not the member's failure: three in a row would have restarted it.
    assert all(m["state"] == "ready" and m["restarts"] == 0 and m["pid"] == pids[m["name"]] for m in after), after
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    counted = {(s.labels["model"], s.labels["status"]): s.value for f in text_string_to_metric_families(text)
               for s in f.samples if s.name == "council_requests_total"}
    assert counted.get(("pair", "499")) == 3.0, counted


def test_streams_carry_the_routers_time_and_are_counted(serve: Callable[..., CouncilServer], syn: Path) -> None:
    """A stream's headers leave before the work is done: a council's last chunk carries `overhead_ms`, a relayed
    stream's header the router's time before it relayed; both are counted (before: a passthrough stream never)."""
    server = serve(policy(syn))
    url = f"{server.url}/v1/chat/completions"
    ask = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", url, json={"model": "pair", **ask}, timeout=60) as council:
        assert "x-council-overhead-ms" not in council.headers
        events = [line[6:] for line in council.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["council"]["answer"] == "abcd" and 0 <= last["council"]["overhead_ms"] < 5000
    with httpx.stream("POST", url, json={"model": "syn", **ask}, timeout=60) as relayed:
        assert 0 <= float(relayed.headers["x-council-overhead-ms"]) < 5000
        text = relayed.read().decode()
    assert "[DONE]" in text
    plain = httpx.post(url, json={"model": "pair", **ask, "stream": False}, timeout=60)
    assert plain.status_code == 200 and float(plain.headers["x-council-overhead-ms"]) >= 0
    deadline = time.monotonic() + 10
    while True:  # a relayed stream is counted once it has ended (after the last byte the client read)
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        counted = {(s.labels["model"], s.labels["status"]): s.value for f in text_string_to_metric_families(text)
                   for s in f.samples if s.name == "council_requests_total"}
        if counted.get(("syn", "200")) == 1.0:
            break
        assert time.monotonic() < deadline, counted
        time.sleep(0.05)
    assert counted[("pair", "200")] == 2.0, counted
