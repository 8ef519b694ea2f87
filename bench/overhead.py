"""What the router adds: the same requests to one member directly and through `council serve`.

    python -m bench.overhead [--seconds 5] [--rounds 3] [--baseline GITREF]   (needs wrk: apt-get install wrk)

Part 1, a real member (the synthetic qwen35 model, 1 token per request): direct to the llama-server vs
through the router as a passthrough (`model` = the model) and as a 1-member council, driven by wrk with
one connection in interleaved rounds; p50/p99 of each and the difference, plus the router's CPU time per
request (from /proc).
Part 2, throughput against a stub upstream (bench/stub_llama_server.py, which answers instantly: the one
place a stub is right, since it isolates the router): wrk drives passthrough and a 3-member council;
member calls/s = council requests/s x 3. Goals: <= 1 ms added at p50; >= 1,000 member calls/s on 2 cores.
Part 3, what validating a body against the OpenAI schema costs (server/requests.py, pydantic in strict mode),
beside the JSON parse every request has always paid: a one-line chat, and an agent's body (a system prompt,
20 turns, 4 tools).
Part 4, what the Responses API's translation adds beside chat (server/apis/responses.py), per request, for the
same two conversations: the request read and checked as chat vs read as Responses, translated to chat and checked
as chat; the answer written as a chat completion vs as a Response object (one message item, or two function calls).
With `--baseline GITREF` (e.g. `main`), part 1 also runs that commit's router (its tree from `git archive`, on
PYTHONPATH) beside this one, each with its own member, every path of both in the same interleaved rounds, so
"before" and "after" are measured side by side; the spread of the rounds says what a difference is worth.
Writes bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from council.members.binary import find_llama_server
from council.setup.synthetic import write_qwen35
from tests.servers import start_council_serve

RESULTS = Path(__file__).parent / "results"
BODY = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 1, "temperature": 0}
CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def policy(model: Path, members: int) -> str:
    listing = ", ".join("{model: syn}" for _ in range(members))
    return f"""
gpus: [{{name: cpu, memory: 4GiB}}]
slots: {{size: 256MiB, reserve: 0}}
server: {{max_queue: 4096}}
models:
  syn: {{path: {model}, ctx_size: 512, parallel: 4}}
councils:
  solo: {{members: [{{model: syn}}], vote: {{extract: text}}}}  # a 1-token reply is cut off: text still votes
  trio: {{members: [{listing}], vote: {{extract: text}}}}
"""


def member_endpoint(server_url: str) -> tuple[str, str, int]:
    """URL and key of the council's member process (the key from its command line: bench only)."""
    member = next(m for m in httpx.get(f"{server_url}/admin/members").json()["members"] if m["name"] == "solo/0")
    argv = Path(f"/proc/{member['pid']}/cmdline").read_bytes().split(b"\0")
    key = argv[argv.index(b"--api-key") + 1].decode()
    return f"http://127.0.0.1:{member['port']}", key, member["pid"]


def latency(work: Path, seconds: int, rounds: int, env: dict[str, str],
            routers: dict[str, dict[str, str]] | None = None) -> dict[str, object]:
    """wrk with one connection (a C client: it takes almost no CPU from the 2 cores the router and the
    member share), `rounds` interleaved runs of `seconds` per path; medians of wrk's percentiles and the spread
    (max - min) of the p50s across rounds. `routers`: label -> extra environment of each router measured
    (default: this tree's only); the rows are `LABEL direct|passthrough|council` ("" for this tree)."""
    routers = routers or {"": {}}
    servers = {}
    targets: dict[str, tuple[str, dict[str, object], dict[str, str], int]] = {}
    try:
        for label, extra in routers.items():
            home = work / (label or "this")
            home.mkdir(parents=True, exist_ok=True)
            server = servers[label] = start_council_serve(
                policy(write_qwen35(home / "syn.gguf", mtp=False), 1), home, {**env, **extra})
            url, key, _ = member_endpoint(server.url)
            prefix = f"{label} " if label else ""
            pid = server.proc.pid
            targets[f"{prefix}direct"] = (f"{url}/v1/chat/completions", BODY, {"Authorization": f"Bearer {key}"}, pid)
            targets[f"{prefix}passthrough"] = (f"{server.url}/v1/chat/completions", {**BODY, "model": "syn"}, {}, pid)
            targets[f"{prefix}council"] = (f"{server.url}/v1/chat/completions", {**BODY, "model": "solo"}, {}, pid)
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
        for _ in range(rounds):
            for name, (target, body, headers, pid) in targets.items():
                before = cpu_seconds(pid)
                result = wrk_run(target, body, seconds, work, connections=1, headers=headers)
                used = cpu_seconds(pid) - before
                result["router_cpu_ms_per_request"] = used / result["requests"] * 1000
                runs[name].append(result)
    finally:
        for server in servers.values():
            server.stop()
    doc: dict[str, object] = {"seconds_per_run": seconds, "rounds": rounds}
    for name, results in runs.items():
        doc[name] = {k: statistics.median(r[k] for r in results)
                     for k in ("p50_ms", "p99_ms", "rps", "router_cpu_ms_per_request")}
        doc[name]["p50_spread_ms"] = max(r["p50_ms"] for r in results) - min(r["p50_ms"] for r in results)  # type: ignore[index]
    for label in routers:
        prefix = f"{label} " if label else ""
        base = doc[f"{prefix}direct"]
        for name in ("passthrough", "council"):
            row = doc[f"{prefix}{name}"]
            row["added_p50_ms"] = row["p50_ms"] - base["p50_ms"]  # type: ignore[index]
            row["added_p99_ms"] = row["p99_ms"] - base["p99_ms"]  # type: ignore[index]
    return doc


def baseline_tree(ref: str, into: Path) -> Path:
    """The package as it was at `ref` (for a side-by-side run), unpacked from git."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref, "council"], capture_output=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%s
wrk.body = '%s'
"""


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk_run(url: str, body: dict[str, object], seconds: int, work: Path, connections: int = 32,
            headers: dict[str, str] | None = None) -> dict[str, float]:
    script = work / "post.lua"
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
    script.write_text(LUA % (extra, json.dumps(body)))
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    assert re.search(r"Non-2xx or 3xx responses: (\d+)", out) is None, out
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
            "p50_ms": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
            "p99_ms": _ms(re.search(r"\s99%\s+(\S+)", out).group(1))}  # type: ignore[union-attr]


def wrk(url: str, body: dict[str, object], seconds: int, work: Path, connections: int = 32) -> float:
    return wrk_run(url, body, seconds, work, connections)["rps"]


def throughput(work: Path, seconds: int, env: dict[str, str]) -> dict[str, float]:
    stub = Path(__file__).with_name("stub_llama_server.py")
    model = write_qwen35(work / "stub.gguf", mtp=False)  # only planned with; the stub never reads it
    server = start_council_serve(policy(model, 3), work, {**env, "LLAMA_SERVER": str(stub)})
    try:
        url, _, _ = member_endpoint(server.url)
        doc = {"stub_direct_rps": wrk(f"{url}/v1/chat/completions", BODY, seconds, work)}
        doc["passthrough_rps"] = wrk(f"{server.url}/v1/chat/completions", {**BODY, "model": "syn"}, seconds, work)
        doc["council_1_rps"] = wrk(f"{server.url}/v1/chat/completions", {**BODY, "model": "solo"}, seconds, work)
        doc["council_3_rps"] = wrk(f"{server.url}/v1/chat/completions", {**BODY, "model": "trio"}, seconds, work)
        doc["member_calls_per_s"] = doc["council_3_rps"] * 3
    finally:
        server.stop()
    return doc


def validation_cost(repeat: int = 2000) -> dict[str, dict[str, float]]:
    """Microseconds per body: json.loads alone vs json.loads + ChatRequest validation."""
    import timeit

    from council.server.requests import ChatRequest, parse_json, validate_body

    tool = {"type": "function", "function": {"name": "lookup", "description": "find a thing",
                                             "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 20} for i in range(20)]
    system = {"role": "system", "content": "be brief " * 50}
    bodies = {"one-line chat": {**BODY, "model": "solo"},
              "agent (20 turns, 4 tools)": {"model": "solo", "messages": [system, *turns], "tools": [tool] * 4,
                                            "temperature": 0.2, "max_tokens": 256}}
    result = {}
    for name, body in bodies.items():
        raw = json.dumps(body).encode()
        parse = min(timeit.repeat(lambda raw=raw: parse_json(raw), number=repeat, repeat=5)) / repeat * 1e6
        both = min(timeit.repeat(lambda raw=raw: validate_body(parse_json(raw), ChatRequest), number=repeat,
                                 repeat=5)) / repeat * 1e6
        result[name] = {"bytes": len(raw), "parse_us": parse, "parse_and_validate_us": both,
                        "validate_us": both - parse}
    return result


def translation_cost(repeat: int = 2000) -> dict[str, dict[str, float]]:
    """Microseconds per request, chat beside Responses: reading the body, and writing the answer."""
    import timeit

    from council.server.apis.responses import output_items, response_object, to_chat, validate_responses
    from council.server.requests import ChatRequest, parse_json, validate_body

    tool = {"type": "function", "name": "lookup", "description": "find a thing",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}
    chat_tool = {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 20} for i in range(20)]
    bodies = {"one-line": ({**BODY, "model": "solo"},
                           {"model": "solo", "input": "go", "max_output_tokens": 1, "temperature": 0}),
              "agent (20 turns, 4 tools)": (
                  {"model": "solo", "messages": [{"role": "system", "content": "be brief " * 50}, *turns],
                   "tools": [chat_tool] * 4, "temperature": 0.2, "max_tokens": 256},
                  {"model": "solo", "instructions": "be brief " * 50, "input": turns, "tools": [tool] * 4,
                   "temperature": 0.2, "max_output_tokens": 256})}

    def responses(raw: bytes) -> None:
        body = parse_json(raw)
        validate_body(to_chat(validate_responses(body), body, []), ChatRequest)

    def best(work: object) -> float:
        return min(timeit.repeat(work, number=repeat, repeat=5)) / repeat * 1e6  # type: ignore[arg-type]

    result: dict[str, dict[str, float]] = {}
    for name, (chat, resp) in bodies.items():
        raw_chat, raw_resp = json.dumps(chat).encode(), json.dumps(resp).encode()
        result[f"request, {name}"] = {
            "chat_us": best(lambda raw=raw_chat: validate_body(parse_json(raw), ChatRequest)),
            "responses_us": best(lambda raw=raw_resp: responses(raw))}
    ask = validate_responses(bodies["agent (20 turns, 4 tools)"][1])
    calls = [{"id": f"call_{i}", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}}
             for i in range(2)]
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    council = {"answer": "x", "members": [{"name": "m", "status": "ok"}] * 3}
    for name, message in (("text", {"role": "assistant", "content": "an answer " * 20}),
                          ("two calls", {"role": "assistant", "content": None, "tool_calls": calls})):
        result[f"answer, {name}"] = {
            "chat_us": best(lambda m=message: json.dumps(
                {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "solo", "council": council,
                 "choices": [{"index": 0, "message": m, "finish_reason": "stop"}], "usage": usage})),
            "responses_us": best(lambda m=message: json.dumps(response_object(
                "resp_x", ask, 0, "completed", output_items(m), usage, council=council)))}
    for row in result.values():
        row["added_us"] = row["responses_us"] - row["chat_us"]
    return result


def print_translation(cost: dict[str, dict[str, float]]) -> None:
    print(f"{'Responses beside chat':<34} {'chat us':>9} {'responses us':>13} {'added us':>9} {'ratio':>6}")
    for name, row in cost.items():
        print(f"{name:<34} {row['chat_us']:>9.1f} {row['responses_us']:>13.1f} {row['added_us']:>9.1f} "
              f"{row['responses_us'] / row['chat_us']:>5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds")
    parser.add_argument("--baseline", help="a git ref whose router runs beside this one in part 1 (before/after)")
    args = parser.parse_args()
    server = find_llama_server()
    assert server is not None, "run `council setup` first"
    with tempfile.TemporaryDirectory() as tmp:
        env = {"COUNCIL_HOME": tmp, "LLAMA_SERVER": str(server.path)}
        (Path(tmp) / "a").mkdir()
        (Path(tmp) / "b").mkdir()
        routers = {"": {}}
        if args.baseline:
            tree = baseline_tree(args.baseline, Path(tmp) / "baseline")
            routers[args.baseline] = {"PYTHONPATH": str(tree)}
        lat = latency(Path(tmp) / "a", args.seconds, args.rounds, env, routers)
        thr = throughput(Path(tmp) / "b", args.seconds, env)
    print(f"{'path':<24} {'p50 ms':>8} {'spread':>7} {'p99 ms':>8} {'added p50':>10} {'added p99':>10} "
          f"{'router CPU/req':>15}")
    for label in routers:
        for path in ("direct", "passthrough", "council"):
            name = f"{label} {path}" if label else path
            row = lat[name]
            extra = "" if path == "direct" else (f"{row['added_p50_ms']:>10.3f} {row['added_p99_ms']:>10.3f} "  # type: ignore[index]
                                                 f"{row['router_cpu_ms_per_request']:>12.3f} ms")  # type: ignore[index]
            print(f"{name:<24} {row['p50_ms']:>8.3f} {row['p50_spread_ms']:>7.3f} {row['p99_ms']:>8.3f} {extra}")  # type: ignore[index]
    if args.baseline:
        for path in ("passthrough", "council"):
            now, then = lat[path], lat[f"{args.baseline} {path}"]
            print(f"{path}: added p50 {now['added_p50_ms']:.3f} ms now vs {then['added_p50_ms']:.3f} ms at "  # type: ignore[index]
                  f"{args.baseline} ({now['router_cpu_ms_per_request'] / then['router_cpu_ms_per_request']:.2f}x "  # type: ignore[index]
                  "the router CPU per request)")
    print(f"throughput (stub upstream, wrk -c32): stub direct {thr['stub_direct_rps']:.0f} req/s, passthrough "
          f"{thr['passthrough_rps']:.0f} req/s, 1-member council {thr['council_1_rps']:.0f} req/s, 3-member council "
          f"{thr['council_3_rps']:.0f} req/s = {thr['member_calls_per_s']:.0f} member calls/s")
    valid = validation_cost()
    for name, row in valid.items():
        print(f"validation, {name} ({row['bytes']} B): parse {row['parse_us']:.1f} us, parse + validate "
              f"{row['parse_and_validate_us']:.1f} us (validation {row['validate_us']:.1f} us, "
              f"{row['parse_and_validate_us'] / row['parse_us']:.1f}x the parse)")
    translation = translation_cost()
    print_translation(translation)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps({"latency": lat, "throughput": thr, "validation": valid,
                                                        "translation": translation,
                                                        "cpus": os.cpu_count(),
                                                        "python": sys.version.split()[0]}, indent=2))


if __name__ == "__main__":
    main()
