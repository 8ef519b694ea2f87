"""Several routers sharing one Redis: slot leases never over-allocate, ballots and rate limits are shared,
a Redis outage neither stops admitted councils nor lets new leases through, and routers share one port
(`--reuse-port`)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from council.members.binary import LlamaServerInfo
from tests.policies import member_entry, policy_yaml
from tests.server.test_ui import browser, console_errors
from tests.servers import CouncilServer, free_port, wait_for

__all__ = ["browser"]  # the dashboard's headless Chromium fixture, shared

KEY = "shared-key-0123456789"
CHAT = {"model": "pair", "messages": [{"role": "user", "content": "go"}]}


def policy(syn: Path, state: str, **server: object) -> str:
    # Two slots on this host's `cpu`; the council needs both.
    return policy_yaml({"syn": {"path": syn, "ctx_size": 512}},
                       {"pair": {"members": [member_entry("syn", max_tokens=4)] * 2, "vote": {"extract": "text"}}},
                       memory="512MiB", state=state, server={"host": "127.0.0.1", **server})


def test_two_routers_on_one_host_leave_each_other_alone(serve: Callable[..., CouncilServer], syn: Path,
                                                        tmp_path: Path) -> None:
    """Two `council serve` with the same COUNCIL_HOME and member names: before, the second one's start-up cleanup
    SIGKILLed every member of the first (a pid record was stale whenever its PID still ran), and both wrote the
    same member log files."""
    home = tmp_path / "home"
    home.mkdir()
    first = serve(policy(syn, "memory"), home=home)
    before = {m["name"]: m for m in httpx.get(f"{first.url}/admin/members").json()["members"]}
    second = serve(policy(syn, "memory"), home=home)
    after = {m["name"]: m for m in httpx.get(f"{first.url}/admin/members").json()["members"]}
    assert {n: m["pid"] for n, m in after.items()} == {n: m["pid"] for n, m in before.items()}
    assert all(m["state"] == "ready" and m["restarts"] == 0 for m in after.values())
    for server in (first, second):
        assert httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
    theirs = {m["name"]: m for m in httpx.get(f"{second.url}/admin/members").json()["members"]}
    for name in after:
        assert after[name]["log"] != theirs[name]["log"]
        assert Path(after[name]["log"]).stat().st_size > 0 and Path(theirs[name]["log"]).stat().st_size > 0


def test_two_routers_never_lease_more_slots_than_the_gpu_has(
    serve: Callable[..., CouncilServer], syn: Path, redis_url: str
) -> None:
    state = redis_url.rsplit("/", 1)[0] + "/1"
    first = serve(policy(syn, state))
    second = serve(policy(syn, state), ready_path="/healthz")
    ready = httpx.get(f"{second.url}/readyz")
    assert ready.status_code == 503
    [reason] = ready.json()["reasons"]
    assert reason == ("council pair is not running: its 2 slots (512.00 MiB) on cpu are leased elsewhere "
                      "(512.00 MiB of 512.00 MiB held by other routers)")
    assert httpx.get(f"{second.url}/admin/members").json()["members"] == []  # nothing started beside them
    assert httpx.post(f"{first.url}/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
    assert first.stop() == 0  # a clean stop gives its leases back
    third = serve(policy(syn, state))
    assert httpx.post(f"{third.url}/v1/chat/completions", json=CHAT, timeout=30).json()["council"]["answer"] == "abcd"


def test_a_router_whose_slots_another_router_took_stops_its_members_and_says_why(
    serve: Callable[..., CouncilServer], syn: Path, redis_url: str, browser: WebDriver
) -> None:
    """Before, the stale lease was kept: the router's members went on running on slots the store had granted to
    another router, and /readyz said 200. Once the slots are free again, the council runs again."""
    state = redis_url.rsplit("/", 1)[0] + "/4"
    store = redis.Redis.from_url(state)
    store.flushdb()
    first = serve(policy(syn, state))
    pids = [m["pid"] for m in httpx.get(f"{first.url}/admin/members").json()["members"]]
    browser.get(f"{first.url}/ui")

    def banner() -> str | None:  # the dashboard's line over the slots for a stopped council
        shown = browser.find_elements(By.CSS_SELECTOR, "[data-lost]")
        return shown[0].text if shown else None

    with httpx.Client(base_url=first.url, timeout=60) as client, client.stream("GET", "/admin/events") as events:
        lines = events.iter_lines()
        next_event(lines, "snapshot", timeout=10)
        # The router's lease lapses (a long pause, say) and another router leases both slots: in one step, so
        # the router's renewal cannot take them back in between.
        [leases] = store.keys("council:gpu:*:leases")
        token = store.eval(TAKE_OVER, 2, leases, leases.replace(b":leases", b":fence"), "other-host:1")
        # Within a renewal round (ttl/3 = 10 s) the router finds its fencing token dead and the slots taken.
        lost = next_event(lines, "lease", timeout=30)
    assert lost["council"] == "pair" and lost["reason"].startswith("lease lost: its lease of 512.00 MiB on ")
    assert lost["reason"].endswith("is no longer held, and the GPU's memory is taken (512.00 MiB of 512.00 MiB "
                                   "held by other routers)")

    def stopped() -> bool:
        return httpx.get(f"{first.url}/admin/members").json()["members"] == []

    wait_for(stopped, "the router's members to stop", timeout=30)
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
    ready = httpx.get(f"{first.url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["reasons"] == [f"council pair is stopped: {lost['reason']}"]
    assert f"council pair stops: {lost['reason']}" in first.log()
    assert httpx.post(f"{first.url}/v1/chat/completions", json=CHAT, timeout=30).status_code == 503
    assert list(store.hgetall(leases)) == [str(token).encode()]  # the other router's lease, untouched
    wait_for(lambda: banner() == f"council pair is stopped: {lost['reason']}", "the dashboard to say so")

    # The other router stops and gives the slots back: within a renewal round the council runs again (it stayed
    # stopped until someone reloaded).
    store.hdel(leases, str(token))
    wait_for(lambda: httpx.get(f"{first.url}/readyz").status_code == 200, "the council to run again", timeout=90)
    assert len(httpx.get(f"{first.url}/admin/members").json()["members"]) == len(pids)
    assert httpx.post(f"{first.url}/v1/chat/completions", json=CHAT, timeout=60).status_code == 200
    wait_for(lambda: banner() is None, "the dashboard to stop saying it is stopped")
    assert console_errors(browser) == []


# Replace every lease of a GPU with one of `holder` for all its 512 MiB, 5 minutes, under a fresh fencing token.
TAKE_OVER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('DEL', KEYS[1])
local token = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], token, string.format('%d %dB %s', now + 300000, 512 * 1048576, ARGV[1]))
return token
"""


def next_event(lines: Iterator[str], kind: str, timeout: float) -> dict[str, Any]:
    """The data of the next server-sent event of `kind` (the stream sends something at least every 5 s)."""
    deadline, current = time.monotonic() + timeout, ""
    for line in lines:
        if line.startswith("event: "):
            current = line[7:]
        elif line.startswith("data: ") and current == kind:
            return dict(json.loads(line[6:]))
        assert time.monotonic() < deadline, f"no {kind} event within {timeout} s"
    raise AssertionError(f"the stream ended before a {kind} event")


def test_ballots_and_rate_limits_are_shared(serve: Callable[..., CouncilServer], syn: Path, redis_url: str) -> None:
    state = redis_url.rsplit("/", 1)[0] + "/2"
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    keys = [{"name": "app", "sha256": digest, "rate_limit": 0.2}]
    headers = {"Authorization": f"Bearer {KEY}"}
    first = serve(policy(syn, state, api_keys=keys), headers=headers)
    second = serve(policy(syn, state, api_keys=keys), ready_path="/healthz")
    answer = httpx.post(f"{first.url}/v1/chat/completions", json=CHAT, headers=headers, timeout=30).json()

    def on_second() -> bool:
        return httpx.get(f"{second.url}/v1/ballots/{answer['id']}", headers=headers).status_code == 200

    wait_for(on_second, "the ballot to reach the second router")
    ballot = httpx.get(f"{second.url}/v1/ballots/{answer['id']}", headers=headers).json()
    assert ballot["answer"] == answer["council"]["answer"] == "abcd"
    # The key's one request per 5 s was spent on the first router: the second refuses it too.
    limited = httpx.post(f"{second.url}/v1/chat/completions", json={**CHAT, "model": "syn"}, headers=headers)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


def test_redis_outage_keeps_admitted_councils_and_refuses_new_leases(
    serve: Callable[..., CouncilServer], syn: Path, tmp_path: Path
) -> None:
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                        text=True).stdout.strip() == "PONG", "redis-server")
        server = serve(policy(syn, url))
        redis.terminate()
        redis.wait(timeout=10)
        # A renewal round during the outage (ttl/3 = 10 s) loses nothing: an unreachable store is no lost lease.
        wait_for(lambda: "cannot renew leases" in server.log(), "a renewal round without Redis", timeout=30)
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        assert [m["state"] for m in httpx.get(f"{server.url}/admin/members").json()["members"]] == ["ready"] * 2
        reply = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=30)
        assert reply.status_code == 200 and reply.json()["council"]["answer"] == "abcd"  # admitted: still answers
        assert httpx.get(f"{server.url}/v1/ballots/{reply.json()['id']}").status_code == 200  # local copy
        refused = httpx.post(f"{server.url}/admin/reload", timeout=30)
        assert refused.status_code == 400
        assert any(f"Redis at {url} is unreachable" in p for p in refused.json()["problems"]), refused.json()
        assert httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
        # Redis returns (empty: it keeps nothing on disk): the same router leases again, no restart needed.
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
        wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                        text=True).stdout.strip() == "PONG", "redis-server again")
        reloaded = httpx.post(f"{server.url}/admin/reload", timeout=30)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["unchanged"] == ["pair/0", "pair/1"]
        leased = subprocess.run(["redis-cli", "-p", str(port), "--scan", "--pattern", "council:*"],
                                capture_output=True, text=True).stdout.split()
        assert leased, "the router's leases are back in Redis"
    finally:
        redis.kill()
        redis.wait(timeout=10)


def test_a_router_answers_with_members_on_another_host_and_drops_a_dead_host(
    tmp_path: Path, syn: Path, redis_url: str, llama_server_bin: LlamaServerInfo,
    start_server: Callable[..., object],
) -> None:
    """A GPU host (`--role host`) runs a member; a router (`--role router`) runs none and answers with it.
    The council's other member is remote (an OpenAI-compatible server through litellm), so when the host
    dies the router still answers, degraded, once the host's heartbeat has lapsed."""
    far = start_server(syn)
    state = redis_url.rsplit("/", 1)[0] + "/3"
    far_url = f"{far.url}/v1"  # type: ignore[attr-defined]
    text = policy_yaml(
        {"syn": {"path": syn, "ctx_size": 512},
         "far": {"remote": {"model": "openai/far", "api_base": far_url, "api_key_env": "FAR_KEY"}}},
        {"mixed": {"members": [member_entry("syn", max_tokens=4), member_entry("far", max_tokens=4)],
                   "vote": {"extract": "text"}, "quorum": 1}},
        memory="512MiB", state=state, server={"heartbeat": "300ms"})
    env = {"LLAMA_SERVER": str(llama_server_bin.path), "COUNCIL_CLUSTER_KEY": "cluster-secret-42",
           "FAR_KEY": far.api_key}  # type: ignore[attr-defined]
    procs = []
    try:
        hosts = {}
        for role in ("host", "router"):
            workdir = tmp_path / role
            workdir.mkdir()
            port = free_port()
            (workdir / "policy.yaml").write_text(text)
            log = (workdir / "serve.log").open("wb")
            proc = subprocess.Popen([sys.executable, "-m", "council", "serve", str(workdir / "policy.yaml"),
                                     "--port", str(port), "--role", role], stdout=log, stderr=subprocess.STDOUT,
                                    # the host's key as a Secret mounted from a file holds it (a newline
                                    # at its end), the router's without: they are one key all the same
                                    env={**os.environ, **env, "COUNCIL_HOME": str(workdir),
                                         **({"COUNCIL_CLUSTER_KEY": "cluster-secret-42\n"} if role == "host" else {})})
            procs.append(proc)
            hosts[role] = f"http://127.0.0.1:{port}"

        def router_ready() -> bool:
            try:
                return httpx.get(f"{hosts['router']}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(router_ready, "the router to answer", timeout=60)
        body = {"model": "mixed", "messages": [{"role": "user", "content": "go"}]}

        def both_answer() -> bool:  # the host publishes its member once it is ready (a heartbeat later)
            doc = httpx.post(f"{hosts['router']}/v1/chat/completions", json=body, timeout=30).json()["council"]
            return [m["status"] for m in doc["members"]] == ["ok", "ok"] and not doc["degraded"]

        wait_for(both_answer, "the router to reach the member on the GPU host", timeout=60)
        # A model (not a council) is relayed to the host that serves it: chat, streamed chat, text completions.
        router = hosts["router"]
        model = {"model": "syn", "max_tokens": 4}
        chat = httpx.post(f"{router}/v1/chat/completions", timeout=30,
                          json={**model, "messages": [{"role": "user", "content": "go"}]})
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"]
        with httpx.stream("POST", f"{router}/v1/chat/completions", timeout=30,
                          json={**model, "stream": True, "messages": [{"role": "user", "content": "go"}]}) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["content-type"].startswith("text/event-stream")
            events = [line for line in streamed.iter_lines() if line.startswith("data:")]
        assert len(events) >= 3 and events[-1] == "data: [DONE]"  # token by token, not one relayed body
        text = httpx.post(f"{router}/v1/completions", json={**model, "prompt": "go"}, timeout=30)
        assert text.status_code == 200, text.text
        assert text.json()["choices"][0]["text"]
        procs[0].kill()  # the GPU host dies (its members die with it)
        procs[0].wait(timeout=10)
        died = time.monotonic()

        def dropped() -> bool:
            # Right after the kill the router still tries the dead host (a connection error); once the
            # heartbeat lapses the registry no longer lists the member at all.
            reply = httpx.post(f"{hosts['router']}/v1/chat/completions", json=body, timeout=30).json()["council"]
            first = reply["members"][0]
            assert reply["answer"] == "abcd" and reply["degraded"] and first["status"] == "error"
            return first["error"] == "process is not ready"

        wait_for(dropped, "the dead host's member to leave the vote", timeout=10)
        assert time.monotonic() - died < 3 * 0.3 + 1.5  # the heartbeat bound (3 beats) plus polling slack
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def chat_count(metrics: str, model: str) -> float:
    """Chat requests for `model` answered 200, as one router's /metrics counts them."""
    return sum(s.value for f in text_string_to_metric_families(metrics) for s in f.samples
               if s.name == "council_requests_total" and s.labels["route"] == "chat" and s.labels["model"] == model
               and s.labels["status"] == "200")


def test_routers_with_reuse_port_share_one_port_and_both_answer(
    tmp_path: Path, syn: Path, redis_url: str, llama_server_bin: LlamaServerInfo
) -> None:
    """Two `council serve --role router --reuse-port` bound to one port over one `--role host`: the kernel hands
    new connections to both, each answers councils; with one stopped the other keeps the port. Each router
    counts its own requests in /metrics, and a scrape on a fresh connection reaches one of them: after an odd
    number of requests, two different counts that add up to it can only be both routers' (a count taken before
    a request was recorded adds up to less)."""
    state = redis_url.rsplit("/", 1)[0] + "/6"
    text = policy_yaml({"syn": {"path": syn, "ctx_size": 512}},
                       {"solo": {"members": [member_entry("syn", max_tokens=4)], "vote": {"extract": "text"}}},
                       memory="512MiB", state=state, server={"heartbeat": "300ms"})
    env = {**os.environ, "LLAMA_SERVER": str(llama_server_bin.path), "COUNCIL_CLUSTER_KEY": "cluster-secret-42"}
    shared = free_port()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, port, extra in (("host", free_port(), ["--role", "host"]),
                                  ("router-1", shared, ["--role", "router", "--reuse-port"]),
                                  ("router-2", shared, ["--role", "router", "--reuse-port"])):
            workdir = tmp_path / name
            workdir.mkdir()
            (workdir / "policy.yaml").write_text(text)
            with (workdir / "serve.log").open("wb") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "council", "serve", str(workdir / "policy.yaml"), "--port", str(port),
                     *extra], stdout=log, stderr=subprocess.STDOUT, env={**env, "COUNCIL_HOME": str(workdir)})
        url = f"http://127.0.0.1:{shared}"
        body = {"model": "solo", "messages": [{"role": "user", "content": "go"}]}
        ok = [0]  # requests answered 200 so far, by either router

        def answered() -> bool:  # on a fresh connection each time (httpx.post opens its own)
            assert all(p.poll() is None for p in procs.values()), {n: p.returncode for n, p in procs.items()}
            try:
                reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
            except httpx.TransportError:
                return False
            ok[0] += reply.status_code == 200
            return reply.status_code == 200 and reply.json()["council"]["answer"] == "abcd"

        wait_for(answered, "a council answer through the shared port", timeout=90)
        deadline = time.monotonic() + 90

        def both_counted() -> bool:
            counts = {chat_count(httpx.get(f"{url}/metrics", timeout=10).text, "solo") for _ in range(12)}
            return any(a != b and a > 0 and b > 0 and a + b == ok[0] for a in counts for b in counts)

        while not (ok[0] % 2 == 1 and both_counted()):
            assert time.monotonic() < deadline, f"both routers never answered ({ok[0]} requests)"
            assert answered(), "a request through the shared port failed"
        procs["router-1"].terminate()
        assert procs["router-1"].wait(timeout=40) == 0
        del procs["router-1"]
        for _ in range(6):  # the kernel sends every new connection to the router left
            assert answered()
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=40)


def test_reuse_port_is_only_for_routers(syn: Path, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(policy(syn, "memory"))
    result = subprocess.run([sys.executable, "-m", "council", "serve", str(path), "--reuse-port"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COUNCIL_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "--reuse-port is for --role router" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("role", "host", "server", "published"), [
    ("host", "0.0.0.0", {}, "http://0.0.0.0:8080"),
    ("both", "::", {}, "http://[::]:8080"),  # `both` with shared state publishes its members too
    ("host", "127.0.0.1", {"advertise_url": "http://0.0.0.0:9000"}, "http://0.0.0.0:9000"),
])
def test_a_host_published_at_a_wildcard_address_is_refused(
    syn: Path, tmp_path: Path, role: str, host: str, server: dict[str, str], published: str,
) -> None:
    """Before, it served and published its members as http://0.0.0.0:8080: no other router reached them, and two
    such hosts overwrote each other's registry entry (the URL is its key)."""
    path = tmp_path / "policy.yaml"
    # Refused before Redis is reached: nothing listens at this one.
    path.write_text(policy(syn, "redis://127.0.0.1:1/0", api_keys=[{"name": "a", "env": "COUNCIL_TEST_KEY"}],
                           **server))
    result = subprocess.run([sys.executable, "-m", "council", "serve", str(path), "--role", role, "--host", host,
                             "--port", "8080"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COUNCIL_HOME": str(tmp_path), "COUNCIL_TEST_KEY": "k" * 24,
                                 "COUNCIL_CLUSTER_KEY": "c" * 32})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: --role {role} publishes this host's members as {published}, which other routers cannot reach: "
        "set server.advertise_url to how they reach this host (e.g. http://gpu-a:8080)"]
