"""Cold start: `council up` to all members ready, for councils of 1, 2 and 3 real models, side by side
with the slowest of those members started alone. Goal: ratio <= 1.2.

    python bench/coldstart.py [--repeats 3]

Prints a table and writes bench/results/coldstart.json. Each run is a real `council up` subprocess,
timed from spawn to its "N/N processes ready" line (process start, planning, load, warm-up), then SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from council.setup.catalog import by_name

MODELS = ["qwen2.5-coder-0.5b", "gemma3-270m", "smollm2-135m"]  # slowest first
RESULTS = Path(__file__).parent / "results"


def policy_text(models: list[str]) -> str:
    lines = ["gpus: [{name: cpu, memory: 16GiB}]", "slots: {size: 1GiB, reserve: 1GiB}", "models:"]
    for name in models:
        src = by_name(name)
        assert src is not None and src.path.exists(), f"{name}: run `council setup` first"
        lines.append(f"  {name}: {{path: {src.path}, ctx_size: 2048}}")
    members = ", ".join(f"{{model: {name}}}" for name in models)
    lines += ["councils:", f"  bench: {{members: [{members}]}}"]
    return "\n".join(lines) + "\n"


def time_up(models: list[str], workdir: Path) -> float:
    """Seconds from spawning `council up` to its all-ready line."""
    policy = workdir / f"{'+'.join(models)}.yaml"
    policy.write_text(policy_text(models))
    log = workdir / "up.log"
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "council", "up", str(policy)], stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    want = f"{len(models)}/{len(models)} processes ready"
    try:
        while want not in log.read_text():
            if proc.poll() is not None or time.monotonic() - start > 300:
                raise RuntimeError(f"council up did not get ready:\n{log.read_text()[-2000:]}")
            time.sleep(0.01)
        return time.monotonic() - start
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("COUNCIL_HOME", str(Path.home() / ".cache" / "council"))
        # Interleaved rounds, so drift on a shared machine hits every configuration alike.
        configs = [[m] for m in MODELS] + [MODELS[:n] for n in (2, 3)]
        times: dict[str, list[float]] = {"+".join(c): [] for c in configs}
        for _ in range(args.repeats):
            for config in configs:
                times["+".join(config)].append(time_up(config, work))
        alone = {m: statistics.median(times[m]) for m in MODELS}
        for n in (1, 2, 3):
            members = MODELS[:n]
            council_s = statistics.median(times["+".join(members)])
            slowest = max(members, key=lambda m: alone[m])
            rows.append({"members": n, "models": members, "council_s": round(council_s, 3),
                         "slowest_alone": slowest, "slowest_alone_s": round(alone[slowest], 3),
                         "ratio": round(council_s / alone[slowest], 3)})
    print(f"{'members':>7}  {'council up → ready':>18}  {'slowest alone':>24}  {'ratio':>6}")
    for r in rows:
        alone_text = f"{r['slowest_alone']} {r['slowest_alone_s']:.2f}"
        print(f"{r['members']:>7}  {r['council_s']:>17.2f}s  {alone_text:>23}s  {r['ratio']:>6.2f}")
    RESULTS.mkdir(exist_ok=True)
    doc = {"repeats": args.repeats, "cpus": os.cpu_count(), "alone_s": alone, "rows": rows, "goal_ratio": 1.2}
    (RESULTS / "coldstart.json").write_text(json.dumps(doc, indent=2))
    print(f"wrote {RESULTS / 'coldstart.json'}")


if __name__ == "__main__":
    main()
