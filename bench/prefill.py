"""Self-consistency at the price of one prefill: five samples of one model, grouped into one request (`n: 5`)
or sent as five requests, beside that model alone, on prompts of about 100, 1,000 and 4,000 tokens.

    python -m bench.prefill [--rounds 2] [--sizes 100,1000,4000] [--tokens 16]

SmolLM2-135M serves every configuration (one process each, started in turn, 2 threads, so they never share
the CPU); each round gets a fresh prompt (no prompt-cache hits between rounds). Per configuration and size:
wall time of a council answer, prompt tokens the server processed (its /metrics), completion tokens.
Goal: five grouped samples cost at most 1.5x the wall time of one member alone at 4,000 tokens.
Writes bench/results/prefill.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from council.members.binary import find_llama_server
from council.members.process import LifeConfig, MemberProcess
from council.plan.planner import plan_policy
from council.policy.schema import Policy
from council.setup.catalog import by_name
from council.voting.assembly import assemble

RESULTS = Path(__file__).parent / "results"
WORDS = ("river", "lantern", "copper", "meadow", "signal", "harbor", "quartz", "willow", "ember", "orbit")
CONFIGS = {"alone": (1, True), "grouped": (5, True), "ungrouped": (5, False)}


def prompt(tokens: int, seed: int) -> str:
    """About `tokens` tokens of numbered notes (a fresh text per seed), then a question about them."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < tokens:
        line = f"Note {len(lines) + 1}: the {rng.choice(WORDS)} is {rng.randint(10, 99)} and the {rng.choice(WORDS)} " \
               f"is {rng.randint(10, 99)}."
        lines.append(line)
        size += 19  # about 19 tokens a line for SmolLM2's tokenizer
    return "\n".join(lines) + "\n\nIn one short sentence: which word appears in the first note?"


def policy(samples: int, share: bool, ctx: int) -> Policy:
    smol = by_name("smollm2-135m")
    assert smol is not None
    return Policy.model_validate({
        "gpus": [{"name": "cpu", "memory": "8GiB"}], "slots": {"size": "2GiB", "reserve": 0},
        "models": {"smol": {"path": str(smol.path), "ctx_size": ctx, "threads": 2}},
        "councils": {"c": {"members": [{"model": "smol", "samples": samples,
                                        "sampling": {"temperature": 0.8, "seed": 1}}],
                           "vote": {"extract": "text"}, "share_prompt": share, "quorum": 1, "timeout": "10m"}}})


async def prompt_tokens(process: MemberProcess) -> float:
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"{process.spec.url}/metrics",
                                 headers={"Authorization": f"Bearer {process.spec.api_key}"})
    return sum(s.value for f in text_string_to_metric_families(reply.text) for s in f.samples
               if s.name == "llamacpp:prompt_tokens_total")


async def run_config(name: str, sizes: list[int], rounds: int, tokens: int, run_dir: Path) -> dict[str, object]:
    samples, share = CONFIGS[name]
    server = find_llama_server()
    assert server is not None, "run `council setup` first"
    plan = plan_policy(policy(samples, share, max(sizes) + 512))
    assembly = assemble(plan, server, LifeConfig(run_dir=run_dir, instance=f"prefill-{name}", stuck_after=3600))
    await assembly.supervisor.start()
    results: dict[str, object] = {}
    try:
        assert await assembly.supervisor.wait_settled(300)
        process = next(iter(assembly.supervisor.members.values()))
        engine = assembly.engines["c"]
        for size in sizes:
            walls, processed, completions = [], [], []
            for r in range(rounds):
                body = {"messages": [{"role": "user", "content": prompt(size, seed=1000 * size + r)}],
                        "max_tokens": tokens}
                before = await prompt_tokens(process)
                started = time.monotonic()
                answer = await engine.ask(body, early_stop=False)
                walls.append(time.monotonic() - started)
                processed.append(await prompt_tokens(process) - before)
                completions.append(answer.usage()["completion_tokens"])
                assert all(o.reply.status == "ok" for o in answer.outcomes), [o.reply.error for o in answer.outcomes]
            results[str(size)] = {"wall_s": statistics.median(walls), "walls_s": walls,
                                  "prompt_tokens_processed": statistics.median(processed),
                                  "completion_tokens": statistics.median(completions)}
            print(f"  {name:<10} {size:>5} tokens: {statistics.median(walls):6.2f} s, "
                  f"{statistics.median(processed):6.0f} prompt tokens processed", flush=True)
    finally:
        await assembly.supervisor.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", default="100,1000,4000")
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per answer")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    RESULTS.mkdir(exist_ok=True)
    doc: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in CONFIGS:
            doc[name] = asyncio.run(run_config(name, sizes, args.rounds, args.tokens, Path(tmp) / "run"))
            (RESULTS / "prefill.partial.json").write_text(json.dumps(doc, indent=2))  # a long run keeps its part
    print(f"\n{'prompt':>7} | {'alone s':>8} | {'grouped s':>9} {'x alone':>8} | {'ungrouped s':>11} {'x alone':>8} |"
          f" prompt tokens processed alone / grouped / ungrouped | completion tokens")
    for size in map(str, sizes):
        a, g, u = (doc[n][size] for n in CONFIGS)  # type: ignore[index]
        prompts = " / ".join(f"{c['prompt_tokens_processed']:.0f}" for c in (a, g, u))
        completions = " / ".join(f"{c['completion_tokens']:.0f}" for c in (a, g, u))
        print(f"{size:>7} | {a['wall_s']:>8.2f} | {g['wall_s']:>9.2f} {g['wall_s'] / a['wall_s']:>7.2f}x | "
              f"{u['wall_s']:>11.2f} {u['wall_s'] / a['wall_s']:>7.2f}x | {prompts} | {completions}")
    (RESULTS / "prefill.json").write_text(json.dumps({"configs": doc, "sizes": sizes, "rounds": args.rounds,
                                                      "tokens": args.tokens}, indent=2))


if __name__ == "__main__":
    main()
