"""Passthrough and the council's reply fields against a real `council serve` with real llama-server members:
passthrough goes through the same member client as council calls (its slots and rate limit), text completions
are relayed, a council returns the winner's logprobs, and a request every member refuses is the client's 400."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from council.setup.catalog import by_name
from council.setup.synthetic import write_qwen35
from tests.policies import member_entry, policy_yaml
from tests.servers import CouncilServer, wait_for

SMOL = by_name("smollm2-135m")
assert SMOL is not None


def policy(syn: Path) -> str:
    # `long` is a real small model: slow enough (~100 tok/s here) that a long reply holds its slot for a while.
    return policy_yaml({"syn": {"path": syn, "ctx_size": 512}, "long": {"path": SMOL.path, "ctx_size": 4096}},
                       {"alphabet": {"members": [member_entry("syn", max_tokens=6)] * 2, "vote": {"extract": "text"}},
                        "limited": {"members": [member_entry("long", rate_limit=0.5)]}})


def members(server: CouncilServer) -> dict[str, dict[str, object]]:
    return {m["name"]: m for m in httpx.get(f"{server.url}/admin/members").json()["members"]}


def test_passthrough_holds_the_process_slot_and_the_members_rate_limit(
    serve: Callable[..., CouncilServer], tmp_path: Path
) -> None:
    """Before, passthrough went around the slot semaphore and the member's rate limit that council calls keep."""
    server = serve(policy(write_qwen35(tmp_path / "syn.gguf")))
    url = f"{server.url}/v1/chat/completions"
    done: list[str] = []

    def call(max_tokens: int) -> None:
        body = {"model": "long", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "go"}]}
        reply = httpx.post(url, json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        done.append(reply.json()["choices"][0]["message"]["content"])

    long = {"model": "long", "max_tokens": 3000, "ignore_eos": True, "stream": True,
            "messages": [{"role": "user", "content": "Count to a thousand."}]}
    with httpx.stream("POST", url, json=long, timeout=120) as streamed:
        lines = streamed.iter_lines()  # kept: a dropped iterator would close the stream
        next(lines)  # the long passthrough holds the process's one slot (parallel 1)
        second = threading.Thread(target=call, args=(2,))
        second.start()
        # The second call waits in the router for that slot, not inside llama-server.
        wait_for(lambda: members(server)["limited/0"]["waiting"] == 1, "the second call to queue in the router")
        assert not done and members(server)["limited/0"]["in_flight"] == 1
    second.join(60)  # closing the stream freed the slot
    assert len(done) == 1
    # rate_limit 0.5/s: one call per two seconds, passthrough included. A short call takes its turn; the next
    # waits for the rest of the two seconds.
    call(2)
    started = time.monotonic()
    call(2)
    assert time.monotonic() - started >= 1.0


def test_text_completions_are_relayed_for_models(serve: Callable[..., CouncilServer], tmp_path: Path) -> None:
    """Before, POST /v1/completions (what editor and agent clients call) was 404."""
    server = serve(policy(write_qwen35(tmp_path / "syn.gguf")))
    reply = httpx.post(f"{server.url}/v1/completions", json={"model": "syn", "prompt": "go", "max_tokens": 3},
                       timeout=60)
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assert doc["model"] == "syn" and doc["choices"][0]["text"] and doc["usage"]["completion_tokens"] == 3
    with httpx.stream("POST", f"{server.url}/v1/completions", timeout=60,
                      json={"model": "syn", "prompt": "go", "max_tokens": 4, "stream": True}) as streamed:
        events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert len(events) >= 4 and events[-1] == "data: [DONE]"
    council = httpx.post(f"{server.url}/v1/completions", json={"model": "alphabet", "prompt": "go"}, timeout=30)
    assert council.status_code == 400 and council.json()["error"]["code"] == "council_needs_chat"
    bad = httpx.post(f"{server.url}/v1/completions", json={"model": "syn", "prompt": {"no": 1}}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_prompt"


def test_council_returns_the_winners_logprobs_and_rejections_are_400(
    serve: Callable[..., CouncilServer], tmp_path: Path
) -> None:
    server = serve(policy(write_qwen35(tmp_path / "syn.gguf")))
    url = f"{server.url}/v1/chat/completions"
    body = {"model": "alphabet", "messages": [{"role": "user", "content": "go"}], "logprobs": True, "top_logprobs": 2}
    doc = httpx.post(url, json=body, timeout=60).json()
    tokens = doc["choices"][0]["logprobs"]["content"]  # before, a council dropped them
    assert "".join(t["token"] for t in tokens) == doc["choices"][0]["message"]["content"] == "abcdef"
    assert all(len(t["top_logprobs"]) == 2 for t in tokens)
    # Every member refuses a broken grammar (llama-server's 400): the request is at fault, not the members.
    rejected = httpx.post(url, timeout=60, json={"model": "alphabet", "grammar": "root ::= (",
                                                 "messages": [{"role": "user", "content": "go"}]})
    assert rejected.status_code == 400, rejected.text
    error = rejected.json()["error"]
    assert error["code"] == "rejected_by_members" and "failed to parse grammar" in error["message"]
    # Fields llama-server knows and OpenAI does not pass through to the members untouched.
    extra = httpx.post(url, timeout=60, json={"model": "alphabet", "n_probs": 1, "cache_prompt": False,
                                              "messages": [{"role": "user", "content": "go"}]})
    assert extra.status_code == 200 and extra.json()["council"]["answer"] == "abcdef"


def test_a_passthrough_with_n_choices_holds_n_slots(serve: Callable[..., CouncilServer]) -> None:
    """`n: 2` is two generations in llama-server: it takes both of the process's two slots, so the next call waits
    in the router (before, it held one slot and the next call went in beside it)."""
    two = policy_yaml({"long": {"path": SMOL.path, "ctx_size": 4096, "parallel": 2}},
                      {"pair": {"members": [member_entry("long")]}})
    server = serve(two)
    url = f"{server.url}/v1/chat/completions"
    long = {"model": "long", "max_tokens": 3000, "ignore_eos": True, "stream": True, "n": 2,
            "messages": [{"role": "user", "content": "Count to a thousand."}]}
    with httpx.stream("POST", url, json=long, timeout=120) as streamed:
        lines = streamed.iter_lines()  # kept: a dropped iterator would close the stream
        next(lines)
        second = threading.Thread(target=lambda: httpx.post(url, timeout=120, json={
            "model": "long", "max_tokens": 2, "messages": [{"role": "user", "content": "go"}]}))
        second.start()
        wait_for(lambda: members(server)["pair/0"]["waiting"] == 1, "the second call to wait for a free slot")
        assert members(server)["pair/0"]["in_flight"] == 1
    second.join(60)
    assert not second.is_alive()
