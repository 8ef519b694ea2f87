"""The accuracy bench's table, from recorded answers only (see bench/accuracy.py): the best single member
greedy beside the council under majority / weighted / confidence, cascades and early stop, and the same for a
five-member council (the greedy member and the first four samples) cut from the same recording."""

from __future__ import annotations

import json
from pathlib import Path

from council.evaluation.record import ItemRecord, read_records
from council.evaluation.score import Rule, cascade, council_answer, reference, score
from council.policy.loading import load_policy
from council.policy.schema import CouncilConfig


def _subset(records: list[ItemRecord], keep: int) -> list[ItemRecord]:
    return [r.model_copy(update={"answers": r.answers[:keep]}) for r in records]


def _row(name: str, accuracy: float, tokens: float, seconds: float, base: float) -> dict[str, object]:
    return {"name": name, "accuracy": accuracy, "points_vs_greedy": 100 * (accuracy - base),
            "tokens_per_item": tokens, "s_per_item": seconds}


def table(records: list[ItemRecord], config: CouncilConfig, council: str, data: str) -> dict[str, object]:
    report = score(records, council, config, data)
    n = len(records)
    greedy = report.members[0]
    base = greedy.accuracy
    wall = sum(r.wall_ms for r in records) / n / 1000
    tokens = sum(a.completion_tokens for r in records for a in r.answers) / n
    rows = [_row(f"best single member greedy ({greedy.name})", base, greedy.tokens_per_item,
                 greedy.ms_per_item / 1000, base)]
    for s in report.strategies:
        if s.extract != report.extract or s.strategy == "similarity":
            continue
        label = s.strategy if s.signal is None else f"confidence ({s.signal}, T={s.temperature:g})"
        rows.append(_row(f"council {len(records[0].answers)}: {label}", s.accuracy, tokens, wall, base))
    for spend in report.spend:
        if spend.name == "early stop":
            rows.append(_row(f"council {len(records[0].answers)}: {spend.name} (majority)", spend.accuracy,
                             spend.tokens_per_item, spend.ms_per_item / 1000, base))
    # Cascades under the confidence vote: what the recommended council does.
    best_conf = max((s for s in report.strategies if s.strategy == "confidence"), key=lambda s: s.accuracy)
    rule = Rule("confidence", report.extract, best_conf.signal or "tail", best_conf.temperature or 1.0)
    size = len(records[0].answers)
    plans: list[tuple[str, list[list[int]], float]] = [
        (f"first {k}", [list(range(k)), list(range(k, size))], 1.0) for k in (2, 3)]
    if size >= 9:
        thirds = [[0, 1, 2], [3, 4, 5], list(range(6, size))]
        plans += [("3+3+3", thirds, 1.0), ("3+3+3, agreement 0.8", thirds, 0.8),
                  ("2+3+rest, agreement 0.8", [[0, 1], [2, 3, 4], list(range(5, size))], 0.8)]
        # Adaptive-Consistency's shape: a pair, then one more sample at a time until the leader holds the share.
        for first, agreement in ((2, 0.75), (2, 0.55), (3, 0.7)):
            plans.append((f"{first}, then 1 at a time, agreement {agreement}",
                          [list(range(first)), *([i] for i in range(first, size))], agreement))
    for label, stages, agreement in plans:
        for vote in (Rule("majority", report.extract), rule):
            results = [cascade(r, vote, stages, agreement, config) for r in records]
            correct = sum(res[0] is not None and res[0] == reference(r, report.extract)
                          for res, r in zip(results, records, strict=True))
            how = "majority" if vote.strategy == "majority" else f"confidence {vote.signal}, T={vote.temperature:g}"
            rows.append(_row(f"council {size}: cascade {label} ({how})", correct / n,
                             sum(res[1] for res in results) / n, sum(res[2] for res in results) / n / 1000, base))
    oracle = report.oracle
    majority_full = sum(council_answer(r.answers, Rule("majority", report.extract)) == reference(r, report.extract)
                        for r in records) / n
    return {"items": n, "members": [m.model_dump() for m in report.members], "oracle": oracle,
            "majority": majority_full, "rows": rows, "leave_one_out": [x.model_dump() for x in report.leave_one_out]}


def print_table(name: str, doc: dict[str, object]) -> None:
    print(f"\n{name}: {doc['items']} items, oracle (some member right) {100 * doc['oracle']:.1f}%")  # type: ignore[operator]
    print(f"{'':<84} {'accuracy':>9} {'vs greedy':>10} {'tokens/item':>12} {'s/item':>8}")
    for row in doc["rows"]:  # type: ignore[attr-defined]
        print(f"{row['name']:<84} {100 * row['accuracy']:>8.1f}% {row['points_vs_greedy']:>+9.1f} "
              f"{row['tokens_per_item']:>12.0f} {row['s_per_item']:>8.1f}")


def report(policy: Path, council: str, sets: dict[str, Path], out: Path) -> dict[str, object]:
    config = load_policy(policy).policy.councils[council]
    doc: dict[str, object] = {"policy": str(policy), "council": council, "sets": {}}
    for name, path in sets.items():
        records = sorted(read_records(path).values(), key=lambda r: r.index)
        if not records:
            print(f"\n{name}: nothing recorded yet ({path})")
            continue
        full = table(records, config, council, name)
        print_table(f"{name}, council of {len(records[0].answers)}", full)
        five = table(_subset(records, 5), config, council, name)
        print_table(f"{name}, council of 5 (greedy + 4 samples, same answers)", five)
        doc["sets"][name] = {"full": full, "five": five}  # type: ignore[index]
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return doc
