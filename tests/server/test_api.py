"""The HTTP API against a real `council serve` (uvicorn) with real llama-server members, called with the
real openai SDK, litellm and curl."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from council.members.binary import LlamaServerInfo
from council.server.auth import is_loopback
from tests.conftest import run_cli
from tests.policies import member_entry, policy_yaml
from tests.servers import CouncilServer

CHAT_KEY, ADMIN_KEY = "chat-key-0123456789", "admin-key-9876543210"


def policy(syn: Path, long_ctx: int = 512, solo_tokens: int = 6, **server: object) -> str:
    return policy_yaml(
        {"syn": {"path": syn, "ctx_size": 512, "draft": {"type": "mtp", "n_max": 2}},
         "other": {"path": syn, "ctx_size": long_ctx}},
        {"alphabet": {"members": [member_entry("syn", max_tokens=6)] * 2,
                      "vote": {"strategy": "majority", "extract": "text"}},
         "solo": {"members": [member_entry("other", max_tokens=solo_tokens)]}},
        server={"host": "127.0.0.1", "port": 8080, **server})


@pytest.fixture
def open_server(serve: Callable[..., CouncilServer], syn: Path) -> CouncilServer:
    return serve(policy(syn))


def test_openai_sdk_council_answer_with_ballot(open_server: CouncilServer) -> None:
    client = openai.OpenAI(base_url=f"{open_server.url}/v1", api_key="unused")
    reply = client.chat.completions.create(model="alphabet", messages=[{"role": "user", "content": "go"}])
    assert reply.choices[0].message.content == "abcdef"
    assert reply.choices[0].finish_reason == "length"  # the synthetic members never stop: max_tokens cut them
    council = reply.model_extra["council"]
    assert council["answer"] == "abcdef" and council["agreement"] == 1.0
    assert [m["status"] for m in council["members"]] == ["ok", "ok"]
    assert council["members"][0]["draft_acceptance"] is not None  # MTP members report acceptance
    assert reply.usage.completion_tokens == 12  # both members' tokens
    ballot = httpx.get(f"{open_server.url}/v1/ballots/{reply.id}").json()
    assert ballot["answer"] == "abcdef" and [a["member"] for a in ballot["answers"]] == ["alphabet/0", "alphabet/1"]


def test_openai_sdk_streaming_council_and_passthrough(open_server: CouncilServer) -> None:
    client = openai.OpenAI(base_url=f"{open_server.url}/v1", api_key="unused")
    chunks = list(client.chat.completions.create(model="alphabet", stream=True,
                                                 messages=[{"role": "user", "content": "go"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "abcdef"
    assert chunks[-1].model_extra["council"]["answer"] == "abcdef"
    assert chunks[-1].choices[0].finish_reason == "length"  # the members were cut off by max_tokens: 6
    relayed = list(client.chat.completions.create(model="other", stream=True, max_tokens=8,
                                                  messages=[{"role": "user", "content": "go"}]))
    pieces = [c.choices[0].delta.content for c in relayed if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "abcdefgh" and len(pieces) >= 4  # relayed token by token
    plain = client.chat.completions.create(model="other", max_tokens=3, messages=[{"role": "user", "content": "x"}])
    assert plain.choices[0].message.content == "abc"
    assert plain.model == "other"  # the policy's name, never the GGUF's path on the host


def test_litellm_and_curl_as_clients(open_server: CouncilServer) -> None:
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    reply = litellm.completion(model="openai/alphabet", api_base=f"{open_server.url}/v1", api_key="unused",
                               messages=[{"role": "user", "content": "go"}])
    assert reply.choices[0].message.content == "abcdef"
    body = json.dumps({"model": "solo", "messages": [{"role": "user", "content": "go"}]})
    out = subprocess.run(["curl", "-sS", "-H", "Content-Type: application/json", "-d", body,
                          f"{open_server.url}/v1/chat/completions"], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout)["council"]["answer"] == "abcdef"


def chat(model: str = "alphabet", content: object = "x", **fields: object) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], **fields}).encode()


def test_bad_requests_are_4xx_in_the_openai_shape(open_server: CouncilServer) -> None:
    url = f"{open_server.url}/v1/chat/completions"
    cases = [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_body"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "missing_model"),
        (json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).encode(), 404,
         "model_not_found"),
        (json.dumps({"model": "alphabet", "messages": []}).encode(), 400, "empty_messages"),
        (json.dumps({"model": "alphabet", "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400,
         "invalid_message"),
        (json.dumps({"model": "alphabet", "messages": [{"role": "user"}], "max_tokens": -1}).encode(), 400,
         "invalid_max_tokens"),
        (b'{"model": "alphabet", "messages": [{"role": "user", "content": "' + b"x" * (2 << 20) + b'"}]}', 413,
         "body_too_large"),
        # Found under load: each of these went to every member and came back 503 quorum_not_met (or 500).
        (chat(content={"text": "an object is not content"}), 400, "invalid_message"),
        (chat(content=None), 400, "invalid_message"),
        (json.dumps({"model": "alphabet", "messages": [{"role": "user"}]}).encode(), 400, "invalid_message"),
        (chat(tools={"type": "function"}), 400, "invalid_tools"),
        (chat(tools=[{"type": "function", "function": {"description": "no name"}}]), 400, "invalid_tools"),
        (chat(tool_choice="sometimes"), 400, "invalid_tool_choice"),
        (chat(response_format={"type": "yaml"}), 400, "invalid_response_format"),
        (chat(response_format={"type": "json_schema"}), 400, "invalid_response_format"),
        (chat(temperature="hot"), 400, "invalid_temperature"),
        (chat(temperature="0.7"), 400, "invalid_temperature"),
        (chat(temperature=3), 400, "invalid_temperature"),
        (chat(top_logprobs=99), 400, "invalid_top_logprobs"),
        (chat(stream="yes"), 400, "invalid_stream"),
        (chat(n=2), 400, "invalid_n"),
        (chat(content=[{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]), 400,
         "unsupported_content"),
        (b'{"model": "alphabet", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "invalid_json"),
    ]
    for body, status, code in cases:
        reply = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
        assert reply.status_code == status, (code, reply.text)
        error = reply.json()["error"]
        assert error["code"] == code and error["message"] and error["type"]
    assert httpx.get(url).status_code == 405
    missing = httpx.get(f"{open_server.url}/v1/ballots/chatcmpl-nope").json()["error"]
    assert missing["code"] == "ballot_not_found"


def test_a_chunked_body_past_max_body_is_refused_as_it_arrives(open_server: CouncilServer) -> None:
    """Without a Content-Length the body is counted as it comes: past `server.max_body` (1 MiB) the router answers
    413 and closes the connection, rather than reading (and first holding) whatever a client sends."""
    sent = 0
    ceiling = 64 << 20

    def endless() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"model": "alphabet", "messages": [{"role": "user", "content": "'
        while sent < ceiling:
            sent += 64 << 10
            yield b"x" * (64 << 10)

    reply = httpx.post(f"{open_server.url}/v1/chat/completions", content=endless(),
                       headers={"Content-Type": "application/json"}, timeout=60)
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "body_too_large"
    assert reply.headers["connection"] == "close"
    assert sent < 16 << 20  # the client stopped sending soon after the limit (socket buffers hold a few MiB)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_that_stops_arriving_is_408_and_its_connection_closes(serve: Callable[..., CouncilServer],
                                                                      syn: Path, framing: str) -> None:
    """A client that sent part of a body and went silent held its socket and a task for good (before admission,
    so no limit counted it: a few hundred such connections used up the router's file descriptors). Past
    `server.body_timeout` the router answers 408 and closes the connection."""
    import socket
    import time
    from urllib.parse import urlsplit

    server = serve(policy(syn, body_timeout="1s"))
    where = urlsplit(server.url)
    framed = (b"Content-Length: 1000\r\n\r\n" + b'{"model": "alphabet"' if framing == "content-length" else
              b"Transfer-Encoding: chunked\r\n\r\n" + b'14\r\n{"model": "alphabet"\r\n')
    started = time.monotonic()
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + framed)
        reply = b""
        while chunk := sock.recv(65536):  # until the router closes the connection
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower(), reply
    assert json.loads(body)["error"]["code"] == "body_timeout" and b"server.body_timeout" in body, body
    assert time.monotonic() - started < 25  # the router's second, not the socket's 30
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_models_health_readiness_admin_and_metrics(open_server: CouncilServer) -> None:
    base = open_server.url
    models = httpx.get(f"{base}/v1/models").json()
    assert {m["id"] for m in models["data"]} == {"alphabet", "solo", "syn", "other"}
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base}/readyz").json() == {"ready": True, "reasons": []}
    members = httpx.get(f"{base}/admin/members").json()["members"]
    assert {m["name"] for m in members} == {"alphabet/0", "alphabet/1", "solo/0"}
    assert all(m["state"] == "ready" and m["pid"] for m in members)
    assert httpx.get(f"{base}/admin/slots").json()["councils"][0]["fits"] is True
    body = {"model": "alphabet", "messages": [{"role": "user", "content": "x"}]}
    httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30)
    text = httpx.get(f"{base}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    answers = [s for s in families["council_answers"].samples if s.name == "council_answers_total"]
    assert answers and answers[0].labels["council"] == "alphabet" and answers[0].value >= 1
    assert {"council_request_seconds", "council_process_tokens_per_second", "council_process_draft_acceptance",
            "council_process_restarts", "council_slots_used", "council_agreement"} <= set(families)
    # A process is labelled `process`, a seat's vote `seat` (both were `member`, one word for two things).
    assert {s.labels["process"] for s in families["council_process_ready"].samples} == {
        "alphabet/0", "alphabet/1", "solo/0"}
    assert {s.labels["seat"] for s in families["council_seat_votes"].samples} == {"alphabet/0", "alphabet/1"}


def test_auth_keys_scopes_and_errors(serve: Callable[..., CouncilServer], syn: Path) -> None:
    digest = hashlib.sha256(CHAT_KEY.encode()).hexdigest()
    keys = [{"name": "app", "sha256": digest}, {"name": "ops", "env": "ADMIN_KEY", "scopes": ["chat", "admin"]}]
    # as a Secret mounted from a file holds it, newline and all: a client sends the key without one
    server = serve(policy(syn, api_keys=keys), env={"ADMIN_KEY": f"{ADMIN_KEY}\n"})
    url = f"{server.url}/v1/chat/completions"
    body = {"model": "alphabet", "messages": [{"role": "user", "content": "go"}]}
    missing = httpx.post(url, json=body)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=CHAT_KEY)
    assert client.chat.completions.create(**body).choices[0].message.content == "abcdef"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="bad").chat.completions.create(**body)
    forbidden = httpx.get(f"{server.url}/admin/members", headers={"Authorization": f"Bearer {CHAT_KEY}"})
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "insufficient_scope"
    assert httpx.get(f"{server.url}/admin/members", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # liveness needs no key


def test_refuses_to_bind_beyond_loopback_without_keys(syn: Path, tmp_path: Path) -> None:
    path = tmp_path / "open.yaml"
    path.write_text(policy(syn))
    result = run_cli("serve", str(path), "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in result.stderr


def test_an_empty_host_is_every_interface_not_loopback(syn: Path, tmp_path: Path) -> None:
    """uvicorn binds "" to every interface; before, it passed as loopback and served without keys."""
    assert not is_loopback("")
    assert is_loopback("localhost") and is_loopback("127.0.0.1") and is_loopback("::1")
    path = tmp_path / "open.yaml"
    path.write_text(policy(syn))
    result = run_cli("serve", str(path), "--host", "")
    assert result.returncode == 2
    assert 'refusing to serve on "" (every interface) without API keys' in result.stderr


def test_flood_gets_429_with_retry_after(serve: Callable[..., CouncilServer], syn: Path) -> None:
    digest = hashlib.sha256(CHAT_KEY.encode()).hexdigest()
    server = serve(policy(syn, long_ctx=8192, solo_tokens=3000, max_queue=2,
                          api_keys=[{"name": "app", "sha256": digest, "rate_limit": 2}]),
                   headers={"Authorization": f"Bearer {CHAT_KEY}"})
    headers = {"Authorization": f"Bearer {CHAT_KEY}"}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            body = {"model": "solo", "messages": [{"role": "user", "content": "go"}]}
            return await asyncio.gather(*(client.post(f"{server.url}/v1/chat/completions", json=body,
                                                      headers=headers) for _ in range(8)))

    replies = asyncio.run(flood())
    limited = [r for r in replies if r.status_code == 429]
    assert limited and all(r.headers.get("retry-after", "").isdigit() for r in limited)
    assert {r.json()["error"]["code"] for r in limited} <= {"rate_limited", "queue_full"}
    assert any(r.status_code == 200 for r in replies)
    assert not [r for r in replies if r.status_code >= 500]


def test_reload_restarts_only_changed_members_and_refuses_bad_policy(
    serve: Callable[..., CouncilServer], syn: Path
) -> None:
    server = serve(policy(syn))
    pids = {m["name"]: m["pid"] for m in httpx.get(f"{server.url}/admin/members").json()["members"]}
    server.policy_path.write_text(policy(syn, long_ctx=1024))  # only `other` (the solo council's model) changes
    changes = httpx.post(f"{server.url}/admin/reload", timeout=60).json()
    assert changes["reloaded"] is True
    assert changes["unchanged"] == ["alphabet/0", "alphabet/1"] and changes["restarted"] == ["solo/0"]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    assert client.chat.completions.create(model="alphabet", messages=[{"role": "user", "content": "go"}]).choices
    after = {m["name"]: m["pid"] for m in httpx.get(f"{server.url}/admin/members").json()["members"]}
    assert after["alphabet/0"] == pids["alphabet/0"] and after["alphabet/1"] == pids["alphabet/1"]
    assert after["solo/0"] != pids["solo/0"]
    server.policy_path.write_text("models: {broken: {ctx_size: -1}}\n")
    refused = httpx.post(f"{server.url}/admin/reload", timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_policy"
    assert any("models.broken" in p for p in refused.json()["problems"])
    assert client.chat.completions.create(model="alphabet", messages=[{"role": "user", "content": "go"}]).choices
    # A policy only this machine can refuse (a draft type the installed llama-server does not know): refused
    # before anything stops, as `council check` refuses it; before, the changed processes were stopped first.
    server.policy_path.write_text(policy(syn).replace("type: mtp", "type: ngram_mod"))
    refused = httpx.post(f"{server.url}/admin/reload", timeout=60)
    assert refused.status_code == 400, refused.text
    assert any("models.syn.draft.type" in p and "ngram_mod" in p for p in refused.json()["problems"])
    assert {m["name"]: m["pid"] for m in httpx.get(f"{server.url}/admin/members").json()["members"]} == after


def test_reload_keeps_each_keys_bucket(serve: Callable[..., CouncilServer], syn: Path) -> None:
    """Before, a reload rebuilt the key ring: every key's token bucket refilled and in-flight counts reset."""
    digest = hashlib.sha256(CHAT_KEY.encode()).hexdigest()
    text = policy(syn, api_keys=[{"name": "app", "sha256": digest, "rate_limit": 0.05},
                                 {"name": "ops", "env": "ADMIN_KEY", "scopes": ["chat", "admin"]}])
    app, ops = ({"Authorization": f"Bearer {k}"} for k in (CHAT_KEY, ADMIN_KEY))
    server = serve(text, env={"ADMIN_KEY": ADMIN_KEY}, headers=ops)
    url = f"{server.url}/v1/chat/completions"
    body = {"model": "alphabet", "messages": [{"role": "user", "content": "go"}]}
    assert httpx.post(url, json=body, headers=app, timeout=30).status_code == 200  # the bucket's one token
    assert httpx.post(url, json=body, headers=app, timeout=30).status_code == 429
    reloaded = httpx.post(f"{server.url}/admin/reload", headers=ops, timeout=60)
    assert reloaded.status_code == 200 and reloaded.json()["unchanged"] == ["alphabet/0", "alphabet/1", "solo/0"]
    assert httpx.post(url, json=body, headers=app, timeout=30).status_code == 429  # still empty: 20 s a token


def test_schemathesis_finds_no_server_error(open_server: CouncilServer) -> None:
    result = subprocess.run(
        [str(Path(__import__("sys").executable).parent / "schemathesis"), "run", f"{open_server.url}/openapi.json",
         "--checks", "not_a_server_error", "--max-examples", "30", "--seed", "1"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1]


@pytest.mark.parametrize("command", [["up"], ["serve"], ["eval", "alphabet", "DATA"]])
def test_a_policy_only_this_machine_refuses_is_exit_2_before_anything_starts(
        syn: Path, tmp_path: Path, command: list[str], llama_server_bin: LlamaServerInfo) -> None:
    """A draft type the installed llama-server lacks: `council check`'s own lines, exit 2, no process started.
    Before, `up` and `eval` failed building the launch with a traceback (exit 1) and `serve` with uvicorn's
    lifespan log (exit 3)."""
    path = tmp_path / "typo.yaml"
    path.write_text(policy(syn).replace("type: mtp", "type: ngram_mod"))
    data = tmp_path / "data.jsonl"
    data.write_text('{"question": "go", "answer": "abcdef"}\n')
    result = run_cli(command[0], str(path), *[str(data) if a == "DATA" else a for a in command[1:]],
                     env={"COUNCIL_HOME": str(tmp_path / "home"), "LLAMA_SERVER": str(llama_server_bin.path)},
                     timeout=120)
    assert result.returncode == 2, result.stderr
    assert "models.syn.draft.type" in result.stderr and "ngram_mod" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home" / "run").exists()  # no member was started


def test_a_port_already_taken_is_one_line_before_any_member_starts(
        syn: Path, tmp_path: Path, llama_server_bin: LlamaServerInfo) -> None:
    """Before, uvicorn bound the port only after its lifespan had started every member: a taken port was found
    once they were up, and reported as uvicorn's log line with exit 3 (which says a council does not fit)."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        path = tmp_path / "policy.yaml"
        path.write_text(policy(syn))
        port = taken.getsockname()[1]
        result = run_cli("serve", str(path), "--port", str(port), timeout=120,
                         env={"COUNCIL_HOME": str(tmp_path / "home"), "LLAMA_SERVER": str(llama_server_bin.path)})
    finally:
        taken.close()
    assert result.returncode == 1, result.stderr
    assert f"cannot bind 127.0.0.1:{port}: Address already in use" in result.stderr
    assert not (tmp_path / "home" / "run").exists()  # no member was started
