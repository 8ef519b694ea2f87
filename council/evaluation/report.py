"""The tables `council eval` prints (rich), from an `EvalReport` (or a `CallsReport` for function-calling data)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from council.evaluation.calls import CallsReport
from council.evaluation.record import ItemRecord
from council.evaluation.score import EvalReport


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def print_report(report: EvalReport, out: Console) -> None:
    n = report.items
    members = Table("member", "model", "accuracy", "answered", "tokens/item", "s/item",
                    title=f"{report.council} on {report.data}: {n} items")
    for m in report.members:
        members.add_row(m.name, m.model, f"{_pct(m.accuracy)} ({m.correct}/{n})", str(m.answered),
                        f"{m.tokens_per_item:.0f}", f"{m.ms_per_item / 1000:.1f}")
    out.print(members)
    best = next(m.accuracy for m in report.members if m.name == report.best_member)
    # What the council is compared with: for samples of one model, its greedy seat and the samples' mean (the
    # member that scored best on these very items is partly luck); else the best member picked on held-out items.
    baselines: list[tuple[str, float]] = []
    notes: list[str] = []
    if report.greedy_member is not None and report.samples_mean is not None:
        greedy = next(m.accuracy for m in report.members if m.name == report.greedy_member)
        baselines += [("vs greedy seat", greedy), ("vs samples' mean", report.samples_mean)]
        notes += [f"greedy seat {report.greedy_member}: {_pct(greedy)}", f"samples' mean: {_pct(report.samples_mean)}"]
    elif report.best_member_held_out is not None:
        baselines.append(("vs best member held out", report.best_member_held_out))
        notes.append(f"best member picked on held-out halves: {_pct(report.best_member_held_out)}")
    baselines.append(("vs best member in hindsight", best))
    notes += [f"best member in hindsight: {report.best_member}, {_pct(best)}",
              f"oracle, some member right: {_pct(report.oracle)}"]
    strategies = Table("strategy", "extract", "accuracy", *(name for name, _ in baselines), "undecided",
                       title=f"the council, re-scored offline ({'; '.join(notes)})")
    for s in report.strategies:
        name = s.strategy if s.signal is None else f"confidence ({s.signal}, T={s.temperature:g})"
        strategies.add_row(name, s.extract, f"{_pct(s.accuracy)} ({s.correct}/{n})",
                           *(f"{100 * (s.accuracy - base):+.1f} pts" for _, base in baselines), str(s.undecided))
    out.print(strategies)
    spend = Table("how it is asked", "accuracy", "tokens/item", "s/item", "members/item", "stopped early",
                  title=f"what it costs ({report.strategy} on {report.extract})")
    for row in report.spend:
        spend.add_row(row.name, _pct(row.accuracy), f"{row.tokens_per_item:.0f}", f"{row.ms_per_item / 1000:.1f}",
                      f"{row.members_per_item:.1f}", _pct(row.stopped_early))
    out.print(spend)
    loo = Table("member left out", "accuracy without", "change", "items changed", "verdict",
                title="leave one out")
    for row in report.leave_one_out:
        loo.add_row(row.member, _pct(row.accuracy_without), f"{100 * row.delta:+.1f} pts", str(row.changed_items),
                    row.verdict)
    out.print(loo)
    _print_unanswered(report.unanswered, report.items, report.records, out)
    for note in report.notes:
        out.print(f"note: {note}", highlight=False)


def _print_unanswered(count: int, n: int, records: list[ItemRecord], out: Console) -> None:
    """Say so when some items were never answered: they are counted wrong everywhere, and why matters."""
    if count:
        why = next((r.error for r in records if r.error and all(a.status != "ok" for a in r.answers)), None)
        out.print(f"{count} of {n} items got no answer from any member (counted wrong for every member and the "
                  f"council){f'; the first: {why}' if why else ''}", markup=False)


def print_calls_report(report: CallsReport, out: Console) -> None:
    """Function-calling data: accuracy per category for each member, each call vote and the oracle; then what each
    returned that fails its schema, and its tokens and time."""
    rows = [*report.members, *report.councils, report.oracle]
    columns = [*report.categories, "overall"]
    accuracy = Table("", *columns, title=f"{report.council} on {report.data}: {report.items} items, accuracy by "
                                         "BFCL's AST rules (irrelevance: no call)")
    for row in rows:
        accuracy.add_row(row.name, *(f"{_pct(c.accuracy)} ({c.correct}/{c.items})" for c in row.categories))
    out.print(accuracy)
    cost = Table("", "calls failing their schema", "undecided", "tokens/item", "s/item",
                 title="what was returned, and its cost (a council: every seat's tokens, the item's wall time)")
    for row in rows[:-1]:
        o = row.overall()
        cost.add_row(row.name, str(o.invalid_calls), str(o.undecided), f"{o.tokens_per_item:.0f}",
                     f"{o.ms_per_item / 1000:.1f}")
    out.print(cost)
    _print_unanswered(report.unanswered, report.items, report.records, out)
    for line in report.vote:
        out.print(f"note: {line}", highlight=False)
