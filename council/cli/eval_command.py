"""`council eval`: is the council worth it? Every member answers every item; every strategy is re-scored."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from council.cli.console import (
    app,
    bad_url,
    fail,
    llama_server_or_exit,
    load_or_exit,
    machine_fits_or_exit,
    out,
    plan_or_exit,
    wait_seconds,
)
from council.paths import same_file, unwritable, write_whole


@app.command("eval")
def eval_(
    policy: Annotated[str, typer.Argument(help="The policy file (YAML).")],
    council: Annotated[str, typer.Argument(help="The council to evaluate.")],
    data: Annotated[str, typer.Argument(help="JSONL: `question` (or `messages`) and `answer` per line "
                                             "(GSM8K's `#### N` understood; `choices` for multiple choice); or "
                                             "BFCL function-calling data: the bfcl-eval wheel, its data folder, "
                                             "or one BFCL_v4_*.json question file.")],
    n: Annotated[int | None, typer.Option("--n", help="Only this many items (BFCL: per category).")] = None,
    seed: Annotated[int | None, typer.Option(help="With --n: a random sample of items, seeded.")] = None,
    concurrency: Annotated[int, typer.Option(help="Items asked at once.")] = 1,
    url: Annotated[str | None, typer.Option(help="Ask a running `council serve` instead of starting the "
                                                 "members here (key from $COUNCIL_API_KEY).")] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Write the report (its JSON Schema: "
                                                                "`council eval-schema`).")] = None,
    html_out: Annotated[str | None, typer.Option("--html", help="Write the report as one self-contained page of "
                                                                "charts, drawn from the same JSON.")] = None,
    record: Annotated[str | None, typer.Option(help="Append each item's answers to this JSONL as they come, "
                                                    "and skip items every seat answered in it (resume).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per item with --url.", callback=wait_seconds)] = 1800.0,
    data_format: Annotated[str, typer.Option("--format", help="auto (BFCL's files are recognised), qa or bfcl.")
                           ] = "auto",
    categories: Annotated[str | None, typer.Option(help="BFCL: the categories, comma-separated (default: "
                                                        "simple_python, multiple, parallel, parallel_multiple, "
                                                        "irrelevance, live_simple).")] = None,
    tool_choice: Annotated[str | None, typer.Option(help="BFCL: the request's `tool_choice` (auto, required, "
                                                         "none); unset, members decide.")] = None,
) -> None:
    """Ask every item with every member answering; print each member's accuracy, the council's under every
    strategy and extractor (re-scored offline), the oracle, tokens and time, early stop and cascade spending,
    and leave-one-out; on function-calling data (BFCL), each member's and the council's accuracy per category by
    BFCL's AST rules, and calls that fail their schema. Exit 2 for a bad policy or data file."""
    from council.evaluation.bfcl import CATEGORIES, is_bfcl, load_bfcl, sample_per_category, unsupported
    from council.evaluation.dataset import DatasetError, load_items, sample
    from council.evaluation.record import (
        NotACouncil,
        RecordError,
        drop_asked_again,
        http_asker,
        in_one_seat_order,
        record_items,
        resumable,
    )
    from council.evaluation.report import print_report
    from council.evaluation.score import score
    from council.plan.planner import fallback_council

    loaded = load_or_exit(policy)
    config = loaded.policy.councils.get(council)
    if config is None:
        raise fail(f"{policy}: no council {council!r}; it has: {', '.join(loaded.policy.councils) or 'none'}", 2)
    if data_format not in ("auto", "qa", "bfcl"):
        raise fail(f"--format must be auto, qa or bfcl, not {data_format!r}", 2)
    bfcl = data_format == "bfcl" or (data_format == "auto" and is_bfcl(data))
    wanted = tuple(c.strip() for c in categories.split(",") if c.strip()) if categories else CATEGORIES
    if bfcl and (why := unsupported(wanted)) is not None:
        raise fail(f"--categories {why}", 2)
    if tool_choice is not None and tool_choice not in ("auto", "required", "none"):
        raise fail(f"--tool-choice must be auto, required or none, not {tool_choice!r}", 2)
    extra = {"tool_choice": tool_choice} if tool_choice else None
    if n is not None and n < 1:
        # `--n 0` left nothing to score and `--n -1` sliced off the last item.
        raise fail(f"--n must be at least 1, not {n}", 2)
    items: list[Any]
    try:
        items = sample_per_category(load_bfcl(data, wanted), n, seed) if bfcl else sample(load_items(data), n, seed)
    except DatasetError as exc:
        raise fail(str(exc), 2) from None
    if not bfcl:
        from council.evaluation.score import unreadable_reference

        # Refused before asking: against a reference the extractor reads as nothing, no answer is ever right.
        if (why := unreadable_reference([(i.line, i.reference) for i in items], config.vote.extract)) is not None:
            raise fail(f"{data}:{why}", 2)
    if concurrency < 1:
        raise fail("--concurrency must be at least 1", 2)
    if url is not None and (problem := bad_url(url)) is not None:
        raise fail(f"--url {url}: {problem}", 2)
    for option, target in (("--json", json_out), ("--html", html_out), ("--record", record)):
        # Found out before the members are asked: a report that cannot be written lost the whole run.
        if target is not None and (problem := unwritable(Path(target))) is not None:
            raise fail(f"{option} {target}: {problem}", 2)
    if (clash := _clash({"--json": json_out, "--html": html_out}, policy, data, record)) is not None:
        raise fail(clash, 2)
    append_to = Path(record) if record else None
    # The seats a recording may hold: the council as declared, or its fallback (what runs when it does not fit).
    seats = [config.member_names(council)]
    if (fallback := fallback_council(council, config)) is not None:
        seats.append(fallback.member_names(council))
    try:
        done = resumable(append_to, items, seats) if append_to is not None else {}  # read before any member starts
    except RecordError as exc:
        raise fail(str(exc), 2) from None
    again: dict[int, str] = {}
    if append_to is not None:
        try:
            again = drop_asked_again(append_to, items, done)
        except OSError as exc:
            raise fail(f"cannot rewrite {record} without the items to ask again: {exc.strerror or exc}", 1) from None
        if again:
            which = ", ".join(map(str, list(again)[:10])) + (", …" if len(again) > 10 else "")
            out.print(f"asking {len(again)} item{'s' * (len(again) > 1)} of {record} again, where a seat did not "
                      f"answer (timed out or failed): {which}", highlight=False)
    if url is not None and any(item.index not in done for item in items):  # (all resumed: nothing is asked)
        _reach_or_exit(url)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out, transient=True) as progress:
        task = progress.add_task(f"{council}: asking", total=len(items))

        def advance(_: Any) -> None:
            progress.advance(task)

        if url is not None:
            asker = http_asker(url, council, os.environ.get("COUNCIL_API_KEY"), timeout, extra)
            try:
                records = asyncio.run(record_items(asker, items, concurrency=concurrency, append_to=append_to,
                                                   on_record=advance, done=done, replacing=again))
            except NotACouncil as exc:
                raise fail(str(exc), 2) from None
            asked = [r for r in records if r.index not in done]
            if asked and not any(r.answers for r in asked):
                # Not one item answered (the router went away, or refuses every request): a failed run, not a
                # measurement of 0%.
                why = asked[0].error or "its replies listed no member's answer"
                raise fail(f"no item was answered by {url}: {why}", 1)
        else:
            records = asyncio.run(_record_here(loaded, council, items, concurrency, append_to, advance, done,
                                               again, extra))
    try:
        # Resumed and new answers scored as one council's (with --url, the router's may not be the recording's).
        records = in_one_seat_order(records, seats)
    except RecordError as exc:
        kept = f"; this run's answers are kept in {record}" if record else ""
        raise fail(f"{exc}: two councils' answers cannot be scored as one{kept}", 2) from None
    report: Any
    if bfcl:
        from council.evaluation.calls import score_calls
        from council.evaluation.report import print_calls_report

        report = score_calls(records, items, council, data, recover=config.vote.recover_tool_calls,
                             seats=[(name, seat.model) for name, seat, _ in config.seats(council)], vote=config.vote,
                             tool_choice=tool_choice, quorum=config.quorum)
        print_calls_report(report, out)
    else:
        report = score(records, council, config, data)
        print_report(report, out)
    if json_out:
        _write(json_out, json.dumps(report.model_dump(), indent=1) + "\n", record)
        out.print(f"report written to {json_out}")
    if html_out:
        from council.evaluation.html_report import render

        _write(html_out, render([report], f"council eval: {council} on {Path(data).name}"), record)
        out.print(f"page written to {html_out}")


def _reach_or_exit(url: str) -> None:
    """A router that cannot be reached fails before anything is asked (each item would fail alike), exit 1; any HTTP
    reply will do here (what it says about each item is the items' answer)."""
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/healthz", timeout=10)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError) as exc:
        raise fail(f"cannot reach {url}: {type(exc).__name__}: {exc}", 1) from None
    except httpx.HTTPError:
        pass


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long: reading it says so later, as the data file's own problem
        return False


def _clash(outputs: dict[str, str | None], policy: str, data: str, record: str | None) -> str | None:
    """Why a report would be written over what the run reads or keeps, or over the other report (each ran to its
    end, exit 0, and the recorded answers, the data set or the policy were gone): or None."""
    named = [(option, Path(target)) for option, target in outputs.items() if target is not None]
    data_path = Path(data)
    read = [("the --record file", Path(record))] if record else []
    read += [("the policy", Path(policy)), ("the data file", data_path)]
    if _is_dir(data_path):  # a BFCL data folder: the question and answer files it holds
        read += [("a data file", p) for p in sorted(data_path.rglob("BFCL_v4_*.json"))]
    for i, (option, target) in enumerate(named):
        for what, path in read:
            if same_file(target, path):
                return f"{option} {target} is {what}: the report would be written over it"
        for other, path in named[:i]:
            if same_file(target, path):
                return f"{option} and {other} name one file, {target}: the two reports would be written over each other"
    return None


def _write(path: str, text: str, record: str | None) -> None:
    """Write an output checked before the run, whole or not at all (written beside it, then moved over it: a
    failure half way, a full disk, left a broken prefix where the last good report was); a failure now is one
    line, exit 1."""
    try:
        write_whole(Path(path), text)
    except OSError as exc:
        kept = f"; the answers are kept in {record}" if record else ""
        raise fail(f"cannot write {path}: {exc.strerror or exc}{kept}", 1) from None


async def _record_here(loaded: Any, council: str, items: list[Any], concurrency: int, append_to: Path | None,
                       advance: Any, done: dict[int, Any], replacing: dict[int, str],
                       extra: dict[str, Any] | None = None) -> list[Any]:
    """Start the council's members, record every item, stop them."""
    from council.evaluation.record import engine_asker, in_seat_order, record_items
    from council.members.process import LifeConfig
    from council.paths import council_home
    from council.voting.assembly import assemble

    server = llama_server_or_exit()
    machine_fits_or_exit(loaded, server)
    plan = plan_or_exit(loaded)
    if council not in plan.configs:
        raise fail(f"council {council} does not fit: {plan.refused.get(council)}", 3)
    # Declared and fallback seats both resume; not a recording of one when the council runs here as the other.
    runs = plan.configs[council].member_names(council)
    for index, kept in done.items():
        _, _, problem = in_seat_order(kept, [runs])
        if problem is not None:
            how = "as declared" if runs == loaded.policy.councils[council].member_names(council) else "as its fallback"
            raise fail(f"{append_to}: item {index} was answered by {problem}: the council runs {how} here; "
                       "record to another file", 2)
    life = LifeConfig(run_dir=council_home() / "run", instance=f"eval-{os.getpid()}", stuck_after=3600)
    assembly = assemble(plan, server, life)
    await assembly.supervisor.start()
    try:
        if not await assembly.supervisor.wait_settled(600):
            raise fail("members did not get ready in 600 s", 1)
        failed = [m.name for m in assembly.supervisor.processes.values() if not m.ready]
        if failed:
            raise fail(f"members failed to start: {', '.join(failed)} (see `council up`)", 1)
        return await record_items(engine_asker(assembly.engines[council], extra), items, concurrency=concurrency,
                                  append_to=append_to, on_record=advance, done=done, replacing=replacing)
    finally:
        await assembly.supervisor.stop()


@app.command("eval-schema", hidden=True)
def eval_schema() -> None:
    """The JSON Schema of `council eval --json`."""
    from council.evaluation.score import EvalReport

    out.print_json(json.dumps(EvalReport.model_json_schema()))
