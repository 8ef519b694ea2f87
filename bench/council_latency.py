"""Council latency vs its members alone: a 3-member majority council whose two fastest members agree.

    python bench/council_latency.py [--rounds 15] [--scenario synthetic|real]

`synthetic` (default): three members of the tiny synthetic model, two asked for 8 and 16 tokens, one for
4000 (slow); the per-token work is tiny, so members barely compete for the 2 cores and the figure shows
what early stopping and the router cost. `real`: two SmolLM2-135M members and a Qwen2.5-Coder-1.5B asked
for a long answer; on 2 cores three llama-servers share the CPU, so members are slower together than
alone. Each round asks every member alone (directly, the same request the council sends) and then the
council, interleaved so drift hits all alike. Prints p50/p90 and council p50 / second-fastest member p50
(goal <= 1.05); writes bench/results/council_latency-SCENARIO.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from council.members.binary import find_llama_server
from council.members.process import LifeConfig
from council.plan.planner import plan_policy
from council.policy.loading import load_policy
from council.setup.catalog import by_name
from council.voting.assembly import assemble
from council.voting.engine import member_payload

RESULTS = Path(__file__).parent / "results"
QUESTION = {"messages": [{"role": "user", "content": "What is 6 times 7? Reply with just the number."}]}



def policy_text(scenario: str, workdir: Path) -> str:
    if scenario == "synthetic":
        from council.setup.synthetic import write_qwen35

        syn = write_qwen35(workdir / "syn.gguf")
        return f"""
gpus: [{{name: cpu, memory: 4GiB}}]
slots: {{size: 256MiB, reserve: 0}}
models:
  syn: {{path: {syn}, ctx_size: 512}}
  long: {{path: {syn}, ctx_size: 8192}}
councils:
  trio:
    members:
      - {{model: syn, sampling: {{max_tokens: 8}}}}
      - {{model: syn, sampling: {{max_tokens: 16}}}}
      - {{model: long, sampling: {{max_tokens: 4000}}}}
    vote: {{strategy: majority, extract: "regex:^(\\\\w)"}}
    timeout: 120s
"""
    smol, qwen = by_name("smollm2-135m"), by_name("qwen2.5-coder-1.5b")
    assert smol and qwen and smol.path.exists() and qwen.path.exists(), "run `council setup --models all` first"
    return f"""
gpus: [{{name: cpu, memory: 8GiB}}]
slots: {{size: 2GiB, reserve: 0}}
models:
  smol: {{path: {smol.path}, ctx_size: 1024}}
  qwen: {{path: {qwen.path}, ctx_size: 1024}}
councils:
  trio:
    members:
      - {{model: smol, sampling: {{temperature: 0, max_tokens: 8}}}}
      - {{model: smol, sampling: {{temperature: 0, max_tokens: 12}}}}
      - {{model: qwen, sampling: {{temperature: 0, max_tokens: 128, system: "Explain your reasoning in detail."}}}}
    vote: {{strategy: majority, extract: number}}
    timeout: 120s
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(rounds: int, scenario: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yaml"
        path.write_text(policy_text(scenario, Path(tmp)))
        plan = plan_policy(load_policy(path).policy)
        server = find_llama_server()
        assert server is not None
        runtime = assemble(plan, server, LifeConfig(run_dir=Path(tmp) / "run"))
        supervisor = runtime.supervisor
        await supervisor.start()
        try:
            assert await supervisor.wait_settled(120)
            engine = runtime.engines["trio"]
            times: dict[str, list[float]] = {m.name: [] for m in engine.seats} | {"fast pair": [], "council": []}
            agreed = early = 0
            for _ in range(rounds):
                for m in engine.seats:
                    start = time.monotonic()
                    reply = await m.client.complete(member_payload(QUESTION, m.sampling))
                    assert reply.status == "ok", reply.error
                    times[m.name].append(time.monotonic() - start)
                # The two fast members at once, no council: what sharing the CPU alone costs.
                fast = engine.seats[:2]
                start = time.monotonic()
                await asyncio.gather(*(m.client.complete(member_payload(QUESTION, m.sampling)) for m in fast))
                times["fast pair"].append(time.monotonic() - start)
                start = time.monotonic()
                answer = await engine.ask(QUESTION)
                times["council"].append(time.monotonic() - start)
                early += answer.early_stop
                agreed += answer.decision.winner_members[:2] == ("trio/0", "trio/1")
        finally:
            await supervisor.stop()
    p50 = {k: statistics.median(v) for k, v in times.items()}
    members = sorted((k for k in p50 if k not in ("council", "fast pair")), key=lambda k: p50[k])
    second = members[1]
    return {"scenario": scenario, "rounds": rounds, "p50_s": p50, "p90_s": {k: pct(v, 0.9) for k, v in times.items()},
            "second_fastest": second, "ratio_council_to_second": p50["council"] / p50[second],
            "ratio_council_to_fast_pair": p50["council"] / p50["fast pair"],
            "early_stops": early, "two_fastest_agreed": agreed, "goal_ratio": 1.05}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--scenario", choices=["synthetic", "real"], default="synthetic")
    args = parser.parse_args()
    doc = asyncio.run(run(args.rounds, args.scenario))
    print(f"{'who':<10} {'p50 (s)':>8} {'p90 (s)':>8}")
    for name, p50 in doc["p50_s"].items():  # type: ignore[attr-defined]
        print(f"{name:<10} {p50:>8.3f} {doc['p90_s'][name]:>8.3f}")  # type: ignore[index]
    print(f"council p50 / second-fastest ({doc['second_fastest']}) p50 = {doc['ratio_council_to_second']:.3f} "
          f"(goal <= 1.05); council p50 / fast pair at once p50 = {doc['ratio_council_to_fast_pair']:.3f}; "
          f"early stops {doc['early_stops']}/{doc['rounds']}, "
          f"two fastest agreed {doc['two_fastest_agreed']}/{doc['rounds']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"council_latency-{args.scenario}.json").write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
