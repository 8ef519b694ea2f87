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
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

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


PATHS = (("passthrough", "syn"), ("council-1", "solo"), ("council-3", "trio"))


def profile(routers: dict[str, dict[str, str]], tmp: Path, seconds: int, rounds: int, rate: int, paths: list[str],
            keep: Path | None) -> dict[str, object]:
    """Every router (label -> extra environment) with its own stub members, all started first, then `rounds`
    interleaved rounds of every path of every router, py-spy sampling each run; samples add up over rounds."""
    stub = Path(__file__).with_name("stub_llama_server.py")
    servers = {}
    raws: dict[tuple[str, str], list[Path]] = collections.defaultdict(list)
    runs: dict[tuple[str, str], list[dict[str, float]]] = collections.defaultdict(list)
    try:
        for label, env in routers.items():
            work = tmp / (label or "this")
            work.mkdir(parents=True, exist_ok=True)
            model = write_qwen35(work / "stub.gguf", mtp=False)  # only planned with; the stub never reads it
            servers[label] = start_council_serve(policy(model, 3), work, {**env, "LLAMA_SERVER": str(stub)})
            member_endpoint(servers[label].url)
        for number in range(rounds):
            for label, server in servers.items():
                pid, url = server.proc.pid, f"{server.url}/v1/chat/completions"
                for path, model_name in PATHS:
                    if path not in paths:
                        continue
                    if number == 0:  # warm: connections, caches, first-call imports
                        wrk_run(url, {**BODY, "model": model_name}, 1, tmp)
                    raw = tmp / f"{label or 'this'}-{path}-{number}.txt"
                    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                                            str(pid), "--rate", str(rate), "--format", "raw", "--nonblocking",
                                            "-o", str(raw), "-d", str(seconds)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    before = cpu_seconds(pid)
                    result = wrk_run(url, {**BODY, "model": model_name}, seconds, tmp)
                    result["cpu_us_per_request"] = (cpu_seconds(pid) - before) / result["requests"] * 1e6
                    spy.wait(timeout=seconds + 30)
                    runs[label, path].append(result)
                    raws[label, path].append(raw)
    finally:
        for server in servers.values():
            server.stop()
    doc: dict[str, object] = {}
    for (label, path), results in runs.items():
        samples = [s for raw in raws[label, path] if raw.exists() for s in read_raw(raw)]
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for raw in raws[label, path]:
                if raw.exists():
                    shutil.copy(raw, keep / raw.name)
        shares, heaviest, seen = summarise(samples)
        cpu_us = statistics.median(r["cpu_us_per_request"] for r in results)
        doc.setdefault(label or "this", {})[path] = {  # type: ignore[index]
            "rps": statistics.median(r["rps"] for r in results),
            "rps_spread": max(r["rps"] for r in results) - min(r["rps"] for r in results),
            "cpu_us_per_request": cpu_us,
            "cpu_us_spread": max(r["cpu_us_per_request"] for r in results) - min(r["cpu_us_per_request"]
                                                                                 for r in results),
            "loop_and_parser": sorted(seen),
            "components": {k: {"share": round(v, 4), "cpu_us": round(v * cpu_us, 1)} for k, v in shares.items()},
            "heaviest": [(f, round(v, 4)) for f, v in heaviest]}
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--baseline", help="a git ref whose router is profiled too")
    parser.add_argument("--paths", default="passthrough,council-1,council-3", help="which paths, comma-separated")
    parser.add_argument("--keep", type=Path, help="a folder to keep py-spy's raw stacks in")
    args = parser.parse_args()
    if shutil.which("wrk") is None or not Path(sys.executable).with_name("py-spy").exists():
        raise SystemExit("needs wrk (apt-get install wrk) and py-spy (pip install py-spy)")
    doc: dict[str, object] = {"cpus": os.cpu_count(), "load_before": os.getloadavg(), "seconds": args.seconds,
                              "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        routers: dict[str, dict[str, str]] = {"": {"COUNCIL_HOME": tmp}}
        if args.baseline:
            routers[args.baseline] = {"COUNCIL_HOME": tmp, "PYTHONPATH": str(baseline_tree(args.baseline,
                                                                                         Path(tmp) / "baseline"))}
        doc.update(profile(routers, Path(tmp), args.seconds, args.rounds, args.rate, args.paths.split(","),
                           args.keep))
    doc["load_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hotpath.json").write_text(json.dumps(doc, indent=2))
    for label in routers:
        run = doc.get(label or "this", {})
        assert isinstance(run, dict)
        for path, row in run.items():
            print(f"\n{label or 'this tree'} {path}: {row['rps']:.0f} req/s (spread {row['rps_spread']:.0f}), "
                  f"router CPU {row['cpu_us_per_request']:.0f} us/request (spread {row['cpu_us_spread']:.0f}; "
                  f"{', '.join(row['loop_and_parser'])})")
            for name, part in row["components"].items():
                print(f"  {name:<42} {part['share'] * 100:5.1f}%  {part['cpu_us']:7.1f} us")
            (RESULTS / f"hotpath-{path}{'-' + label if label else ''}.txt").write_text(
                "".join(f"{share * 100:5.1f}%  {fn}\n" for fn, share in row["heaviest"]))
    if args.baseline:
        for path, row in doc["this"].items():  # type: ignore[union-attr]
            then = doc[args.baseline][path]  # type: ignore[index]
            print(f"{path}: {row['rps'] / then['rps']:.2f}x the requests/s of {args.baseline}, "
                  f"{row['cpu_us_per_request'] / then['cpu_us_per_request']:.2f}x its router CPU per request")


if __name__ == "__main__":
    main()
