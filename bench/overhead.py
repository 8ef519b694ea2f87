"""What the router adds: the same requests to one member directly, through `council serve`, and through
LiteLLM's proxy; and what a second router process buys.

    python -m bench.overhead [--seconds 5] [--rounds 3] [--baseline GITREF] [--no-litellm] [--no-scale-out]
    (needs wrk: apt-get install wrk)

Part 1, a real member (the synthetic qwen35 model, 1 token per request): direct to the llama-server vs
through the router as a passthrough (`model` = the model), as a 1-member council and as a 3-member council (three
processes of the model asked at once, which on 2 cores also slow each other: an upper bound of the router's
part), and through LiteLLM's proxy to the same llama-server (its defaults, and with its logging and cost tracking
off), driven by wrk with one connection in interleaved rounds; p50/p99 of each and the difference, plus each
proxy's CPU time per request (from /proc).
Part 2, throughput against a stub upstream (bench/stub_llama_server.py, which answers instantly: the one
place a stub is right, since it isolates the router): wrk -c32 drives passthrough, a 1- and a 3-member council
and LiteLLM's proxy (both ways) in interleaved rounds; member calls/s = 3-member council requests/s x 3. Then
the same paths with one connection: the router's own added time (p50 against the stub's), without part 1's
members slowing each other down on shared cores.
Part 3, what validating a body against the OpenAI schema costs (server/requests.py, pydantic in strict mode),
beside the JSON parse every request has always paid: a one-line chat, and an agent's body (a system prompt,
20 turns, 4 tools).
Part 4, scale-out: one `--role host` (its members the stub) and a Redis of the bench's own, then one and two
`council serve --role router --reuse-port` on one port (the kernel spreads the connections): requests/s and
added p50 at 32 connections for passthrough and a 1-member council, with the CPU each process used (routers,
the host, which relays every member call to its stub, the stub and wrk: on 2 cores they all share them, which
bounds what a second router can buy).
LiteLLM (`litellm[proxy]==1.106.12`, one worker) lives in a venv of its own under the cache
(~/.cache/council/bench/litellm-venv, made on first use) so it cannot change council's FastAPI/uvicorn; when
it cannot be installed its rows are skipped with one line saying why.
Part 5, what the Anthropic Messages API's translation adds (server/apis/anthropic.py): an agent's turn (a system
prompt, 20 turns with tool calls and results, 4 tools) read, validated and translated to the chat request, beside
the same request sent as chat; a council's answer written as a message and as its events, beside the chat
completion; and litellm's Anthropic adapter doing the same translation, with its import time
(`--translation-only` runs parts 3, 5 and 6 alone, no member, no wrk).
Part 6, what the Responses API's translation adds beside chat (server/apis/responses.py), per request, for the
same two conversations: the request read and checked as chat vs read as Responses, translated to chat and checked
as chat; the answer written as a chat completion vs as a Response object (one message item, or two function calls).
With `--baseline GITREF` (e.g. `main`), part 1 also runs that commit's router (its tree from `git archive`, on
PYTHONPATH) beside this one, each with its own member, every path of both in the same interleaved rounds, so
"before" and "after" are measured side by side; the spread of the rounds says what a difference is worth.
Writes bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from council.members.binary import find_llama_server
from council.paths import council_home
from council.setup.synthetic import write_qwen35
from tests.servers import free_port, start_council_serve, start_redis

RESULTS = Path(__file__).parent / "results"
BODY = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 1, "temperature": 0}
CLK = os.sysconf("SC_CLK_TCK")
STUB = Path(__file__).with_name("stub_llama_server.py")

LITELLM = "litellm[proxy]==1.106.12"  # 1.110's `proxy` extra needs a `litellm-proxy` package the index lacks
LITELLM_VENV = council_home() / "bench" / "litellm-venv"
# LiteLLM with its per-request logging and cost tracking switched off, as far as its settings reach (read in
# 1.106.12's source). Without a database (as here) it writes no spend or error rows either way; its core still
# prices every response (no setting skips that), so the model gets a price of 0 instead of a lookup that misses.
LITELLM_QUIET = {
    "litellm_settings": {
        "turn_off_message_logging": True,  # no copy of messages and responses for logging callbacks
        "disable_end_user_cost_tracking": True,  # no spend per end user
    },
    "general_settings": {
        "disable_spend_logs": True,  # no spend-log row per request
        "disable_error_logs": True,  # no error-log row per failed request
        "disable_spend_updates": True,  # no spend written to keys, teams, users
    },
}
LITELLM_QUIET_ENV = {"LITELLM_LOG": "ERROR"}  # its own log lines and uvicorn's access log (one line per request)
LITELLM_QUIET_MODEL_INFO = {"input_cost_per_token": 0, "output_cost_per_token": 0}
LITELLM_ROWS = {"litellm": "LiteLLM, defaults", "litellm quiet": "LiteLLM, logging and cost tracking off"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def children_cpu() -> float:
    """CPU seconds of the bench's finished children (wrk, once it has been waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


LATENCY_PATHS = ("passthrough", "council", "council 3")  # part 1, each beside `direct`


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def policy(model: Path, members: int, state: str = "memory") -> str:
    listing = ", ".join("{model: syn}" for _ in range(members))
    return f"""
state: {state}
gpus: [{{name: cpu, memory: 4GiB}}]
slots: {{size: 256MiB, reserve: 0}}
server: {{max_queue: 4096, heartbeat: 1s}}
models:
  syn: {{path: {model}, ctx_size: 512, parallel: 4}}
councils:
  solo: {{members: [{{model: syn}}], vote: {{extract: text}}}}  # a 1-token reply is cut off: text still votes
  trio: {{members: [{listing}], vote: {{extract: text}}}}
"""


def member_endpoint(server_url: str) -> tuple[str, str, int]:
    """URL and key of the council's member process (the key from its environment, which its owner may read: bench
    only; a `--baseline` router older than that put it in the argument list)."""
    member = next(m for m in httpx.get(f"{server_url}/admin/members").json()["members"] if m["name"] == "solo/0")
    environ = Path(f"/proc/{member['pid']}/environ").read_bytes().split(b"\0")
    key = next((v for k, _, v in (e.partition(b"=") for e in environ) if k == b"LLAMA_API_KEY"), None)
    if key is None:
        argv = Path(f"/proc/{member['pid']}/cmdline").read_bytes().split(b"\0")
        key = argv[argv.index(b"--api-key") + 1]
    return f"http://127.0.0.1:{member['port']}", key.decode(), member["pid"]


# --- LiteLLM's proxy, in a venv of its own ---

def litellm_binary() -> tuple[Path | None, str]:
    """The `litellm` command of LITELLM, installed into LITELLM_VENV on first use; (None, why) when it cannot be."""
    exe = LITELLM_VENV / "bin" / "litellm"
    version = LITELLM.split("==")[1]
    if exe.exists() and any(LITELLM_VENV.glob(f"lib/python*/site-packages/litellm-{version}.dist-info")):
        return exe, ""
    print(f"installing {LITELLM} into {LITELLM_VENV} (once; a few minutes)", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)], check=True,
                       capture_output=True, text=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q", LITELLM], check=True,
                       capture_output=True, text=True, timeout=1800)
    except subprocess.CalledProcessError as exc:
        lines = (exc.stderr or exc.stdout or "").strip().splitlines()
        return None, f"`pip install {LITELLM}` failed: {lines[-1] if lines else exc}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"`pip install {LITELLM}` failed: {exc}"
    return (exe, "") if exe.exists() else (None, f"{LITELLM} installed no `litellm` command")


@contextlib.contextmanager
def litellm_proxy(exe: Path, upstream: str, key: str, quiet: bool, work: Path) -> Iterator[tuple[str, str, int]]:
    """`litellm --config CFG --num_workers 1` relaying model `syn` to `upstream` (an OpenAI-compatible server):
    yields its URL, master key and PID; stopped on exit."""
    port = free_port()
    master = f"sk-bench-{secrets.token_hex(12)}"  # the proxy refuses to start without a master key
    model: dict[str, object] = {"model_name": "syn", "litellm_params": {
        "model": "openai/syn", "api_base": f"{upstream}/v1", "api_key": key}}
    config: dict[str, object] = {"model_list": [model]}
    if quiet:
        model["model_info"] = LITELLM_QUIET_MODEL_INFO
        config.update(LITELLM_QUIET)
    cfg = work / f"litellm-{port}.yaml"
    cfg.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log_path = work / f"litellm-{port}.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": master,
                **(LITELLM_QUIET_ENV if quiet else {})})
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(exe), "--config", str(cfg), "--num_workers", "1", "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # its first start compiles and imports a lot (about a minute here)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"litellm exited with {proc.returncode}: {last_line(log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"litellm did not answer in 300 s: {last_line(log_path)}")
            time.sleep(0.5)
        check = httpx.post(f"{url}/v1/chat/completions", json={**BODY, "model": "syn"}, timeout=30,
                           headers={"Authorization": f"Bearer {master}"})
        if check.status_code != 200:
            raise RuntimeError(f"litellm answered {check.status_code}: {check.text[:300]}")
        yield url, master, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def with_litellm(stack: contextlib.ExitStack, exe: Path | None, upstream: str, key: str, work: Path,
                 targets: dict[str, tuple[str, dict[str, object], dict[str, str], int]]) -> None:
    """Add LiteLLM's two rows (defaults, quiet) to `targets`, both relaying to `upstream`."""
    if exe is None:
        return
    for name, quiet in (("litellm", False), ("litellm quiet", True)):
        try:
            url, master, pid = stack.enter_context(litellm_proxy(exe, upstream, key, quiet, work))
        except RuntimeError as exc:
            print(f"skipped {LITELLM_ROWS[name]}: {exc}")
            continue
        targets[name] = (f"{url}/v1/chat/completions", {**BODY, "model": "syn"},
                         {"Authorization": f"Bearer {master}"}, pid)


# --- part 1: latency against a real member ---

def latency(work: Path, seconds: int, rounds: int, env: dict[str, str],
            routers: dict[str, dict[str, str]] | None = None, litellm: Path | None = None) -> dict[str, object]:
    """wrk with one connection (a C client: it takes almost no CPU from the 2 cores the router and the
    member share), `rounds` interleaved runs of `seconds` per path; medians of wrk's percentiles and the spread
    (max - min) of the p50s across rounds. `routers`: label -> extra environment of each router measured
    (default: this tree's only); the rows are `LABEL direct|passthrough|council` ("" for this tree), plus
    `litellm` and `litellm quiet` (LiteLLM's proxy to this tree's member) when `litellm` is given."""
    routers = routers or {"": {}}
    servers = {}
    targets: dict[str, tuple[str, dict[str, object], dict[str, str], int]] = {}
    with contextlib.ExitStack() as stack:
        for label, extra in routers.items():
            home = work / (label or "this")
            home.mkdir(parents=True, exist_ok=True)
            server = servers[label] = start_council_serve(
                policy(write_qwen35(home / "syn.gguf", mtp=False), 3), home, {**env, **extra})
            stack.callback(server.stop)
            url, key, _ = member_endpoint(server.url)
            prefix = f"{label} " if label else ""
            pid = server.proc.pid
            targets[f"{prefix}direct"] = (f"{url}/v1/chat/completions", BODY, {"Authorization": f"Bearer {key}"}, pid)
            targets[f"{prefix}passthrough"] = (f"{server.url}/v1/chat/completions", {**BODY, "model": "syn"}, {}, pid)
            targets[f"{prefix}council"] = (f"{server.url}/v1/chat/completions", {**BODY, "model": "solo"}, {}, pid)
            # Three processes of the model, one call each at once: on 2 cores they also slow each other down.
            targets[f"{prefix}council 3"] = (f"{server.url}/v1/chat/completions", {**BODY, "model": "trio"}, {},
                                             pid)
            if not label:
                with_litellm(stack, litellm, url, key, work, targets)
        runs = interleaved(targets, rounds, seconds, work, connections=1)
    doc: dict[str, object] = {"seconds_per_run": seconds, "rounds": rounds, **summarise(runs)}
    base = doc["direct"]
    for name in ("litellm", "litellm quiet"):
        if name in doc:
            added(doc[name], base)  # type: ignore[arg-type]
    for label in routers:
        prefix = f"{label} " if label else ""
        for name in LATENCY_PATHS:
            added(doc[f"{prefix}{name}"], doc[f"{prefix}direct"])  # type: ignore[arg-type]
    return doc


def interleaved(targets: dict[str, tuple[str, dict[str, object], dict[str, str], int]], rounds: int, seconds: int,
                work: Path, connections: int) -> dict[str, list[dict[str, float]]]:
    """`rounds` wrk runs per target, one target after another in each round; each run with the CPU its proxy
    (the PID of the target) took per request."""
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
    for _ in range(rounds):
        for name, (target, body, headers, pid) in targets.items():
            before = cpu_seconds(pid)
            result = wrk_run(target, body, seconds, work, connections=connections, headers=headers)
            result["router_cpu_ms_per_request"] = (cpu_seconds(pid) - before) / result["requests"] * 1000
            runs[name].append(result)
    return runs


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per target: the medians over the rounds of each figure, and the spread (max - min) of p50 and requests/s."""
    doc = {}
    for name, results in runs.items():
        row = {k: statistics.median(r[k] for r in results) for k in results[0] if k not in ("requests", "non_2xx")}
        row["non_2xx"] = sum(r["non_2xx"] for r in results)
        row["p50_spread_ms"] = max(r["p50_ms"] for r in results) - min(r["p50_ms"] for r in results)
        row["rps_spread"] = max(r["rps"] for r in results) - min(r["rps"] for r in results)
        doc[name] = row
    return doc


def added(row: dict[str, float], base: dict[str, float]) -> None:
    row["added_p50_ms"] = row["p50_ms"] - base["p50_ms"]
    row["added_p99_ms"] = row["p99_ms"] - base["p99_ms"]


def added_by_round(row: dict[str, float], runs: list[dict[str, float]], base: list[dict[str, float]]) -> None:
    """The added p50 of each round against the base path's p50 in the same round (measured seconds apart, so
    what the host did meanwhile weighs on both): their median, least and greatest. On a shared VM the host's
    drift between rounds moves a median of p50s more than the router does."""
    diffs = [mine["p50_ms"] - theirs["p50_ms"] for mine, theirs in zip(runs, base, strict=True)]
    row["added_p50_ms_paired"] = statistics.median(diffs)
    row["added_p50_ms_least"], row["added_p50_ms_greatest"] = min(diffs), max(diffs)


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
    """One wrk run; its requests/s, p50/p99 and the CPU wrk itself used (in cores)."""
    script = work / "post.lua"
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
    script.write_text(LUA % (extra, json.dumps(body)))
    before = children_cpu()
    # --timeout 30s: LiteLLM at 32 connections takes longer than wrk's default 2 s, which would drop those
    # requests from the percentiles.
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "--latency",
                          "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"non_2xx": float(errors.group(1)) if errors else 0.0,  # counted, not fatal: a table says how many
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
            "p50_ms": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
            "p99_ms": _ms(re.search(r"\s99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
            "wrk_cores": (children_cpu() - before) / seconds}


# --- part 2: throughput against the stub ---

def throughput(work: Path, seconds: int, rounds: int, env: dict[str, str],
               litellm: Path | None = None) -> dict[str, object]:
    """wrk -c32 in interleaved rounds against the stub upstream: the stub itself, passthrough, the 1- and
    3-member councils, and LiteLLM's proxy to the same stub."""
    model = write_qwen35(work / "stub.gguf", mtp=False)  # only planned with; the stub never reads it
    with contextlib.ExitStack() as stack:
        server = start_council_serve(policy(model, 3), work, {**env, "LLAMA_SERVER": str(STUB)})
        stack.callback(server.stop)
        url, key, stub_pid = member_endpoint(server.url)
        chat, pid = f"{server.url}/v1/chat/completions", server.proc.pid
        targets = {"stub direct": (f"{url}/v1/chat/completions", BODY, {}, stub_pid),
                   "passthrough": (chat, {**BODY, "model": "syn"}, {}, pid),
                   "council 1": (chat, {**BODY, "model": "solo"}, {}, pid),
                   "council 3": (chat, {**BODY, "model": "trio"}, {}, pid)}
        with_litellm(stack, litellm, url, key, work, targets)
        runs = interleaved(targets, rounds, seconds, work, connections=32)
        # One connection against the instant upstream: the router's own added time, apart from how real members
        # slow each other down on shared cores (part 1's 3-member council runs three llama-servers on 2 cores).
        alone = interleaved({k: v for k, v in targets.items() if not k.startswith("litellm")}, rounds, seconds,
                            work, connections=1)
    doc: dict[str, object] = {"seconds_per_run": seconds, "rounds": rounds, "connections": 32, **summarise(runs)}
    calls = [r["rps"] * 3 for r in runs["council 3"]]
    doc["member_calls_per_s"] = {"median": statistics.median(calls), "spread": max(calls) - min(calls)}
    one = doc["one_connection"] = summarise(alone)
    for name in ("passthrough", "council 1", "council 3"):
        added(one[name], one["stub direct"])
        added_by_round(one[name], alone[name], alone["stub direct"])
    return doc


# --- part 4: one router process against two on one port ---

def listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:`port` (each process bound with SO_REUSEPORT has its own)."""
    want = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1] == want and line.split()[3] == "0A")


def start_router(policy_path: Path, port: int, home: Path, env: dict[str, str],
                 serving: int) -> subprocess.Popen[bytes]:
    """One more `council serve --role router --reuse-port` on `port`; returns once `serving` processes listen."""
    home.mkdir(parents=True, exist_ok=True)
    with (home / "serve.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "council", "serve", str(policy_path), "--port", str(port),
                                 "--role", "router", "--reuse-port"], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **env, "COUNCIL_HOME": str(home)})
    deadline = time.monotonic() + 120
    while listeners(port) < serving:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"router did not start:\n{(home / 'serve.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


def answer_in_a_row(url: str, count: int = 60, timeout: float = 60) -> None:
    """`count` council answers in a row, each on a fresh connection (so each router is asked, and each has
    read the host's members from the registry)."""
    deadline, streak = time.monotonic() + timeout, 0
    while streak < count:
        assert time.monotonic() < deadline, f"the routers did not answer {count} in a row"
        try:
            ok = httpx.post(f"{url}/v1/chat/completions", json={**BODY, "model": "solo"}, timeout=10).status_code == 200
        except httpx.HTTPError:
            ok = False
        streak = streak + 1 if ok else 0
        if not ok:
            time.sleep(0.1)


def scale_out(work: Path, seconds: int, rounds: int, env: dict[str, str]) -> dict[str, object]:
    """One and then two routers (`--reuse-port`, one port) over one `--role host` whose members are the stub,
    sharing a Redis of the bench's own; wrk -c32 in rounds against passthrough and the 1-member council, with the
    CPU (in cores) each router, the stub member and wrk used."""
    redis_proc, redis_url = start_redis(work)
    # A heartbeat of 5 s: on 2 busy cores a host's 1 s beat can lapse, and the routers would drop its members.
    text = policy(write_qwen35(work / "stub.gguf", mtp=False), 3, state=redis_url).replace("heartbeat: 1s",
                                                                                           "heartbeat: 5s")
    stub_env = {**env, "LLAMA_SERVER": str(STUB), "COUNCIL_CLUSTER_KEY": secrets.token_hex(16)}
    routers: list[subprocess.Popen[bytes]] = []
    doc: dict[str, object] = {"seconds_per_run": seconds, "rounds": rounds, "connections": 32}
    try:
        (work / "host").mkdir()
        host = start_council_serve(text, work / "host", {**stub_env, "COUNCIL_HOME": str(work / "host")},
                                   args=("--role", "host"))
        try:
            member, _, stub_pid = member_endpoint(host.url)
            (work / "policy.yaml").write_text(text)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            for n in (1, 2):
                routers.append(start_router(work / "policy.yaml", port, work / f"router-{n}", stub_env, serving=n))
                answer_in_a_row(url)
                targets = {"stub direct": (f"{member}/v1/chat/completions", BODY),
                           "passthrough": (f"{url}/v1/chat/completions", {**BODY, "model": "syn"}),
                           "council 1": (f"{url}/v1/chat/completions", {**BODY, "model": "solo"})}
                if n == 2:
                    del targets["stub direct"]  # measured once, with one router
                runs: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
                for _ in range(rounds):
                    for name, (target, body) in targets.items():
                        pids = {"stub": stub_pid, "host": host.proc.pid,
                                **{f"router {i + 1}": r.pid for i, r in enumerate(routers)}}
                        before = {k: cpu_seconds(pid) for k, pid in pids.items()}
                        result = wrk_run(target, body, seconds, work)
                        for k, pid in pids.items():
                            result[f"{k} cores"] = (cpu_seconds(pid) - before[k]) / seconds
                        runs[name].append(result)
                for name, row in summarise(runs).items():
                    doc[name if name == "stub direct" else f"{n} router{'s' if n > 1 else ''} {name}"] = row
        finally:
            for proc in routers:
                proc.terminate()
            for proc in routers:
                proc.wait(timeout=40)
            host.stop()
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
    base = doc["stub direct"]
    for key, row in doc.items():
        if isinstance(row, dict) and key != "stub direct":
            added(row, base)  # type: ignore[arg-type]
    return doc


# --- part 3: validation ---

def validation_cost(repeat: int = 2000) -> dict[str, dict[str, float]]:
    """Microseconds per body: json.loads alone vs json.loads + ChatRequest validation."""
    import timeit

    from council.server.requests import ChatRequest, parse_json, validate_body

    tool = {"type": "function", "function": {"name": "lookup", "description": "find a thing",
                                             "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 20} for i in range(20)]
    system = {"role": "system", "content": "be brief " * 50}
    bodies = {"one-line chat": {**BODY, "model": "solo"},
              "agent (20 turns, 4 tools)": {"model": "solo", "messages": [system, *turns], "tools": [
                  {**tool, "function": {**tool["function"], "name": f"lookup{i}"}} for i in range(4)],
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


# --- the tables ---

def print_latency(lat: dict[str, object], routers: dict[str, dict[str, str]], baseline: str | None) -> None:
    print(f"latency, one connection, a real member (p50 and its spread over {lat['rounds']} rounds)")
    print(f"{'path':<40} {'p50 ms':>8} {'spread':>7} {'p99 ms':>8} {'added p50':>10} {'added p99':>10} "
          f"{'proxy CPU/req':>14}")
    names = [f"{label} {path}" if label else path for label in routers for path in ("direct", *LATENCY_PATHS)]
    names += [n for n in LITELLM_ROWS if n in lat]
    for name in names:
        row: dict[str, float] = lat[name]  # type: ignore[assignment]
        extra = "" if "added_p50_ms" not in row else (f"{row['added_p50_ms']:>10.3f} {row['added_p99_ms']:>10.3f} "
                                                       f"{row['router_cpu_ms_per_request']:>11.3f} ms")
        print(f"{LITELLM_ROWS.get(name, name):<40} {row['p50_ms']:>8.3f} {row['p50_spread_ms']:>7.3f} "
              f"{row['p99_ms']:>8.3f} {extra}")
    if baseline:
        for path in LATENCY_PATHS:
            now: dict[str, float] = lat[path]  # type: ignore[assignment]
            then: dict[str, float] = lat[f"{baseline} {path}"]  # type: ignore[assignment]
            print(f"{path}: added p50 {now['added_p50_ms']:.3f} ms now vs {then['added_p50_ms']:.3f} ms at "
                  f"{baseline} ({now['router_cpu_ms_per_request'] / then['router_cpu_ms_per_request']:.2f}x "
                  "the router CPU per request)")


def print_throughput(thr: dict[str, object]) -> None:
    print(f"\nthroughput, wrk -c32, the stub upstream (median requests/s and spread over {thr['rounds']} rounds)")
    print(f"{'path':<40} {'req/s':>8} {'spread':>7} {'p50 ms':>8} {'p99 ms':>8} {'proxy CPU/req':>14}")
    for name in ("stub direct", "passthrough", "council 1", "council 3", *LITELLM_ROWS):
        if name in thr:
            row: dict[str, float] = thr[name]  # type: ignore[assignment]
            print(f"{LITELLM_ROWS.get(name, name):<40} {row['rps']:>8.0f} {row['rps_spread']:>7.0f} "
                  f"{row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} {row['router_cpu_ms_per_request']:>11.3f} ms")
    calls: dict[str, float] = thr["member_calls_per_s"]  # type: ignore[assignment]
    print(f"3-member council: {calls['median']:.0f} member calls/s (spread {calls['spread']:.0f})")
    one: dict[str, dict[str, float]] = thr["one_connection"]  # type: ignore[assignment]
    print("\nthe router's own added time: one connection, the stub upstream (no member contention)")
    print(f"{'path':<40} {'p50 ms':>8} {'spread':>7} {'added p50':>10} {'added p99':>10} {'proxy CPU/req':>14}"
          f"  {'added p50 by round: median (least-greatest)':>44}")
    for name in ("stub direct", "passthrough", "council 1", "council 3"):
        row = one[name]
        extra = "" if "added_p50_ms" not in row else (
            f"{row['added_p50_ms']:>10.3f} {row['added_p99_ms']:>10.3f} {row['router_cpu_ms_per_request']:>11.3f} ms"
            f"  {row['added_p50_ms_paired']:>23.3f} "
            f"({row['added_p50_ms_least']:.3f}-{row['added_p50_ms_greatest']:.3f})")
        print(f"{name:<40} {row['p50_ms']:>8.3f} {row['p50_spread_ms']:>7.3f} {extra}")


def print_versus_litellm(lat: dict[str, object], thr: dict[str, object]) -> dict[str, float]:
    """council against LiteLLM with its logging off, same run, same upstream: the ratios of the goals."""
    if "litellm quiet" not in lat or "litellm quiet" not in thr:
        return {}
    theirs_lat: dict[str, float] = lat["litellm quiet"]  # type: ignore[assignment]
    theirs_thr: dict[str, float] = thr["litellm quiet"]  # type: ignore[assignment]
    ratios = {}
    print("\ncouncil vs LiteLLM with logging and cost tracking off (goals: added p50 <= 1/10 of LiteLLM's, "
          "requests/s >= 10x)")
    for name, label in (("passthrough", "passthrough (one upstream call)"), ("council", "1-member council")):
        ours: dict[str, float] = lat[name]  # type: ignore[assignment]
        ratios[f"{name}_added_p50_share"] = ours["added_p50_ms"] / theirs_lat["added_p50_ms"]
        print(f"{label:<34} added p50 {ours['added_p50_ms']:.3f} ms vs {theirs_lat['added_p50_ms']:.3f} ms = "
              f"1/{theirs_lat['added_p50_ms'] / ours['added_p50_ms']:.1f}")
    for name, label in (("passthrough", "passthrough (one upstream call)"), ("council 1", "1-member council"),
                        ("council 3", "3-member council")):
        ours = thr[name]  # type: ignore[assignment]
        ratios[f"{name.replace(' ', '_')}_rps_ratio"] = ours["rps"] / theirs_thr["rps"]
        print(f"{label:<34} {ours['rps']:.0f} req/s vs {theirs_thr['rps']:.0f} req/s = "
              f"{ours['rps'] / theirs_thr['rps']:.1f}x")
    return ratios


def print_scale_out(doc: dict[str, object]) -> None:
    print(f"\nscale-out, wrk -c32, routers sharing one port (--reuse-port), the stub upstream, Redis "
          f"(medians over {doc['rounds']} rounds; CPU in cores)")
    print(f"{'path':<28} {'req/s':>8} {'spread':>7} {'p50 ms':>8} {'added p50':>10} {'router 1':>9} "
          f"{'router 2':>9} {'host':>6} {'stub':>6} {'wrk':>6}")
    for name, row in doc.items():
        if not isinstance(row, dict):
            continue
        added_p50 = f"{row['added_p50_ms']:>10.3f}" if "added_p50_ms" in row else f"{'':>10}"
        r2 = f"{row['router 2 cores']:>9.2f}" if "router 2 cores" in row else f"{'—':>9}"
        r1 = f"{row['router 1 cores']:>9.2f}" if "router 1 cores" in row else f"{'—':>9}"
        print(f"{name:<28} {row['rps']:>8.0f} {row['rps_spread']:>7.0f} {row['p50_ms']:>8.3f} {added_p50} {r1} {r2} "
              f"{row['host cores']:>6.2f} {row['stub cores']:>6.2f} {row['wrk_cores']:>6.2f}")
    for path in ("passthrough", "council 1"):
        one: dict[str, float] = doc[f"1 router {path}"]  # type: ignore[assignment]
        two: dict[str, float] = doc[f"2 routers {path}"]  # type: ignore[assignment]
        print(f"{path}: two routers {two['rps'] / one['rps']:.2f}x the requests/s of one, added p50 "
              f"{two['added_p50_ms']:.3f} vs {one['added_p50_ms']:.3f} ms")


def translation_cost(repeat: int = 500) -> dict[str, float]:
    """Microseconds per request: reading an Anthropic agent turn into the chat request a council is asked, beside
    the same request as chat; writing an answer back; litellm's adapter on the same body."""
    import time
    import timeit

    from council.server.apis import anthropic
    from council.server.requests import ChatRequest, parse_json, validate_body
    from council.server.routes.chat import completion_body
    from council.voting.client import MemberReply
    from council.voting.engine import CouncilAnswer, Seat, SeatOutcome
    from council.voting.vote import Decision

    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    tools = [{"name": f"lookup{i}", "description": "find a thing", "input_schema": schema} for i in range(4)]
    turns: list[dict[str, object]] = []
    for i in range(10):
        turns.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i - 1}",
                                                   "content": f"found {i} " * 20}] if i else f"question {i} " * 20})
        turns.append({"role": "assistant", "content": [{"type": "text", "text": f"looking {i} " * 10}, {
            "type": "tool_use", "id": f"toolu_{i}", "name": "lookup0", "input": {"q": f"thing {i}"}}]})
    turns.append({"role": "user", "content": [  # the last call answered too, as Anthropic requires
        {"type": "tool_result", "tool_use_id": "toolu_9", "content": "found 10 " * 20},
        {"type": "text", "text": "and so?"}]})
    body = {"model": "solo", "system": "be brief " * 50, "messages": turns, "tools": tools, "max_tokens": 256,
            "temperature": 0.2}
    raw = json.dumps(body).encode()

    def messages_in() -> object:
        doc = parse_json(raw)
        chat_body = anthropic.to_chat(anthropic.validate(doc, anthropic.MessagesRequest), doc)
        chat = validate_body(chat_body, ChatRequest)
        return chat.council_request(chat_body)  # type: ignore[attr-defined]

    def translate() -> object:  # what the Messages API adds before chat's own validation
        doc = parse_json(raw)
        return anthropic.to_chat(anthropic.validate(doc, anthropic.MessagesRequest), doc)

    doc = parse_json(raw)
    chat_raw = json.dumps(anthropic.to_chat(anthropic.validate(doc, anthropic.MessagesRequest), doc)).encode()

    def chat_in() -> object:
        chat_doc = parse_json(chat_raw)
        return validate_body(chat_doc, ChatRequest).council_request(chat_doc)  # type: ignore[attr-defined]

    def per_call(work: object) -> float:
        return min(timeit.repeat(work, number=repeat, repeat=3)) / repeat * 1e6  # type: ignore[arg-type]

    from council.policy.schema import Sampling

    reply = MemberReply(status="ok", text="", message={"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "lookup0", "arguments": '{"q": "x"}'}}]},
        prompt_tokens=900, completion_tokens=12, finish_reason="tool_calls")
    seats = [Seat(name=f"s{i}", order=i, model="m", weight=1.0, sampling=Sampling(), client=None)  # type: ignore[arg-type]
             for i in range(3)]
    answer = CouncilAnswer(id="chatcmpl-0", council="solo", strategy="majority",
                           decision=Decision(answer="lookup0", votes={"lookup0": 3.0}, agreement=1.0,
                                             winner_members=("s0", "s1", "s2"), tie_broken_by=None, text=None),
                           outcomes=[SeatOutcome(seat=s, reply=reply) for s in seats], early_stop=False,
                           tool_calls=reply.message["tool_calls"])  # type: ignore[index]
    # interleaved, the best of three each: a busy machine slows both alike
    rounds = [(per_call(chat_in), per_call(messages_in)) for _ in range(3)]
    chat_in_us, messages_in_us = min(c for c, _ in rounds), min(m for _, m in rounds)
    result = {"bytes": len(raw), "chat_in_us": chat_in_us, "messages_in_us": messages_in_us,
              "translate_us": per_call(translate),
              "chat_out_us": per_call(lambda: json.dumps(completion_body(answer, 0))),
              "messages_out_us": per_call(lambda: json.dumps(anthropic.message_body(answer))),
              "messages_stream_out_us": per_call(lambda: anthropic.stream_answer(answer))}
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch at import
    started = time.perf_counter()
    from litellm.llms.anthropic.messages.adapters.transformation import LiteLLMAnthropicMessagesAdapter

    result["litellm_import_s"] = time.perf_counter() - started
    import litellm

    litellm.suppress_debug_info = True  # else a "Provider List" banner per translated request
    adapter = LiteLLMAnthropicMessagesAdapter()
    result["litellm_in_us"] = per_call(lambda: adapter.translate_anthropic_to_openai(parse_json(raw)))  # type: ignore[arg-type]
    return result


def responses_translation_cost(repeat: int = 2000) -> dict[str, dict[str, float]]:
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
                   "tools": [{**chat_tool, "function": {**chat_tool["function"], "name": f"lookup{i}"}}
                             for i in range(4)], "temperature": 0.2, "max_tokens": 256},
                  {"model": "solo", "instructions": "be brief " * 50, "input": turns,
                   "tools": [{**tool, "name": f"lookup{i}"} for i in range(4)],
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


def print_responses_translation(cost: dict[str, dict[str, float]]) -> None:
    print(f"{'Responses beside chat':<34} {'chat us':>9} {'responses us':>13} {'added us':>9} {'ratio':>6}")
    for name, row in cost.items():
        print(f"{name:<34} {row['chat_us']:>9.1f} {row['responses_us']:>13.1f} {row['added_us']:>9.1f} "
              f"{row['responses_us'] / row['chat_us']:>5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--baseline", help="a git ref whose router runs beside this one in part 1 (before/after)")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM's proxy out")
    parser.add_argument("--no-scale-out", action="store_true", help="leave part 4 (two routers) out")
    parser.add_argument("--translation-only", action="store_true", help="parts 3, 5 and 6 alone (no member, no wrk)")
    args = parser.parse_args()
    if args.translation_only:
        report_translation(validation_cost(200), translation_cost(200))
        return
    server = find_llama_server()
    assert server is not None, "run `council setup` first"
    doc: dict[str, object] = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                              "load_before": os.getloadavg()[0]}
    if shutil.which("wrk") is None:
        print("skipped latency, throughput, LiteLLM and scale-out: no wrk (apt-get install wrk)")
    else:
        litellm: Path | None = None
        if args.no_litellm:
            print("skipped LiteLLM: --no-litellm")
        else:
            litellm, why = litellm_binary()
            if litellm is None:
                print(f"skipped LiteLLM: {why}")
            else:
                doc["litellm"] = LITELLM
        with tempfile.TemporaryDirectory() as tmp:
            env = {"COUNCIL_HOME": tmp, "LLAMA_SERVER": str(server.path)}
            for part in ("a", "b", "c"):
                (Path(tmp) / part).mkdir()
            routers = {"": {}}
            if args.baseline:
                tree = baseline_tree(args.baseline, Path(tmp) / "baseline")
                # PYTHONSAFEPATH: `python -m council` puts the working directory (this tree) ahead of PYTHONPATH
                routers[args.baseline] = {"PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}
            lat = doc["latency"] = latency(Path(tmp) / "a", args.seconds, args.rounds, env, routers, litellm)
            print_latency(lat, routers, args.baseline)  # type: ignore[arg-type]
            save(doc)
            thr = doc["throughput"] = throughput(Path(tmp) / "b", args.seconds, args.rounds, env, litellm)
            print_throughput(thr)  # type: ignore[arg-type]
            doc["versus_litellm"] = print_versus_litellm(lat, thr)  # type: ignore[arg-type]
            save(doc)
            if not args.no_scale_out:
                doc["scale_out"] = scale_out(Path(tmp) / "c", args.seconds, args.rounds, env)
                print_scale_out(doc["scale_out"])  # type: ignore[arg-type]
                save(doc)
        errors = {f"{part}/{name}": row["non_2xx"] for part in ("latency", "throughput", "scale_out")
                  for name, row in doc.get(part, {}).items() if isinstance(row, dict) and row.get("non_2xx")}  # type: ignore[union-attr]
        if errors:
            print(f"non-2xx responses (left in the figures): {errors}")
    valid = doc["validation"] = validation_cost()
    translated = doc["translation"] = translation_cost()
    print()
    report_translation(valid, translated)
    doc["load_after"] = os.getloadavg()[0]
    print(f"load average (1 min) {doc['load_before']:.1f} before, {doc['load_after']:.1f} after, on "
          f"{doc['cpus']} CPUs")
    save(doc)


def save(doc: dict[str, object]) -> None:
    """bench/results/overhead.json, rewritten after each part (a later part's failure keeps the earlier ones)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(doc, indent=2))


def report_translation(valid: dict[str, dict[str, float]], translated: dict[str, float]) -> None:
    for name, row in valid.items():
        print(f"validation, {name} ({row['bytes']} B): parse {row['parse_us']:.1f} us, parse + validate "
              f"{row['parse_and_validate_us']:.1f} us (validation {row['validate_us']:.1f} us, "
              f"{row['parse_and_validate_us'] / row['parse_us']:.1f}x the parse)")
    t = translated
    print(f"Anthropic Messages, agent turn ({t['bytes']:.0f} B, 20 turns, 4 tools), per request:")
    print(f"{'':<34} {'chat':>9} {'messages':>9} {'ratio':>6}")
    print(f"{'read, validate, translate (us)':<34} {t['chat_in_us']:>9.1f} {t['messages_in_us']:>9.1f} "
          f"{t['messages_in_us'] / t['chat_in_us']:>6.2f}")
    print(f"{'  of which Anthropic -> chat (us)':<34} {'':>9} {t['translate_us']:>9.1f}")
    print(f"{'write the answer (us)':<34} {t['chat_out_us']:>9.1f} {t['messages_out_us']:>9.1f} "
          f"{t['messages_out_us'] / t['chat_out_us']:>6.2f}   (events: {t['messages_stream_out_us']:.1f} us)")
    print(f"litellm's adapter, the same translation in: {t['litellm_in_us']:.1f} us "
          f"({t['litellm_in_us'] / t['translate_us']:.2f}x ours, which also validates), after "
          f"{t['litellm_import_s']:.1f} s of import")
    responses = responses_translation_cost()
    print_responses_translation(responses)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "translation.json").write_text(json.dumps({"validation": valid, "translation": translated,
                                                          "responses": responses,
                                                          "cpus": os.cpu_count(),
                                                          "python": sys.version.split()[0]}, indent=2))


if __name__ == "__main__":
    main()
