"""Shared state: lease latency and router overhead with `state: redis` vs `state: memory`, side by side.

    python -m bench.redis_state [--leases 2000] [--seconds 5]     (needs wrk: apt-get install wrk)

Part 1: acquire+release and renew round trips on MemoryState and on RedisState (a redis-server of its
own on a free port; every call is one Lua script). Part 2: the same 1-member council behind
`council serve` with each state store, driven by wrk (one connection); with Redis every request also
spends the key's shared rate limit there and copies its ballot there. Writes bench/results/redis_state.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.overhead import pct, wrk_run
from council.cluster.memory_store import MemoryState
from council.cluster.redis_store import RedisState
from council.cluster.store import StateStore
from council.members.binary import find_llama_server
from council.setup.synthetic import write_qwen35
from tests.servers import start_council_serve, start_redis

RESULTS = Path(__file__).parent / "results"
KEY = "bench-key-0123456789"


async def lease_latency(store: StateStore, n: int) -> dict[str, float]:
    acquire: list[float] = []
    renew: list[float] = []
    for i in range(n):
        start = time.perf_counter()
        lease = await store.acquire(f"gpu{i % 4}", 8, "bench", 1, 30.0)
        acquire.append(time.perf_counter() - start)
        assert lease is not None
        start = time.perf_counter()
        lease = await store.renew(lease, 30.0)
        renew.append(time.perf_counter() - start)
        await store.release(lease)
    await store.close()
    us = 1e6
    return {"acquire_p50_us": statistics.median(acquire) * us, "acquire_p99_us": pct(acquire, 0.99) * us,
            "renew_p50_us": statistics.median(renew) * us, "renew_p99_us": pct(renew, 0.99) * us}


def router_latency(state: str, work: Path, seconds: int, binary: str) -> dict[str, float]:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    model = write_qwen35(work / "syn.gguf", mtp=False)
    text = f"""
state: {state}
server: {{api_keys: [{{name: bench, sha256: {digest}, rate_limit: 100000}}]}}
gpus: [{{name: cpu, memory: 2GiB}}]
slots: {{size: 256MiB, reserve: 0}}
models:
  syn: {{path: {model}, ctx_size: 512}}
councils:
  solo: {{members: [{{model: syn, sampling: {{max_tokens: 1}}}}]}}
"""
    headers = {"Authorization": f"Bearer {KEY}"}
    server = start_council_serve(text, work, {"COUNCIL_HOME": str(work), "LLAMA_SERVER": binary},
                                 ready_headers=headers)
    try:
        body = {"model": "solo", "messages": [{"role": "user", "content": "go"}], "max_tokens": 1}
        result = wrk_run(f"{server.url}/v1/chat/completions", body, seconds, work, connections=1, headers=headers)
        assert not result["non_2xx"], f"{result['non_2xx']:.0f} requests failed"
        return result
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leases", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    server = find_llama_server()
    assert server is not None, "run `council setup` first"
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc, url = start_redis(Path(tmp))
        try:
            leases = {"memory": asyncio.run(lease_latency(MemoryState(), args.leases)),
                      "redis": asyncio.run(lease_latency(RedisState(url, prefix="bench:"), args.leases))}
            routers = {}
            for name, state in (("memory", "memory"), ("redis", url)):
                (Path(tmp) / name).mkdir()
                routers[name] = router_latency(state, Path(tmp) / name, args.seconds, str(server.path))
        finally:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
    print(f"{'store':<8} {'acquire p50':>12} {'acquire p99':>12} {'renew p50':>10} {'renew p99':>10}   (µs)")
    for name, row in leases.items():
        print(f"{name:<8} {row['acquire_p50_us']:>12.1f} {row['acquire_p99_us']:>12.1f} {row['renew_p50_us']:>10.1f} "
              f"{row['renew_p99_us']:>10.1f}")
    print(f"{'router':<8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}   (1-member council, wrk -c1)")
    for name, row in routers.items():
        print(f"{name:<8} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} {row['rps']:>8.0f}")
    added = routers["redis"]["p50_ms"] - routers["memory"]["p50_ms"]
    print(f"redis adds {added:.3f} ms at p50 (ratio {routers['redis']['p50_ms'] / routers['memory']['p50_ms']:.2f})")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "redis_state.json").write_text(json.dumps({"leases": leases, "router": routers,
                                                          "redis_added_p50_ms": added}, indent=2))


if __name__ == "__main__":
    main()
