"""Self-consistency at the price of one prefill: five samples of one model, grouped into one request (`n: 5`)
or sent as five requests, beside that model alone, on prompts of about 100, 1,000 and 4,000 tokens; and the
grouped request streamed with early stop on (the vote on the word decides before the slowest choice ends); and
five members of one process that differ in temperature (so they cannot share `n`), asked at once or chained
(`prompt_reuse: chain`: one after another, each reusing the prompt the last one left in the server's cache).

    python -m bench.prefill [--rounds 2] [--sizes 100,1000,4000] [--tokens 16]

SmolLM2-135M serves every configuration (one process each, 2 threads; only one is asked at a time, in turn
for each round and size, so all see the same machine); each round gets a fresh prompt (no
prompt-cache hits between rounds). Per configuration and size:
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
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from council.members.binary import find_llama_server
from council.members.process import LifeConfig, MemberProcess
from council.plan.planner import plan_policy
from council.policy.schema import Policy
from council.setup.catalog import by_name
from council.voting.assembly import assemble
from council.voting.engine import QuorumError
from council.voting.request import CouncilRequest

RESULTS = Path(__file__).parent / "results"
WORDS = ("river", "lantern", "copper", "meadow", "signal", "harbor", "quartz", "willow", "ember", "orbit")
SAMPLES = [{"samples": 5, "sampling": {"temperature": 0.8, "seed": 1}}]
MIXED = [{"sampling": {"temperature": t, "seed": 1}} for t in (0.2, 0.4, 0.6, 0.8, 1.0)]  # no `n`: no two alike


@dataclass(frozen=True)
class Config:
    members: list[dict[str, object]]
    council: dict[str, object]  # council settings beside the members
    early_stop: bool = False


# `grouped` waits for every choice (as evaluation does); `grouped_stop` streams the group and stops once the
# vote on the word is decided. `mixed_*`: five members of one process differing in temperature (no `n`),
# asked at once (each reads the prompt), chained (each reuses the prompt the last one left in the cache), or
# as `prompt_reuse: auto` decides.
CONFIGS = {
    "alone": Config([{"sampling": {"temperature": 0.8, "seed": 1}}], {}),
    "grouped": Config(SAMPLES, {}),
    "grouped_stop": Config(SAMPLES, {}, early_stop=True),
    "ungrouped": Config(SAMPLES, {"share_prompt": False, "prompt_reuse": "parallel"}),
    "mixed_parallel": Config(MIXED, {"prompt_reuse": "parallel"}),
    "mixed_chain": Config(MIXED, {"prompt_reuse": "chain"}),
    "mixed_auto": Config(MIXED, {}),  # the default: chains once the process measured that its prefill dominates
}
EXTRACT = f"regex:({'|'.join(WORDS)})"


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


def policy(ctx: int) -> Policy:
    """One process per configuration (each SmolLM2, 2 threads); only one is asked at a time."""
    smol = by_name("smollm2-135m")
    assert smol is not None
    councils = {name: {"members": [{"model": name, **m} for m in c.members], "vote": {"extract": EXTRACT},
                       "quorum": 1, "timeout": "10m", **c.council} for name, c in CONFIGS.items()}
    return Policy.model_validate({
        "gpus": [{"name": "cpu", "memory": "16GiB"}], "slots": {"size": "2GiB", "reserve": 0},
        "models": {name: {"path": str(smol.path), "ctx_size": ctx, "threads": 2, "share": True} for name in CONFIGS},
        "councils": councils})


async def prompt_tokens(process: MemberProcess) -> float:
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"{process.spec.url}/metrics",
                                 headers={"Authorization": f"Bearer {process.spec.api_key}"})
    return sum(s.value for f in text_string_to_metric_families(reply.text) for s in f.samples
               if s.name == "llamacpp:prompt_tokens_total")


async def run(sizes: list[int], rounds: int, tokens: int, run_dir: Path) -> dict[str, dict[str, object]]:
    """Every configuration side by side: for each round and size, each configuration in turn."""
    server = find_llama_server()
    assert server is not None, "run `council setup` first"
    assembly = assemble(plan_policy(policy(max(sizes) + 512)), server,
                        LifeConfig(run_dir=run_dir, instance="prefill", stuck_after=3600))
    await assembly.supervisor.start()
    seen: dict[str, dict[int, list[tuple[float, float, int, bool]]]] = {n: {s: [] for s in sizes} for n in CONFIGS}
    try:
        assert await assembly.supervisor.wait_settled(300)
        for r in range(rounds):
            for size in sizes:
                text = prompt(size, seed=1000 * size + r)
                for name in CONFIGS:
                    # The same question for each configuration, but a fresh one per round: within a round the
                    # configurations have their own processes, so no prompt cache is shared between them.
                    process = next(p for p in assembly.supervisor.processes.values() if p.spec.model == name)
                    before = await prompt_tokens(process)
                    started = time.monotonic()
                    try:
                        answer = await assembly.engines[name].ask(CouncilRequest.of(
                            {"messages": [{"role": "user", "content": text}], "max_tokens": tokens},
                            early_stop=CONFIGS[name].early_stop))
                        outcomes, early = answer.outcomes, answer.early_stop
                    except QuorumError as exc:  # no reply named a word: the cost was paid all the same
                        outcomes, early = exc.outcomes, False
                    wall = time.monotonic() - started
                    failed = [o.reply.error for o in outcomes if o.reply.status not in ("ok", "cancelled")]
                    assert not failed, failed
                    processed = await prompt_tokens(process) - before
                    completion = sum(o.reply.completion_tokens for o in outcomes)
                    seen[name][size].append((wall, processed, completion, early))
                    print(f"  round {r + 1} {name:<14} {size:>5} tokens: {wall:6.2f} s, {processed:6.0f} prompt "
                          f"tokens processed{', stopped early' if early else ''}", flush=True)
    finally:
        await assembly.supervisor.stop()
    return {name: {str(size): {"wall_s": statistics.median(w for w, *_ in runs), "walls_s": [w for w, *_ in runs],
                               "prompt_tokens_processed": statistics.median(p for _, p, *_ in runs),
                               "completion_tokens": statistics.median(c for _, _, c, _ in runs),
                               "stopped_early": sum(e for *_, e in runs)}
                   for size, runs in by_size.items()} for name, by_size in seen.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", default="100,1000,4000")
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per answer")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        doc = asyncio.run(run(sizes, args.rounds, args.tokens, Path(tmp) / "run"))
    names = list(CONFIGS)
    print(f"\n{'prompt':>7} | " + " | ".join(f"{n + ' s':>15} {'x alone':>7}" for n in names)
          + " | prompt tokens processed " + " / ".join(names) + " | completion tokens | stopped early")
    for size in map(str, sizes):
        row = [doc[n][size] for n in names]
        alone = row[0]["wall_s"]
        walls = " | ".join(f"{c['wall_s']:>15.2f} {c['wall_s'] / alone:>6.2f}x" for c in row)  # type: ignore[operator]
        prompts = " / ".join(f"{c['prompt_tokens_processed']:.0f}" for c in row)
        completions = " / ".join(f"{c['completion_tokens']:.0f}" for c in row)
        early = " / ".join(f"{c['stopped_early']}" for c in row)
        print(f"{size:>7} | {walls} | {prompts} | {completions} | {early}")
    (RESULTS / "prefill.json").write_text(json.dumps({"configs": doc, "sizes": sizes, "rounds": args.rounds,
                                                      "tokens": args.tokens}, indent=2))


if __name__ == "__main__":
    main()
