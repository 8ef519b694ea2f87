"""The accuracy bench's table, from recorded answers only (see bench/accuracy.py): the best single member
greedy beside the council under majority / weighted / confidence, cascades and early stop, and the same for a
five-member council (the greedy member and the first four samples) cut from the same recording."""

from __future__ import annotations

import json
from pathlib import Path

from council.evaluation.html_report import render
from council.evaluation.record import ItemRecord, read_records
from council.evaluation.score import (
    PLAN_AGREEMENT,
    PLAN_FIRST,
    PLAN_THEN,
    EvalReport,
    Rule,
    cascade,
    council_answer,
    is_right,
    reference,
    score,
    with_caps,
)
from council.policy.loading import load_policy
from council.policy.schema import CascadeConfig, CouncilConfig


def _subset(records: list[ItemRecord], keep: int) -> list[ItemRecord]:
    return [r.model_copy(update={"answers": r.answers[:keep]}) for r in records]


def _row(name: str, accuracy: float, tokens: float, seconds: float, base: float) -> dict[str, object]:
    return {"name": name, "accuracy": accuracy, "points_vs_greedy": 100 * (accuracy - base),
            "tokens_per_item": tokens, "s_per_item": seconds}


def table(records: list[ItemRecord], config: CouncilConfig, council: str, data: str,
          report: EvalReport | None = None) -> dict[str, object]:
    report = report or score(records, council, config, data)
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
        for first, then, agreement in ((2, 1, 0.75), (2, 1, 0.55), (3, 1, 0.7), (2, 2, 0.7)):
            plans.append((f"{first}, then {then} at a time, agreement {agreement}",
                          CascadeConfig(first=first, then=then).resolve(size), agreement))
    for label, stages, agreement in plans:
        for vote in (Rule("majority", report.extract), rule):
            results = [cascade(r, vote, stages, agreement, config) for r in records]
            correct = sum(is_right(res[0], reference(r, report.extract))
                          for res, r in zip(results, records, strict=True))
            how = "majority" if vote.strategy == "majority" else f"confidence {vote.signal}, T={vote.temperature:g}"
            rows.append(_row(f"council {size}: cascade {label} ({how})", correct / n,
                             sum(res[1] for res in results) / n, sum(res[2] for res in results) / n / 1000, base))
    oracle = report.oracle
    majority_full = sum(is_right(council_answer(r.answers, Rule("majority", report.extract)),
                                 reference(r, report.extract)) for r in records) / n
    return {"items": n, "members": [m.model_dump() for m in report.members], "oracle": oracle,
            "majority": majority_full, "rows": rows, "leave_one_out": [x.model_dump() for x in report.leave_one_out]}


def _grid(size: int, extract: str) -> list[tuple[str, list[list[int]], float, Rule]]:
    """Cascades of the `{first, then, agreement}` family under three votes: the plans `selection` searches."""
    rules = (Rule("majority", extract), Rule("confidence", extract, "tail", 1.0),
             Rule("confidence", extract, "answer", 0.5))
    out = []
    for first in PLAN_FIRST:
        for then in PLAN_THEN:
            stages = CascadeConfig(first=first, then=then).resolve(size)
            for agreement in PLAN_AGREEMENT:
                for rule in rules:
                    how = (rule.strategy if rule.strategy == "majority"
                           else f"confidence {rule.signal}, T={rule.temperature:g}")
                    out.append((f"first {first}, then {then}, agreement {agreement} ({how})", stages, agreement, rule))
    return out


def _cascade_score(records: list[ItemRecord], plan: tuple[str, list[list[int]], float, Rule],
                   config: CouncilConfig, extract: str) -> tuple[float, float]:
    """(accuracy, tokens as a share of every member's) of one cascade plan on `records`."""
    _, stages, agreement, rule = plan
    results = [cascade(r, rule, stages, agreement, config) for r in records]
    correct = sum(is_right(res[0], reference(r, extract)) for res, r in zip(results, records, strict=True))
    every = sum(a.completion_tokens for r in records for a in r.answers) or 1
    return correct / len(records), sum(res[1] for res in results) / every


def selection(records: list[ItemRecord], config: CouncilConfig, extract: str, budget: float = 0.5) -> dict[str, object]:
    """How much of the best cheap cascade is luck: the most accurate plan within `budget` of the tokens, picked
    on all items, then picked on one half and scored on the other (both ways)."""
    grid = _grid(len(records[0].answers), extract)

    def pick(items: list[ItemRecord]) -> tuple[tuple[str, list[list[int]], float, Rule], float, float]:
        scored = [(plan, *_cascade_score(items, plan, config, extract)) for plan in grid]
        return max(scored, key=lambda x: (x[2] <= budget, x[1], -x[2]))

    def full(items: list[ItemRecord], rule: Rule) -> float:  # every member asked, under the plan's own vote
        return sum(is_right(council_answer(r.answers, rule), reference(r, extract)) for r in items) / len(items)

    plan, accuracy, share = pick(records)
    folds = []
    for chosen_on, scored_on in ((records[::2], records[1::2]), (records[1::2], records[::2])):
        fold_plan, fold_acc, fold_share = pick(chosen_on)
        held_acc, held_share = _cascade_score(scored_on, fold_plan, config, extract)
        folds.append({"plan": fold_plan[0], "picked_on": len(chosen_on), "accuracy": fold_acc,
                      "full": full(chosen_on, fold_plan[3]), "token_share": fold_share, "held_out": len(scored_on),
                      "held_out_accuracy": held_acc, "held_out_full": full(scored_on, fold_plan[3]),
                      "held_out_token_share": held_share})
    return {"plans": len(grid), "budget": budget, "best": {"plan": plan[0], "accuracy": accuracy,
                                                           "full": full(records, plan[3]), "token_share": share},
            "folds": folds}


def print_selection(doc: dict[str, object]) -> None:
    best = doc["best"]
    print(f"\ncheapest-accurate cascade within {doc['budget']:g}x tokens, of {doc['plans']} plans: {best['plan']}: "  # type: ignore[index]
          f"{100 * best['accuracy']:.1f}% vs every member (same vote) {100 * best['full']:.1f}% "  # type: ignore[index]
          f"at {best['token_share']:.2f}x")  # type: ignore[index]
    for f in doc["folds"]:  # type: ignore[attr-defined]
        print(f"  picked on {f['picked_on']} items: {f['plan']}: {100 * f['accuracy']:.1f}% (every member "
              f"{100 * f['full']:.1f}%) at {f['token_share']:.2f}x; on the other {f['held_out']}: "
              f"{100 * f['held_out_accuracy']:.1f}% (every member {100 * f['held_out_full']:.1f}%) at "
              f"{f['held_out_token_share']:.2f}x")


def print_table(name: str, doc: dict[str, object]) -> None:
    print(f"\n{name}: {doc['items']} items, oracle (some member right) {100 * doc['oracle']:.1f}%")  # type: ignore[operator]
    print(f"{'':<84} {'accuracy':>9} {'vs greedy':>10} {'tokens/item':>12} {'s/item':>8}")
    for row in doc["rows"]:  # type: ignore[attr-defined]
        print(f"{row['name']:<84} {100 * row['accuracy']:>8.1f}% {row['points_vs_greedy']:>+9.1f} "
              f"{row['tokens_per_item']:>12.0f} {row['s_per_item']:>8.1f}")


def report(policy: Path, council: str, sets: dict[str, Path], out: Path, html: Path | None = None) -> dict[str, object]:
    config = load_policy(policy).policy.councils[council]
    doc: dict[str, object] = {"policy": str(policy), "council": council, "sets": {}}
    pages: list[EvalReport] = []
    for name, path in sets.items():
        # Replies that used every one of their seat's max_tokens were cut off: they abstain unless they stated
        # an answer (the records predate finish_reason).
        records = with_caps(sorted(read_records(path).values(), key=lambda r: r.index), config, council)
        if not records:
            print(f"\n{name}: nothing recorded yet ({path})")
            continue
        scored = score(records, council, config, path.name)
        pages.append(scored)
        full = table(records, config, council, name, scored)
        print_table(f"{name}, council of {len(records[0].answers)}", full)
        chosen = selection(records, config, config.vote.extract) if len(records) >= 10 else None
        if chosen:
            print_selection(chosen)
        five = table(_subset(records, 5), config, council, name)
        print_table(f"{name}, council of 5 (greedy + 4 samples, same answers)", five)
        doc["sets"][name] = {"full": full, "five": five, "cascade_selection": chosen}  # type: ignore[index]
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    if html is not None:
        html.write_text(render(pages, f"bench.accuracy: council {council} of {policy.name}"))
        print(f"\npage written to {html}")
    return doc
