"""Where the router's CPU goes per request: py-spy samples `council serve` while wrk drives it against the stub.

    python -m bench.hotpath [--seconds 8] [--baseline GITREF]     (needs wrk, and py-spy in the venv)

For each path (passthrough, a 1-member and a 3-member council, as in bench/overhead.py part 2: the stub upstream
answers instantly, so the router is what is measured) wrk runs with 32 connections while `py-spy record`
samples the router process (its idle time, waiting in epoll, is not sampled). Each sample is given to the
component of the innermost frame that names one (a `json.dumps` called by a route is JSON; a pydantic call is
validation), so the table says which part of the path costs what share of the router's busy CPU, and how many
microseconds of CPU per request that is (from /proc). With `--baseline GITREF` that commit's router is profiled
too, in the same run. Writes bench/results/hotpath.json and, per path, the 25 heaviest functions
(bench/results/hotpath-<path>.txt).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.overhead import BODY, RESULTS, baseline_tree, cpu_seconds, member_endpoint, policy, wrk_run
from council.setup.synthetic import write_qwen35
from tests.servers import start_council_serve

# (component, pattern on a frame's file), checked in order for each frame from the innermost outwards.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("JSON encode/decode", r"/json/|orjson"),
    ("pydantic validation", r"/pydantic(_core)?/|council/server/requests\.py"),
    ("Prometheus metrics", r"/prometheus_client/|council/server/metrics\.py"),
    ("auth", r"council/server/(auth|deps)\.py"),
    ("limits admission", r"council/server/limits\.py"),
    ("event bus", r"council/server/events\.py"),
    ("draft controller", r"council/voting/draft_control\.py"),
    ("ballots", r"council/voting/ballots\.py"),
    ("engine: confidence", r"council/voting/confidence\.py"),
    ("engine: arrivals, lanes, vote", r"council/voting/(engine|vote|lanes|extract|request|tools)\.py"),
    ("member client (council side)", r"council/voting/client\.py|council/members/process\.py"),
    ("member client (aiohttp)", r"/aiohttp/|/yarl/|/multidict/|/httpx/|/httpcore/"),
    ("routes (chat, passthrough, answered)", r"council/server/(routes/|router|errors|app)"),
    ("FastAPI routing + dependencies", r"/fastapi/"),
    ("Starlette routing, middleware, responses", r"/starlette/"),
    ("uvicorn HTTP (httptools)", r"/uvicorn/"),
    ("event loop (asyncio tasks, uvloop)", r"/asyncio/|uvloop"),
)
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):\d+\)$")


def component(stack: list[str]) -> str:
    """The component of a sample: innermost frame first."""
    for frame in reversed(stack):
        match = FRAME.match(frame)
        where = "/" + (match.group("file") if match else frame)  # py-spy shortens paths to `package/module.py`
        for name, pattern in COMPONENTS:
            if re.search(pattern, where):
                return name
    return "other"


def read_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's `--format raw` (collapsed stacks: `frame;frame;... count`), the thread frame dropped."""
    samples = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue  # a frame name py-spy wrote across lines
        frames = stack.split(";")
        samples.append((frames[1:] if frames and frames[0].startswith(("thread", "process")) else frames,
                        int(count)))
    return samples


def summarise(samples: list[tuple[list[str], int]]) -> tuple[dict[str, float], list[tuple[str, float]], set[str]]:
    """Share of samples per component, the heaviest functions by own samples, and which loop and parser ran."""
    total = sum(count for _, count in samples) or 1
    shares: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    seen: set[str] = set()
    for stack, count in samples:
        shares[component(stack)] += count
        if stack:
            own[stack[-1]] += count
        joined = ";".join(stack)
        seen |= {name for name, mark in (("httptools", "httptools_impl"), ("h11", "h11_impl"),
                                         ("uvloop", "uvloop"), ("asyncio", "asyncio/base_events"))
                 if mark in joined}
    return ({k: v / total for k, v in shares.most_common()},
            [(k, v / total) for k, v in own.most_common(25)], seen)


PATHS = (("direct", "syn"), ("passthrough", "syn"), ("council-1", "solo"), ("council-3", "trio"))


def profile(routers: dict[str, dict[str, str]], tmp: Path, seconds: int, rounds: int, rate: int, paths: list[str],
            keep: Path | None, connections: int = 32) -> dict[str, object]:
    """Every router (label -> extra environment) with its own stub members, all started first, then `rounds`
    interleaved rounds of every path of every router, py-spy sampling each run; samples add up over rounds."""
    stub = Path(__file__).with_name("stub_llama_server.py")
    servers = {}
    members: dict[str, str] = {}  # label -> the URL of its 1-member council's stub (the `direct` path)
    raws: dict[tuple[str, str], list[Path]] = collections.defaultdict(list)
    runs: dict[tuple[str, str], list[dict[str, float]]] = collections.defaultdict(list)
    try:
        for label, env in routers.items():
            work = tmp / (label or "this")
            work.mkdir(parents=True, exist_ok=True)
            model = write_qwen35(work / "stub.gguf", mtp=False)  # only planned with; the stub never reads it
            servers[label] = start_council_serve(policy(model, 3), work, {**env, "LLAMA_SERVER": str(stub)})
            members[label] = member_endpoint(servers[label].url)[0]
        for number in range(rounds):  # each path of every router back to back: neighbours share the load
            for path, model_name in PATHS:
                if path not in paths:
                    continue
                for label, server in servers.items():
                    base = members[label] if path == "direct" else server.url
                    pid, url = server.proc.pid, f"{base}/v1/chat/completions"
                    if number == 0:  # warm: connections, caches, first-call imports
                        wrk_run(url, {**BODY, "model": model_name}, 1, tmp)
                    raw = tmp / f"{label or 'this'}-{path}-{number}.txt"
                    spy = None if not rate else subprocess.Popen(
                        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--rate",
                         str(rate), "--format", "raw", "--nonblocking", "-o", str(raw), "-d", str(seconds)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    before = cpu_seconds(pid)
                    result = wrk_run(url, {**BODY, "model": model_name}, seconds, tmp, connections)
                    result["cpu_us_per_request"] = (cpu_seconds(pid) - before) / result["requests"] * 1e6
                    if spy is not None:
                        spy.wait(timeout=seconds + 30)
                    runs[label, path].append(result)
                    raws[label, path].append(raw)
    finally:
        for server in servers.values():
            server.stop()
    doc: dict[str, object] = {"runs": {f"{label or 'this'} {path}": results for (label, path), results in runs.items()}}
    for (label, path), results in runs.items():
        samples = [s for raw in raws[label, path] if raw.exists() for s in read_raw(raw)]
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for raw in raws[label, path]:
                if raw.exists():
                    shutil.copy(raw, keep / raw.name)
        shares, heaviest, seen = summarise(samples)
        cpu_us = statistics.median(r["cpu_us_per_request"] for r in results)
        cpu_min = min(r["cpu_us_per_request"] for r in results)  # interference only ever adds
        doc.setdefault(label or "this", {})[path] = {  # type: ignore[index]
            "rps": statistics.median(r["rps"] for r in results),
            "rps_spread": max(r["rps"] for r in results) - min(r["rps"] for r in results),
            "cpu_us_per_request": cpu_us,
            "cpu_us_min": cpu_min,
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p50_spread_ms": max(r["p50_ms"] for r in results) - min(r["p50_ms"] for r in results),
            "cpu_us_spread": max(r["cpu_us_per_request"] for r in results) - min(r["cpu_us_per_request"]
                                                                                 for r in results),
            "loop_and_parser": sorted(seen),
            "components": {k: {"share": round(v, 4), "cpu_us": round(v * cpu_us, 1)} for k, v in shares.items()},
            "heaviest": [(f, round(v, 4)) for f, v in heaviest]}
    return doc


def _per_call(fn: Callable[[], object], number: int = 2000) -> float:
    """Microseconds per call: the least of 7 repeats (interference only ever adds)."""
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def _per_await(make: Callable[[], Awaitable[object]], number: int = 2000) -> float:
    """Microseconds per awaited call on uvloop (the loop `council serve` runs), the least of 7 repeats."""
    import uvloop

    async def rounds() -> float:
        best = float("inf")
        for _ in range(7):
            started = time.perf_counter()
            for _ in range(number):
                await make()
            best = min(best, time.perf_counter() - started)
        return best / number * 1e6

    return uvloop.run(rounds())


def _asgi(plain: bool) -> Callable[[], Awaitable[object]]:
    """One POST through a FastAPI app with council's middleware shape: as a FastAPI route with two dependencies
    (the router, the caller: what the chat routes had) or as a plain Starlette route that looks both up itself."""
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.responses import Response

    from council.server.app import _TELEMETRY, _Arrival

    app = FastAPI(**_TELEMETRY)  # type: ignore[arg-type]
    app.state.router = object()

    async def current(request: Request) -> object:
        return request.app.state.router

    async def caller(request: Request) -> str | None:
        return request.headers.get("authorization")

    async def endpoint(request: Request, router: object = Depends(current), who: object = Depends(caller)) -> Response:
        return Response(await request.body(), media_type="application/json")

    async def plain_endpoint(request: Request) -> Response:
        current, who = request.app.state.router, request.headers.get("authorization")  # noqa: F841
        return Response(await request.body(), media_type="application/json")

    routes = APIRouter()
    routes.post("/v1/chat/completions", response_model=None)(endpoint)
    for n in range(10):  # the other routes a request is matched past
        routes.get(f"/other/{n}")(lambda: {})
    if plain:
        app.router.add_route("/v1/chat/completions", plain_endpoint, methods=["POST"], include_in_schema=False)
    app.include_router(routes)
    app.add_middleware(_Arrival)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "headers": [(b"host", b"council"), (b"content-type", b"application/json"),
                                          (b"authorization", b"Bearer k")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    body = json.dumps({**BODY, "model": "solo"}).encode()

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: object) -> None:
        pass

    return lambda: app(dict(scope), receive, send)


def steps() -> dict[str, float]:
    """What each step of a request costs on its own, in process (microseconds; the old way beside the new where a
    change replaced it). The HTTP server, the sockets and the member's own time are not in these."""
    import asyncio

    import orjson
    from fastapi import FastAPI

    from council.members.process import Slots
    from council.policy.schema import ApiKey
    from council.server.auth import KeyRing
    from council.server.events import EventBus
    from council.server.limits import Limits
    from council.server.metrics import RouterMetrics
    from council.server.requests import ChatRequest, parse_json, validate_body
    from council.voting.ballots import BallotStore
    from council.voting.client import NoLimit
    from council.voting.extract import extract
    from council.voting.lanes import group_calls, lanes
    from council.voting.tools import _check_schema
    from council.voting.vote import Ballot, decide

    raw = json.dumps({**BODY, "model": "trio"}).encode()
    reply = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is 42."},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 8, "completion_tokens": 6}}).encode()
    body = parse_json(raw)
    keys = KeyRing([ApiKey(name="app", sha256=hashlib.sha256(b"k").hexdigest())])
    metrics = RouterMetrics()
    limits = Limits(metrics, None, False, 4096)  # type: ignore[arg-type]
    who = keys.principal("Bearer k", "chat")
    bus = EventBus()
    ballots = BallotStore()
    votes = [Ballot(member=f"trio/{i}", order=i, answer="the answer is 42.", text="The answer is 42.")
             for i in range(3)]
    out: dict[str, float] = {}
    out["HTTP: FastAPI route with 2 dependencies (before)"] = _per_await(_asgi(False))
    out["HTTP: plain Starlette route in the same app (now)"] = _per_await(_asgi(True))
    telemetry = FastAPI()._native_telemetry  # type: ignore[attr-defined]
    out["FastAPI telemetry check per request (before; now off)"] = _per_call(telemetry.enabled)
    out["JSON: parse the body, json (before)"] = _per_call(lambda: json.loads(raw))
    out["JSON: parse the body, orjson (now)"] = _per_call(lambda: orjson.loads(raw))
    out["validate the body (pydantic, strict)"] = _per_call(lambda: validate_body(body, ChatRequest))
    out["auth: resolve a bearer key (SHA-256, constant-time compare)"] = _per_call(
        lambda: keys.principal("Bearer k", "chat"))
    out["limits: admit and release"] = _per_await(lambda: _admit(limits, who))
    out["JSON: a member's payload, json (before)"] = _per_call(lambda: json.dumps(body).encode())
    out["JSON: a member's payload, orjson (now)"] = _per_call(lambda: orjson.dumps(body))
    out["JSON: a member's reply, json (before)"] = _per_call(lambda: json.loads(reply))
    out["JSON: a member's reply, orjson (now)"] = _per_call(lambda: orjson.loads(reply))
    out["slots: hold and release, free (now)"] = _per_await(lambda: _hold(Slots(4)))
    out["a call's holds: rate, slots, accounting, generators (before)"] = _per_await(_holds_before)
    process = _process()
    out["a call's holds: rate, slots, accounting, classes (now)"] = _per_await(
        lambda: _holds(NoLimit(), process))
    one, three = _engines()
    ask = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 1}
    out["engine: ask a 1-seat council, instant scripted member"] = _per_await(lambda: one.ask(ask))
    out["engine: ask a 3-seat council, instant scripted members"] = _per_await(lambda: three.ask(ask))
    agent = _agent_body()
    tools_body = {"model": "trio", "messages": [{"role": "user", "content": "x"}], "tools": agent["tools"]}
    schemas = [t["function"]["parameters"] for t in agent["tools"]]  # type: ignore[attr-defined, index]
    out["validate a body with 4 tools, jsonschema's check of each (before)"] = _per_call(
        lambda: [_check_schema(p) for p in schemas], 20) + _per_call(lambda: validate_body(tools_body, ChatRequest))
    out["validate a body with 4 tools, each schema's verdict kept (now)"] = _per_call(
        lambda: validate_body(tools_body, ChatRequest))
    seats = [(_Seat(f"trio/{i}"), dict(agent)) for i in range(3)]
    out["lanes: 3 seats, 3 processes, an agent's body: 6 sorted json dumps (before)"] = _per_call(
        lambda: [json.dumps(agent, sort_keys=True, default=str) for _ in range(6)], 200)
    out["lanes: the same, no two calls on one process: nothing to compare (now)"] = _per_call(
        lambda: lanes(group_calls(seats, True), "auto", {}))
    out["extract one reply (vote.extract: text)"] = _per_call(lambda: extract("The answer is 42.", "text"))
    out["vote: decide 3 ballots (majority)"] = _per_call(lambda: decide(votes, "majority"))
    out["event bus: publish a ballot, nobody listening"] = _per_call(lambda: bus.publish("ballot", {"id": "x"}))
    out["ballots: keep one"] = _per_call(lambda: ballots.put(os.urandom(4).hex(), {}))
    out["metrics: count a request, labels() (before)"] = _per_call(
        lambda: (metrics.requests.labels("chat", "trio", "200").inc(), metrics.latency.labels("chat", "trio").observe(
            0.01), metrics.overhead.labels("chat").observe(0.001)))
    out["metrics: count a request, cached children (now)"] = _per_call(
        lambda: metrics.observe("chat", "trio", 200, 0.01, 0.001))
    out["slots: 32 requests on 4 slots, per request, condition (before)"] = _per_await(
        lambda: _crowd(_ConditionSlots(4)), 100) / 32
    out["slots: 32 requests on 4 slots, per request, in order (now)"] = _per_await(lambda: _crowd(Slots(4)), 100) / 32
    del asyncio
    return out


def _engines() -> tuple[Any, Any]:
    """A 1- and a 3-seat council whose members answer at once (tests/voting/fakes.py: one turn of the loop each)."""
    from tests.voting.fakes import Say, council

    said = Say("The answer is 42.")
    return council({"vote": {"extract": "text"}}, said)[0], council({"vote": {"extract": "text"}}, said, said, said)[0]


def _process() -> object:
    """A member process as a call sees it (its slots and accounting), never started."""
    from council.members.pidfiles import PidFiles
    from council.members.process import LifeConfig, MemberProcess, ProcessRecipe

    recipe = ProcessRecipe(name="p", make_spec=lambda _: None, seats=("s",), slots=4)  # type: ignore[arg-type, return-value]
    where = Path(tempfile.gettempdir())
    return MemberProcess(recipe, LifeConfig(run_dir=where), pids=PidFiles(where), control=None)  # type: ignore[arg-type]


async def _holds(limiter: object, process: object) -> None:
    async with (limiter.slot(1), process.slots.hold(1), process.request() as outcome):  # type: ignore[attr-defined]
        outcome.succeeded()


async def _holds_before() -> None:
    """The same three holds as generator-based context managers (as they were)."""
    async with (_gen_hold(), _gen_hold(), _gen_hold()):
        pass


@contextlib.asynccontextmanager
async def _gen_hold() -> AsyncIterator[None]:
    try:
        yield
    finally:
        pass


async def _admit(limits: object, who: object) -> None:
    async with await limits.admit(who, "trio"):  # type: ignore[attr-defined]
        pass


async def _hold(slots: object) -> None:
    async with slots.hold():  # type: ignore[attr-defined]
        pass


class _Seat:
    """What the lanes read of a seat: its client's target process."""

    def __init__(self, target: str) -> None:
        self.client = type("Client", (), {"target": target})()


def _agent_body() -> dict[str, object]:
    """An agent's request: a system prompt, 20 turns, 4 tools (as bench/overhead.py's validation part)."""
    tool = {"type": "function", "function": {"name": "lookup", "description": "find a thing",
                                             "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 20} for i in range(20)]
    tools = [{**tool, "function": {**tool["function"], "name": f"lookup{i}"}} for i in range(4)]  # names differ
    return {"messages": [{"role": "system", "content": "be brief " * 50}, *turns], "tools": tools,
            "temperature": 0.2, "max_tokens": 256}


class _ConditionSlots:
    """The slots as they were (one condition, `notify_all` on every release), for the comparison."""

    def __init__(self, size: int) -> None:
        import asyncio

        self.free = size
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self.free >= 1)
            self.free -= 1
        try:
            yield
        finally:
            async with self._changed:
                self.free += 1
                self._changed.notify_all()


async def _crowd(slots: object) -> None:
    """32 requests at once on `slots`, each holding its slot for one turn of the loop."""
    import asyncio

    async def one() -> None:
        async with slots.hold():  # type: ignore[attr-defined]
            await asyncio.sleep(0)

    await asyncio.gather(*(one() for _ in range(32)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second (0: no profile)")
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections")
    parser.add_argument("--baseline", help="a git ref whose router is profiled too")
    parser.add_argument("--paths", default="direct,passthrough,council-1,council-3",
                        help="which paths, comma-separated (direct: wrk to a stub member itself, for the added p50)")
    parser.add_argument("--keep", type=Path, help="a folder to keep py-spy's raw stacks in")
    parser.add_argument("--steps", action="store_true", help="only the in-process cost of each step")
    args = parser.parse_args()
    if args.steps:
        costs = steps()
        for name, us in costs.items():
            print(f"{name:<66} {us:8.2f} us")
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "hotpath-steps.json").write_text(json.dumps(costs, indent=2))
        return
    if shutil.which("wrk") is None or not Path(sys.executable).with_name("py-spy").exists():
        raise SystemExit("needs wrk (apt-get install wrk) and py-spy (pip install py-spy)")
    doc: dict[str, object] = {"cpus": os.cpu_count(), "load_before": os.getloadavg(), "seconds": args.seconds,
                              "rounds": args.rounds, "connections": args.connections}
    with tempfile.TemporaryDirectory() as tmp:
        routers: dict[str, dict[str, str]] = {"": {"COUNCIL_HOME": tmp}}
        if args.baseline:
            # PYTHONSAFEPATH: `python -m council` puts the working directory (this tree) ahead of PYTHONPATH
            routers[args.baseline] = {"COUNCIL_HOME": tmp, "PYTHONSAFEPATH": "1",
                                      "PYTHONPATH": str(baseline_tree(args.baseline, Path(tmp) / "baseline"))}
        doc.update(profile(routers, Path(tmp), args.seconds, args.rounds, args.rate, args.paths.split(","),
                           args.keep, args.connections))
    doc["load_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    for label in routers:
        run = doc.get(label or "this", {})
        assert isinstance(run, dict)
        for path, row in run.items():
            print(f"\n{label or 'this tree'} {path}: {row['rps']:.0f} req/s (spread {row['rps_spread']:.0f}), "
                  f"router CPU {row['cpu_us_per_request']:.0f} us/request (spread {row['cpu_us_spread']:.0f}; "
                  f"{', '.join(row['loop_and_parser'])})")
            if "direct" in run and path != "direct":
                row["added_p50_ms"] = row["p50_ms"] - run["direct"]["p50_ms"]
                print(f"  p50 {row['p50_ms']:.3f} ms (spread {row['p50_spread_ms']:.3f}), "
                      f"{row['added_p50_ms']:.3f} ms over the stub's own")
            for name, part in row["components"].items():
                print(f"  {name:<42} {part['share'] * 100:5.1f}%  {part['cpu_us']:7.1f} us")
            (RESULTS / f"hotpath-{path}{'-' + label if label else ''}.txt").write_text(
                "".join(f"{share * 100:5.1f}%  {fn}\n" for fn, share in row["heaviest"]))
    if args.baseline:
        for path, row in doc["this"].items():  # type: ignore[union-attr]
            if path == "direct":
                continue
            then = doc[args.baseline][path]  # type: ignore[index]
            pairs = zip(doc["runs"][f"this {path}"], doc["runs"][f"{args.baseline} {path}"], strict=True)  # type: ignore[index]
            ratios = sorted(a["cpu_us_per_request"] / b["cpu_us_per_request"] for a, b in pairs)
            row["cpu_ratio_rounds"] = ratios
            print(f"{path}: {row['rps'] / then['rps']:.2f}x the requests/s of {args.baseline}, "
                  f"{row['cpu_us_per_request'] / then['cpu_us_per_request']:.2f}x its router CPU per request "
                  f"(medians; the least of the rounds: {row['cpu_us_min']:.0f} vs {then['cpu_us_min']:.0f} us, "
                  f"{row['cpu_us_min'] / then['cpu_us_min']:.2f}x; round by round {statistics.median(ratios):.2f}x, "
                  f"{ratios[0]:.2f}-{ratios[-1]:.2f})"
                  + (f"; added p50 {row['added_p50_ms']:.3f} vs {then['added_p50_ms']:.3f} ms"
                     if "added_p50_ms" in row else ""))
    (RESULTS / "hotpath.json").write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
