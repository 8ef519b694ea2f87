"""Is the council worth it? Accuracy and cost of a real council against its best member, side by side.

    python -m bench.accuracy [--data ../shared/data/gsm8k/test.jsonl] [--n 60] [--generated 30] [--seed 11]
                             [--policy policies/self-consistency-qwen1.5b.yaml] [--council sc9] [--score-only]
                             [--html REPORT.html] [--json bench/results/accuracy.json]

Records once, re-scores offline: every item is asked through the real engine with every member answering
(`council eval`'s recorder), appended to `bench/records/*.jsonl` as it goes (a run resumes where it
stopped); then the table is computed from those answers alone with the same vote code live councils use:
the best single member greedy, the council under majority / weighted / confidence, cascades and early stop
— accuracy, completion tokens and wall time. Two data sets: a seeded sample of GSM8K read from `--data`
(never copied into the repository) and a generated set of multi-step word problems with exact answers.
Writes bench/results/accuracy.json; with `--html`, also `council eval --html`'s page of charts for both sets (each
set's `council eval` report, scored from the same records). `--score-only` reads the records alone (not `--data`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from council.evaluation.dataset import Item, load_items, sample
from council.evaluation.record import ItemRecord, engine_asker, record_items
from council.members.binary import find_llama_server
from council.members.process import LifeConfig
from council.plan.planner import plan_policy
from council.policy.loading import load_policy
from council.voting.assembly import assemble

ROOT = Path(__file__).resolve().parent
RECORDS = ROOT / "records"
RESULTS = ROOT / "results"
DEFAULT_DATA = ROOT.parent.parent / "shared" / "data" / "gsm8k" / "test.jsonl"

# Multi-step word problems with exact integer answers: (question, numbers drawn, answer from the numbers).
Draw = dict[str, int]
TEMPLATES: tuple[tuple[str, object, object], ...] = (
    ("A shop has {a} boxes with {b} apples in each. It sells {c} apples, then receives {d} more boxes of the "
     "same size. How many apples does it have now?",
     lambda r: {"a": r.randint(3, 40), "b": r.randint(2, 25), "c": r.randint(2, 30), "d": r.randint(1, 12)},
     lambda v: v["a"] * v["b"] - v["c"] + v["d"] * v["b"]),
    ("Tom earns ${a} an hour and works {b} hours a day for {c} days. He then pays ${d} for rent. How many dollars "
     "does he have left?",
     lambda r: {"a": r.randint(8, 40), "b": r.randint(2, 10), "c": r.randint(2, 20), "d": r.randint(10, 150)},
     lambda v: v["a"] * v["b"] * v["c"] - v["d"]),
    ("A train runs at {a} km per hour for {b} hours, then at {c} km per hour for {d} hours. How many kilometres "
     "does it travel in all?",
     lambda r: {"a": r.randint(30, 120), "b": r.randint(2, 9), "c": r.randint(30, 120), "d": r.randint(2, 9)},
     lambda v: v["a"] * v["b"] + v["c"] * v["d"]),
    ("A farm has {a} cows and {b} chickens. A cow has 4 legs and a chicken 2. The farmer buys {c} more chickens "
     "and sells {d} cows. How many legs are on the farm now?",
     lambda r: {"a": r.randint(13, 40), "b": r.randint(2, 50), "c": r.randint(2, 30), "d": r.randint(1, 12)},
     lambda v: 4 * (v["a"] - v["d"]) + 2 * (v["b"] + v["c"])),
    ("A school has {a} boxes of {b} pencils. It gives {d} pencils to the office and shares the rest equally "
     "among {c} classes. How many pencils does each class get?",
     lambda r: (lambda a, b, c: {"a": a, "b": b, "c": c, "d": (a * b) % c + c})(
         r.randint(5, 30), r.randint(6, 24), r.randint(3, 9)),
     lambda v: (v["a"] * v["b"] - v["d"]) // v["c"]),
    ("Mia reads {a} pages a day for {b} days, then {c} pages a day for {d} days. Her book has {e} pages. How many "
     "pages are left?",
     lambda r: (lambda a, b, c, d: {"a": a, "b": b, "c": c, "d": d, "e": a * b + c * d + r.randint(5, 200)})(
         r.randint(5, 40), r.randint(2, 12), r.randint(5, 40), r.randint(2, 12)),
     lambda v: v["e"] - v["a"] * v["b"] - v["c"] * v["d"]),
)


def generated_problems(n: int, seed: int) -> list[dict[str, object]]:
    """`n` problems from the templates with seeded numbers; every answer is a positive integer."""
    rng = random.Random(seed)
    problems: list[dict[str, object]] = []
    for i in range(n):
        template, draw, solve = TEMPLATES[i % len(TEMPLATES)]
        values = draw(rng)  # type: ignore[operator]
        problems.append({"question": template.format(**values), "answer": str(solve(values))})  # type: ignore[operator]
    return problems


async def record(policy: Path, council: str, items: list[Item], out: Path) -> list[ItemRecord]:
    """Start the policy's members, ask every item (resuming `out`), stop the members."""
    server = find_llama_server()
    assert server is not None, "run `council setup --models all` first"
    plan = plan_policy(load_policy(policy).policy)
    with tempfile.TemporaryDirectory() as tmp:
        # Long generations on a busy CPU: the watchdog must not call a 9-sample request stuck.
        life = LifeConfig(run_dir=Path(tmp) / "run", instance="bench-accuracy", stuck_after=3600)
        assembly = assemble(plan, server, life)
        await assembly.supervisor.start()
        try:
            assert await assembly.supervisor.wait_settled(600), "members did not settle"
            engine = assembly.engines[council]
            started = time.monotonic()

            def progress(rec: ItemRecord) -> None:
                ok = sum(a.status == "ok" for a in rec.answers)
                print(f"  {out.stem} item {rec.index} ({ok}/{len(rec.answers)} answered, "
                      f"{rec.wall_ms / 1000:.0f}s; {time.monotonic() - started:.0f}s in all)", flush=True)

            return await record_items(engine_asker(engine), items, append_to=out, on_record=progress)
        finally:
            await assembly.supervisor.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="GSM8K test JSONL (read by path)")
    parser.add_argument("--n", type=int, default=60, help="GSM8K items (a seeded sample)")
    parser.add_argument("--generated", type=int, default=30, help="generated word problems")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--policy", type=Path, default=ROOT.parent / "policies" / "self-consistency-qwen1.5b.yaml")
    parser.add_argument("--council", default="sc9")
    parser.add_argument("--score-only", action="store_true", help="re-score the recorded answers, ask nothing")
    parser.add_argument("--html", type=Path, help="also write the report as a page of charts")
    parser.add_argument("--json", type=Path, default=RESULTS / "accuracy.json", help="where the table's JSON goes")
    args = parser.parse_args()
    sets = {"gsm8k": RECORDS / f"gsm8k-{args.council}.jsonl", "generated": RECORDS / f"generated-{args.council}.jsonl"}
    if not args.score_only:
        RECORDS.mkdir(exist_ok=True)
        generated = RECORDS / f"generated-seed{args.seed}.jsonl"
        if not generated.exists():
            generated.write_text("".join(json.dumps(p) + "\n" for p in generated_problems(args.generated, args.seed)))
        asked = {"gsm8k": sample(load_items(args.data), args.n, args.seed),
                 "generated": load_items(generated)[: args.generated]}
        for name, items in asked.items():
            print(f"recording {name}: {len(items)} items with council {args.council}", flush=True)
            asyncio.run(record(args.policy, args.council, items, sets[name]))
    from bench.accuracy_report import report

    report(args.policy, args.council, sets, args.json, html=args.html)


if __name__ == "__main__":
    sys.exit(main())
