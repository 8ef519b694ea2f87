"""Do agents get a better answer from a council? BFCL v4 function calling, arms side by side.

    python -m bench.agents [--n 20] [--seed 20] [--more 0] [--models qwen2.5-coder-1.5b,qwen2.5-coder-0.5b,smollm2-135m]
                           [--best qwen2.5-coder-1.5b] [--samples 4] [--categories ...] [--score-only] [--judge]

Items: `--n` seeded items of each category (`simple_python`, `multiple`, `parallel`, `parallel_multiple`,
`irrelevance`, `live_simple`) from the bfcl-eval wheel, downloaded into `$COUNCIL_HOME/downloads/bfcl` and read
by path (never copied here); graded by `council.evaluation.bfcl` (BFCL's AST rules; irrelevance: no call).

`--more M` adds M items of each category, drawn with `seed + 1` from those the first sample left out: the
council is chosen on a seeded half of the first sample only, so items drawn later are asked of a council already
fixed, and reported on with the first sample's other half. `--fresh F` adds F more of each category, drawn with
`seed + 2` from those neither draw holds, reported apart from the rest: items no change to the council was
looked for on (record the chosen council's arm on them, `--arms`). `--fresh F,G` adds a second such draw of G
(`seed + 3`, from those no earlier draw holds), for when the first has been looked at: each draw is reported
apart, and all of them pooled with the held-out items (every item the choice was not made on; the chosen
council's arm with `--concurrency 2` takes about 31 s an item on 2 cores). `--choice-half` records an arm on that
half alone (`--temperatures 0.3` adds a nine-seat arm whose samples run cooler): a candidate is tried where the
choice is made; if it wins there, the report says so and which items it must be asked next.

Recorded once, into `bench/records/agents-<arm>.jsonl` (a run resumes where it stopped), through the real engine
with every seat answering; every number is then re-scored offline from those records (`--score-only`):

- `solo-<model>`: each model alone, greedy, one seat sent the agent's body as it is (messages and tools): the
  reply is llama-server's own parse of the model's output, what passthrough relays. Re-scored as it is, and with
  calls written as text recovered offline from the same reply (`council.voting.recovery`).
- `required-<best>`: the best model alone with `tool_choice: required`.
- `listed-<model>`: each other model alone with the council's `listed` tool instructions (each tool's name and
  parameters in the system message: SmolLM2's chat template renders no tools), beside its `solo-` arm.
- `sc-<best>`: a self-consistency council of the best model: a greedy seat and `--samples` samples at
  temperature 0.7 in one request (`n`, the prompt read once), in one process; `brief-sc-<best>` the same with the
  `brief` tool instructions a council adds by default, and `brief-sc<wide>-<best>` with `--wide` samples (more votes,
  still one prefill).
- offline councils: `sc-<best>` and a mixed council (the `solo-*` seats of every model, from their own records)
  under each call vote of `council.evaluation.calls.VOTERS` (`set`: whole call sets; `argument`: per argument);
  beside each, its best seat alone (`sc`: the greedy seat), and the paired difference with its 95% interval;
  a prompt-diverse council (a `brief-sc*` recording of the best model joined with its greedy `solo-` seat, which
  reads no instructions but its chat template's own tool prompt, as a member's own `tool_instructions: none`
  asks it: seats whose prompts differ may err more independently than samples), beside the best of its seats
  alone on the same items;
  `--judge`: the chosen council (`brief-sc<wide>-fresh-<best>`) under `vote.strategy: judge`, its greedy seat
  judging: the live judge's prompt (`council.voting.vote.judge_prompt`) for each item whose seats disagree, asked
  of the best model as the engine asks it, the replies recorded in `agents-judge-<arm>.jsonl` and replayed
  (`council_voter(..., judged=)`); with `--choice-half`, on that half alone;
  and each self-consistency council replayed as a cascade (`cascade {first: N}`, `CASCADES`: its first seats
  alone where they agree, every seat otherwise), with the completion tokens of the seats it asked.

Per category: accuracy, calls returned that fail their schema, completion tokens and wall time per item. A table
on stdout and bench/results/agents.json.

How long it takes (2 CPU cores shared with other work, load about 5): the smoke run `--n 2 --models
qwen2.5-coder-0.5b --best qwen2.5-coder-0.5b --samples 2` (12 items, three recorded arms) took 18.7 minutes:
Qwen2.5-Coder-0.5B alone 38 s per item, with `tool_choice: required` 46 s (every reply ran to max_tokens), its
three-seat council 14 s (the machine was quieter by then). On 2 quiet cores Qwen2.5-Coder-1.5B alone takes
13 s per item, its five-seat council about 30 s and its nine-seat council (`--wide 8`) 38 s (120 items in 75
minutes; `--more 20` with the nine-seat arm alone, 120 more items, took 102 minutes on a busier machine). The
default run (120 items: Qwen2.5-Coder-1.5B alone, with `required` and as five- and nine-seat
councils, and the two small models alone) is estimated at 5-6 hours on two idle cores, and much more on a busy
machine. Re-scoring (`--score-only`) takes seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from council.evaluation.bfcl import CATEGORIES, BfclItem, download_wheel, load_bfcl, sample_per_category
from council.evaluation.calls import (
    VOTERS,
    CallsRow,
    cascade_row,
    council_row,
    council_voter,
    judge_prompt_for,
    member_rows,
    with_recovered_calls,
)
from council.evaluation.record import ItemRecord, engine_asker, read_records, record_items
from council.members.binary import find_llama_server
from council.members.process import LifeConfig
from council.plan.planner import plan_policy
from council.policy.loading import load_policy
from council.setup.catalog import by_name
from council.voting.assembly import assemble
from council.voting.recovery import recover
from council.voting.vote import judge_request

ROOT = Path(__file__).resolve().parent
RECORDS = ROOT / "records"
RESULTS = ROOT / "results"
DEFAULT_MODELS = ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m")
MAX_TOKENS = 256  # a few calls in JSON; a longer reply is prose
GREEDY = {"model": "m", "sampling": {"temperature": 0, "max_tokens": MAX_TOKENS}}  # the best seat alone
CASCADES = (1, 2, 3)  # a self-consistency council replayed as `cascade: {first: N}`
CASCADE_VOTE = "council set" if "council set" in VOTERS else "set"  # the council's own vote where it has one
# The council's own `set` vote with `tie_break: [order]`: a tie goes to the group holding the first seat, the greedy
# one (the model's own best guess, and alone the strongest seat), not to the reply that finished first. Registered
# before the second `--fresh` draw was scored, and kept (policies/agents-qwen1.5b.yaml) as it did no worse there.
TIES_TO_GREEDY = "council set, ties to its greedy seat"
TIE_VOTERS = {TIES_TO_GREEDY: found} if (found := council_voter("set", tie_break=("order",))) is not None else {}


def short(model: str) -> str:
    return model.replace("qwen2.5-coder-", "qwen").replace("smollm2-", "smol").replace("gemma3-", "gemma")


def arm_policy(model: str, seats: list[dict[str, Any]], instructions: str = "none") -> dict[str, Any]:
    source = by_name(model)
    assert source is not None, f"unknown model {model}"
    return {"gpus": [{"name": "cpu", "memory": "24GiB"}], "slots": {"size": "6GiB", "reserve": 0},
            "models": {"m": {"path": str(source.path), "ctx_size": 4096, "share": True}},
            "councils": {"arm": {"members": seats, "quorum": 1, "timeout": "30m",
                                 "vote": {"strategy": "majority", "tool_instructions": instructions}}}}


def arms(models: Sequence[str], best: str, samples: int, wide: int = 0,
         temperatures: Sequence[float] = ()) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each recorded arm: its policy and the extra request fields. Add an arm here and it is recorded and scored."""
    out = {f"solo-{short(m)}": (arm_policy(m, [GREEDY]), {}) for m in models}
    out[f"required-{short(best)}"] = (arm_policy(best, [GREEDY]), {"tool_choice": "required"})
    # The small models whose chat templates render no tools (SmolLM2): what `listed` instructions let them do.
    out |= {f"listed-{short(m)}": (arm_policy(m, [GREEDY], "listed"), {}) for m in models if m != best}

    def sampled_seats(k: int, temperature: float = 0.7) -> dict[str, Any]:
        return {"model": "m", "samples": k,
                "sampling": {"temperature": temperature, "top_p": 0.95, "seed": 1, "max_tokens": MAX_TOKENS}}

    if samples:
        sampled = sampled_seats(samples)
        out[f"sc-{short(best)}"] = (arm_policy(best, [GREEDY, sampled]), {})
        # The council as a policy gets it by default: the tool instructions it adds (`vote.tool_instructions`).
        out[f"brief-sc-{short(best)}"] = (arm_policy(best, [GREEDY, sampled], "brief"), {})
    if wide:  # the same council with more samples: what more votes buy (one prefill still)
        out[f"brief-sc{wide}-{short(best)}"] = (arm_policy(best, [GREEDY, sampled_seats(wide)], "brief"), {})
        # The same policy recorded once the engine mixed the question into a fixed seed (`engine.salted`): the
        # arms above were recorded before, when sample k replayed one random sequence on every question.
        out[f"brief-sc{wide}-fresh-{short(best)}"] = out[f"brief-sc{wide}-{short(best)}"]
        # ... and with samples nearer the greedy seat's answer (`--temperatures`)
        out |= {f"brief-sc{wide}-t{t:g}-{short(best)}": (
            arm_policy(best, [GREEDY, sampled_seats(wide, t)], "brief"), {}) for t in temperatures}
    return out


@contextlib.asynccontextmanager
async def started(policy: dict[str, Any], concurrency: int = 1) -> AsyncIterator[Any]:
    """The arm's council, its processes started and settled (stopped on the way out): the assembly. `concurrency`:
    the process gets that many slots per seat, each with the arm's context."""
    server = find_llama_server()
    assert server is not None, "run `council setup --models all` first"
    if concurrency > 1:
        model = policy["models"]["m"]
        policy = {**policy, "models": {"m": {**model, "parallel": concurrency,
                                             "ctx_size": model["ctx_size"] * concurrency}}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
        plan = plan_policy(load_policy(path).policy)
        life = LifeConfig(run_dir=Path(tmp) / "run", instance="bench-agents", stuck_after=3600)
        assembly = assemble(plan, server, life)
        await assembly.supervisor.start()
        try:
            assert await assembly.supervisor.wait_settled(600), "members did not settle"
            yield assembly
        finally:
            await assembly.supervisor.stop()


async def record(policy: dict[str, Any], extra: dict[str, Any], items: list[BfclItem], out: Path,
                 concurrency: int = 1) -> None:
    """Ask `items` of the arm's council, `concurrency` items at a time (a batch of 18 sequences decodes in little
    more time than one of 9 on CPU)."""
    async with started(policy, concurrency) as assembly:
        started_at = time.monotonic()
        declared = {i.id: [t["function"]["name"] for t in i.tools] for i in items}

        def progress(rec: ItemRecord) -> None:
            # Calls llama-server parsed, and those written as text that recovery reads (Qwen2.5-Coder's usual).
            calls = sum(bool(a.tool_calls) or recover(a.text, declared.get(rec.item_id, [])) is not None
                        for a in rec.answers)
            print(f"  {out.stem} {rec.item_id} ({calls}/{len(rec.answers)} seats called, "
                  f"{rec.wall_ms / 1000:.0f}s; {time.monotonic() - started_at:.0f}s in all)", flush=True)

        await record_items(engine_asker(assembly.engines["arm"], extra), items, append_to=out,
                           on_record=progress, concurrency=concurrency)


# --- the judge: `vote.strategy: judge` replayed -------------------------------------------------------------------

def judged_arm(best: str, wide: int) -> str:
    """The recording whose seats a judge is asked to choose among: the chosen council's (#20)."""
    return f"brief-sc{wide}-fresh-{short(best)}"


def read_judged(path: Path) -> dict[str, str]:
    """The judge's recorded replies: its prompt → what it answered."""
    if not path.exists():
        return {}
    lines = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {r["prompt"]: r["reply"] for r in lines if r.get("status") == "ok"}


async def record_judge(best: str, prompts: Sequence[tuple[str, str]], out: Path) -> None:
    """Ask the best model (greedy, alone: the council's greedy seat as its `vote.judge`) each prompt a live judge
    would read, as the engine asks it (`judge_request`); each reply appended to `out` (a run resumes)."""
    done = read_judged(out)
    todo = [(item_id, prompt) for item_id, prompt in dict.fromkeys(prompts) if prompt not in done]
    print(f"recording the judge: {len(todo)} prompts ({len(done)} recorded before)", flush=True)
    if not todo:
        return
    async with started(arm_policy(best, [GREEDY])) as assembly:
        seat = assembly.engines["arm"].seats[0]
        with out.open("a") as sink:
            for n, (item_id, prompt) in enumerate(todo, 1):
                reply = await seat.client.complete(judge_request(prompt))
                sink.write(json.dumps({"item_id": item_id, "prompt": prompt, "reply": reply.text,
                                       "status": reply.status, "ms": reply.latency_ms}) + "\n")
                sink.flush()
                print(f"  judge {item_id}: {reply.text!r} ({reply.latency_ms / 1000:.1f}s; {n}/{len(todo)})",
                      flush=True)


def round_robin(items: Sequence[BfclItem]) -> list[BfclItem]:
    """One item of each category in turn: a run stopped early (it resumes) has every category in equal parts."""
    by: dict[str, list[BfclItem]] = {}
    for item in items:
        by.setdefault(item.category, []).append(item)
    columns = list(by.values())
    return [col[i] for i in range(max(map(len, columns), default=0)) for col in columns if i < len(col)]


# --- offline: recovery, mixed councils, pairs ---------------------------------------------------------------------

def recovery() -> Callable[[str | None, list[str]], list[dict[str, Any]] | None]:
    """Calls written as text, recovered by the council's own parsers."""

    def calls(text: str | None, declared: list[str]) -> list[dict[str, Any]] | None:
        found = recover(text, declared)
        return None if found is None else [{"function": {"name": name}} for name, _ in found[0]]

    return calls


def joined(arms: dict[str, list[ItemRecord]]) -> list[ItemRecord]:
    """One council of every seat of every arm, in arm order, item by item (items every arm answered): the single
    models' seats (a mixed council), or seats of one model asked with different prompts (tool instructions) or
    sampled, as a member's own `tool_instructions` lets one policy ask them. Seats are named `<arm>/<seat>`: a
    vote keyed by member must not read one seat's answer for another's."""
    by_item = {name: {r.index: r for r in recs} for name, recs in arms.items()}
    common = sorted(set.intersection(*(set(b) for b in by_item.values())))
    out = []
    for index in common:
        rows = [b[index] for b in by_item.values()]
        answers = [a.model_copy(update={"member": f"{name}/{j}"})
                   for name, row in zip(by_item, rows, strict=True) for j, a in enumerate(row.answers)]
        out.append(rows[0].model_copy(update={"answers": answers, "wall_ms": max(r.wall_ms for r in rows)}))
    return out


def paired(council: CallsRow, seat: CallsRow, keep: Sequence[int] | None = None) -> dict[str, float]:
    """The council minus the seat, item by item (the items at `keep`, else all): the mean difference in points
    and its 95% interval (normal approximation to the paired differences)."""
    positions = range(len(council.hits)) if keep is None else keep
    diffs = [int(council.hits[i]) - int(seat.hits[i]) for i in positions]
    n = len(diffs)
    mean = sum(diffs) / n if n else 0.0
    if n < 2:  # one difference says nothing of its spread: the interval is every difference possible, not 0 wide
        return {"points": 100 * mean, "low": -100.0, "high": 100.0, "items": n}
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = 1.96 * sd / math.sqrt(n)
    return {"points": 100 * mean, "low": 100 * (mean - half), "high": 100 * (mean + half), "items": n}


def score(records: dict[str, list[ItemRecord]], items: dict[str, BfclItem], best: str,
          judged: dict[str, dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Every row; `judged`: per recording, its judge's recorded replies (a `judge` council row where they cover
    every item whose seats disagree)."""
    rows: list[dict[str, Any]] = []

    def add(name: str, row: CallsRow, against: CallsRow | None = None, of: list[ItemRecord] | None = None) -> None:
        rows.append({"arm": name, **({"vs_best_seat": paired(row, against)} if against else {}),
                     "categories": [c.model_dump() for c in row.categories], "_row": row, "_seat": against,
                     "_records": of})

    solos = [name for name in records if name.startswith("solo-")]
    for name, recs in records.items():
        if not recs:
            continue
        seats = member_rows(recs, items)
        if len(recs[0].answers) == 1:
            add(f"{name} (passthrough)", seats[0], of=recs)
            add(f"{name} (with recovery)", member_rows(with_recovered_calls(recs, items), items)[0])
            plain = {r.item_id: r for r in records.get(name.replace("listed-", "solo-", 1), [])}
            if name.startswith("listed-") and plain:  # the instructions against none, item by item
                mine = [r for r in recs if r.item_id in plain]
                add(f"{name} (with recovery) vs no instructions",
                    member_rows(with_recovered_calls(mine, items), items)[0],
                    member_rows(with_recovered_calls([plain[r.item_id] for r in mine], items), items)[0])
            continue
        greedy = seats[0]
        add(f"{name}: greedy seat alone", greedy)
        for mode in VOTERS:
            add(f"{name}: council ({mode})", council_row(recs, items, mode), greedy, recs)
        recovered = with_recovered_calls(recs, items)
        seat = member_rows(recovered, items)[0]
        add(f"{name}: greedy seat alone, with recovery", seat)
        for mode in VOTERS:
            add(f"{name}: council ({mode}), with recovery", council_row(recovered, items, mode), seat,
                recovered)
        for mode in TIE_VOTERS:
            add(f"{name}: council ({mode}), with recovery", council_row(recovered, items, mode, voters=TIE_VOTERS),
                seat, recovered)
        # A judge choosing among the seats (`vote.strategy: judge`, the greedy model judging), its replies recorded;
        # tokens are the seats' (the judge's short prompt and reply are not counted).
        if (replies := (judged or {}).get(name)) is not None and all(
                (p := judge_prompt_for(r.answers, items[r.item_id or ""])) is None or p in replies for r in recovered):
            add(f"{name}: council (judge: its greedy seat), with recovery",
                council_row(recovered, items, "judge", voters={"judge": council_voter("set", "judge", judged=replies)}),
                seat, recovered)
        # The same council as a cascade (its greedy seat and first samples, the rest only where they disagree):
        # what the vote costs. Reported beside, not among the councils `held_out` chooses from: cascades were
        # added after the held-out items' results had been seen.
        for first in CASCADES:
            add(f"{name}: cascade {{first: {first}}} ({CASCADE_VOTE}), recovery on",
                cascade_row(recovered, items, CASCADE_VOTE, first), seat, recovered)
        # Calls among prose too (recovery.among_prose): measured here, not what a council does.
        prose = with_recovered_calls(recs, items, prose=True)
        prose_seat = member_rows(prose, items)[0]
        add(f"{name}: greedy seat alone, with recovery among prose", prose_seat)
        add(f"{name}: council (set), with recovery among prose", council_row(prose, items, "set"), prose_seat, prose)
    # Prompt-diverse councils: a self-consistency recording of the best model (`brief`) joined with its greedy seat
    # under another prompt (no instructions: the chat template's own tool prompt), whose errors may differ more than
    # samples' do. Against the best of its seats alone on the same items (the strongest baseline).
    others = [n for n in (f"solo-{short(best)}",) if records.get(n)]
    for name in [n for n in records if n.startswith("brief-sc") and n.endswith(f"-{short(best)}") and records[n]]:
        if not others or len(records[name][0].answers) < 2:
            continue
        council = joined({n: with_recovered_calls(records[n], items) for n in [name, *others]})
        if not council:
            continue
        seats = member_rows(council, items)
        best_seat = max(seats, key=lambda s: sum(s.hits))
        label = f"diverse ({name} + {', '.join(others)})"
        for mode in VOTERS:
            add(f"{label}: council ({mode}), with recovery", council_row(council, items, mode), best_seat, council)
    if len(solos) > 1:
        council = joined({s: with_recovered_calls(records[s], items) for s in solos})
        if council:
            seats = member_rows(council, items)
            best_seat = next((s for s, name in zip(seats, solos, strict=True) if name == f"solo-{short(best)}"),
                             seats[0])
            for mode in VOTERS:
                add(f"mixed ({', '.join(s.removeprefix('solo-') for s in solos)}): council ({mode}), with recovery",
                    council_row(council, items, mode), best_seat, council)
    return rows


def drawn(every: Sequence[BfclItem], n: int, seed: int, more: int = 0,
          fresh: Sequence[int] = ()) -> tuple[list[BfclItem], set[str], list[set[str]]]:
    """The items asked, in the benchmark's order: `n` of each category (seed), `more` from those left (seed + 1),
    then each `fresh` draw from those no earlier draw holds (seed + 2, seed + 3, ...). With the first sample's ids
    and each fresh draw's: a later draw never changes an earlier one, so records stay comparable."""
    items = sample_per_category(every, n, seed)
    first = {i.id for i in items}
    if more:
        items = [*items, *sample_per_category([i for i in every if i.id not in first], more, seed + 1)]
    draws: list[set[str]] = []
    for k, count in enumerate(c for c in fresh if c):
        held = {i.id for i in items}
        draws.append({i.id for i in sample_per_category([i for i in every if i.id not in held], count, seed + 2 + k)})
        items = [*items, *(i for i in every if i.id in draws[-1])]
    return sorted(items, key=lambda i: i.index), first, draws


def halves(items: Sequence[BfclItem], seed: int) -> tuple[set[str], set[str]]:
    """The items split in two, per category, by a seeded shuffle: one half chooses the council, the other reports
    on the chosen one (the choice is not graded on the items it was made on)."""
    by: dict[str, list[str]] = {}
    for item in items:
        by.setdefault(item.category, []).append(item.id)
    choose: set[str] = set()
    for ids in by.values():
        ids = sorted(ids)
        random.Random(seed).shuffle(ids)
        choose |= set(ids[: len(ids) // 2])
    return choose, {i.id for i in items} - choose


def held_out(records: dict[str, list[ItemRecord]], items: dict[str, BfclItem], best: str,
             seed: int, first: set[str] | None = None,
             judged: dict[str, dict[str, str]] | None = None,
             fresh: Sequence[set[str]] = ()) -> dict[str, Any] | None:
    """The council chosen on one seeded half of the `first` sample (the council row with the best accuracy there,
    fewer tokens on a tie, then the council's own vote), reported on every other item (that sample's other half
    and items drawn later with `--more`): per category and overall, the council minus its best seat asked alone,
    paired, with 95% intervals, beside the plain model through passthrough. The `fresh` draws (`--fresh`) are
    reported apart, the chosen council against its greedy seat on those it was asked (all draws pooled; each in
    `splits`)."""
    # The items the default council's arm answered (a run stopped early); a candidate must cover all of them.
    main = records.get(f"brief-sc-{short(best)}") or records.get(f"solo-{short(best)}") or []
    covered = {r.item_id for r in main} & (set(items) if first is None else first)
    choose, _ = halves([i for i in items.values() if i.id in covered], seed)
    pooled = set().union(*fresh)
    report = set(items) - choose - pooled

    def only(ids: set[str]) -> dict[str, list[ItemRecord]]:
        return {name: [r for r in recs if r.item_id in ids] for name, recs in records.items()}

    # Councils as a policy runs them: recovery is on by default.
    picked = [r for r in score(only(choose), items, best, judged)
              if "vs_best_seat" in r and r["arm"].endswith("with recovery")
              and r["_row"].overall().items == len(choose)]
    if not picked:
        return None
    # On a tie, fewer tokens, then the council's own vote code over the evaluation's stand-in (what a policy runs),
    # then `TIES_TO_GREEDY` over the vote's default tie-break (the agents policy's, kept on the second fresh draw).
    chosen = max(picked, key=lambda r: (r["_row"].overall().accuracy, -r["_row"].overall().tokens_per_item,
                                        "(council " in r["arm"], TIES_TO_GREEDY in r["arm"]))
    # Each candidate where the choice was made (a judge recorded there only is compared there only).
    candidates = {r["arm"]: r["_row"].overall().accuracy for r in picked}
    rows = {r["arm"]: r for r in score(only(report), items, best, judged)}
    row = rows.get(chosen["arm"])
    if row is None:  # a candidate recorded on the choice half alone (`--choice-half`) won there
        return {"seed": seed, "chosen_on": len(choose), "council": chosen["arm"], "not_yet_asked": len(report),
                "accuracy_on_choice_half": chosen["_row"].overall().accuracy, "candidates": candidates}
    council, seat, ordered = row["_row"], row["_seat"], row["_records"]
    # Items drawn after the choice (`--more`): the council was fixed before they were asked.
    later = [i for i, r in enumerate(ordered) if first is not None and r.item_id not in first]
    per_category = by_category(council, seat, ordered)
    plain = rows.get(f"solo-{short(best)} (passthrough)")
    # On the council's own items: a candidate still being recorded covers part of the report half only.
    asked = {r.item_id for r in ordered}
    plain_hits = [h for r, h in zip(plain["_records"], plain["_row"].hits, strict=True) if r.item_id in asked] \
        if plain else []
    # The chosen council's recording replayed as cascades, on the same items: beside it, never chosen.
    recording = chosen["arm"].split(":")[0]
    compared = list(dict.fromkeys([chosen["arm"], *(f"{recording}: council ({mode}), with recovery"
                                                    for mode in (CASCADE_VOTE, *TIE_VOTERS))]))
    cascades = {arm: {"accuracy": r["_row"].overall().accuracy, "tokens_per_item": r["_row"].overall().tokens_per_item,
                      **paired(r["_row"], r["_seat"])}
                for arm, r in rows.items() if arm.startswith(f"{recording}: cascade")}
    # What a vote could reach at most: each seat alone on the same items, and the items some seat got right.
    seat_rows = member_rows(ordered, items)
    seats = [sum(r.hits) / len(r.hits) for r in seat_rows]
    any_seat = sum(any(r.hits[i] for r in seat_rows) for i in range(len(ordered))) / len(ordered)
    return {"seed": seed, "chosen_on": len(choose), "reported_on": len(ordered), "council": chosen["arm"],
            "seat_accuracies": seats, "any_seat_right": any_seat,
            "accuracy_on_choice_half": chosen["_row"].overall().accuracy, "candidates": candidates,
            "council_accuracy": council.overall().accuracy, "best_seat_accuracy": seat.overall().accuracy,
            "plain_passthrough_accuracy": sum(plain_hits) / len(plain_hits) if plain_hits else None,
            "report_half": len(report),
            "invalid_calls_returned": council.overall().invalid_calls,
            "vs_best_seat": paired(council, seat), "per_category": per_category,
            "tokens_per_item": council.overall().tokens_per_item, "cascades": cascades,
            "fresh": against_seat(only(pooled), items, best, judged, [chosen["arm"]])[chosen["arm"]],
            # The chosen council, and its recording under the council's `set` vote with the default tie-break and
            # with `TIES_TO_GREEDY`, on each set of items the choice was not made on, and on all of them together
            # (the largest sample nothing was chosen on).
            "splits": _splits(only, items, best, judged, compared, {
                "held out": report, **{f"fresh draw {k}": draw for k, draw in enumerate(fresh, 1)},
                "all past the choice": report | pooled}),
            "drawn_later": {"council": sum(council.hits[i] for i in later) / len(later),
                            "best_seat": sum(seat.hits[i] for i in later) / len(later),
                            **paired(council, seat, later)} if later else None}


def against_seat(records: dict[str, list[ItemRecord]], items: dict[str, BfclItem], best: str,
                 judged: dict[str, dict[str, str]] | None, arms: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """Each council row of `arms` against its greedy seat on the items of `records` it was asked, per category
    too (None: not asked any). The records are scored once for all of them."""
    recordings = {arm.split(":")[0] for arm in arms}
    if recordings <= set(records):  # rows of single recordings: score those recordings alone
        records = {name: records[name] for name in recordings}
    rows = {r["arm"]: r for r in score(records, items, best, judged)}
    out: dict[str, dict[str, Any] | None] = {}
    for arm in arms:
        if (row := rows.get(arm)) is None:
            out[arm] = None
            continue
        council, seat, ordered = row["_row"], row["_seat"], row["_records"]
        out[arm] = {"council": council.overall().accuracy, "best_seat": seat.overall().accuracy,
                    "invalid_calls_returned": council.overall().invalid_calls, **paired(council, seat),
                    "per_category": by_category(council, seat, ordered)}
    return out


def _splits(only: Callable[[set[str]], dict[str, list[ItemRecord]]], items: dict[str, BfclItem], best: str,
            judged: dict[str, dict[str, str]] | None, arms: Sequence[str],
            splits: dict[str, set[str]]) -> dict[str, dict[str, dict[str, Any] | None]]:
    """`against_seat` on each split of the items, by arm then split."""
    found = {name: against_seat(only(ids), items, best, judged, arms) for name, ids in splits.items()}
    return {arm: {name: found[name][arm] for name in splits} for arm in arms}


def by_category(council: CallsRow, seat: CallsRow, ordered: Sequence[ItemRecord]) -> dict[str, dict[str, float]]:
    """Per category, in the order met: the council's and the seat's accuracy and their paired difference."""
    out = {}
    for category in dict.fromkeys(r.category or "?" for r in ordered):
        keep = [i for i, r in enumerate(ordered) if (r.category or "?") == category]
        cat = {c.category: c for c in council.categories}[category]
        alone = {c.category: c for c in seat.categories}[category]
        out[category] = {"council": cat.accuracy, "best_seat": alone.accuracy, **paired(council, seat, keep)}
    return out


def print_by_category(per_category: dict[str, dict[str, float]], indent: str = "  ") -> None:
    for category, c in per_category.items():
        print(f"{indent}{category:<18}{100 * c['council']:>5.0f}% vs {100 * c['best_seat']:>4.0f}%  "
              f"{c['points']:+6.1f} pts [{c['low']:+.1f}, {c['high']:+.1f}]")


# --- recovery against a reference parser ----------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json|tool_call)?\s*\n?(.*?)```", re.S)
_TAG = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def reference_calls(text: str | None) -> list[str]:
    """An independent reading of the shapes vLLM's parsers read (Hermes/Qwen2.5: `<tool_call>` tags and fenced
    JSON blocks; Llama 3 JSON: a reply that is one JSON value), each a {"name", "arguments"} object or a list of
    them: the names."""
    names: list[str] = []
    blocks = [*_TAG.findall(text or ""), *_FENCE.findall(text or "")] or [(text or "").strip()]  # or bare JSON
    for block in blocks:
        try:
            value = json.loads(block)
        except ValueError:
            continue
        for call in value if isinstance(value, list) else [value]:
            if isinstance(call, dict) and isinstance(call.get("name"), str):
                names.append(call["name"])
    return names


def recovery_check(records: dict[str, list[ItemRecord]], items: dict[str, BfclItem]) -> dict[str, Any] | None:
    """Over every recorded reply that made no native call: calls the reference parser finds that recovery missed,
    and calls recovery finds on irrelevance items beyond the reference's (recovery also returns calls to undeclared
    names: they are then invalid and abstain, with the reason)."""
    recovered = recovery()
    replies = missed = among_prose = undeclared = found = added_irrelevant = 0
    added_by_shape: dict[str, int] = {}
    for recs in records.values():
        for r in recs:
            item = items[r.item_id or ""]
            declared = [t["function"]["name"] for t in item.tools]
            for a in r.answers:
                if a.status != "ok" or a.tool_calls:
                    continue
                replies += 1
                want = reference_calls(a.text)
                got = [c["function"]["name"] for c in recovered(a.text, declared) or []]
                found += len(got)
                lost = {n: max(0, want.count(n) - got.count(n)) for n in set(want)}
                missed += sum(lost.values())
                undeclared += sum(k for n, k in lost.items() if n not in declared)  # invalid wherever written
                prose = recover(a.text, declared, prose=True)
                prose_names = [n for n, _ in prose[0]] if prose else []
                # written among prose: text by design (see the "among prose" rows)
                among_prose += sum(min(k, prose_names.count(n)) for n, k in lost.items() if n in declared)
                if item.category == "irrelevance":
                    added = sum(max(0, got.count(n) - want.count(n)) for n in set(got))
                    added_irrelevant += added
                    if added:  # by the shape it was read in: the reference reads tags, fences and bare JSON only
                        shape = (recover(a.text, declared) or ([], "?"))[1]
                        added_by_shape[shape] = added_by_shape.get(shape, 0) + added
    return {"replies": replies, "recovered_calls": found, "reference_calls_missed": missed,
            "missed_calls_written_among_prose": among_prose, "missed_calls_to_undeclared_names": undeclared,
            "added_on_irrelevance_beyond_reference": added_irrelevant,
            "added_on_irrelevance_by_shape": added_by_shape}


def print_table(rows: list[dict[str, Any]], categories: Sequence[str]) -> None:
    width = max(len(r["arm"]) for r in rows)
    head = "".join(f"{c[:14]:>15}" for c in [*categories, "overall"])
    print(f"{'arm':<{width}}{head}{'bad calls':>10}{'tok/item':>9}{'s/item':>8}  vs best seat (95% CI)")
    for r in rows:
        cats = {c["category"]: c for c in r["categories"]}
        cells = "".join(f"{100 * cats[c]['accuracy']:>8.0f}% ({cats[c]['correct']:>2}/{cats[c]['items']:<2})"
                        if c in cats else f"{'-':>15}" for c in [*categories, "overall"])
        o = cats["overall"]
        vs = r.get("vs_best_seat")
        pair = f"  {vs['points']:+.1f} pts [{vs['low']:+.1f}, {vs['high']:+.1f}]" if vs else ""
        print(f"{r['arm']:<{width}}{cells}{o['invalid_calls']:>10}{o['tokens_per_item']:>9.0f}"
              f"{o['ms_per_item'] / 1000:>8.1f}{pair}")


def counts(text: str) -> list[int]:
    """`--fresh F,G,...`: the size of each draw."""
    return [int(f) for f in text.split(",") if f.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="items per category (a seeded sample)")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--more", type=int, default=0, help="items per category drawn (seed + 1) from those the "
                        "first sample left out: asked after the council was chosen, reported on only")
    parser.add_argument("--fresh", type=counts, default="0", help="items per category drawn (seed + 2) from those "
                        "neither draw above holds: reported apart, as items nothing was tuned on; F,G: a second draw "
                        "of G (seed + 3) from those no earlier draw holds, each draw reported apart and pooled")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="catalog models, each alone")
    parser.add_argument("--best", default=DEFAULT_MODELS[0], help="the model of the self-consistency council and "
                                                                  "the tool_choice: required arm")
    parser.add_argument("--samples", type=int, default=4, help="samples beside the greedy seat (0: no sc arm)")
    parser.add_argument("--wide", type=int, default=8, help="samples of a wider council beside the greedy seat, "
                                                                "`brief` instructions (0: no such arm)")
    parser.add_argument("--categories", default=",".join(CATEGORIES))
    parser.add_argument("--score-only", action="store_true", help="re-score the recorded answers, ask nothing")
    parser.add_argument("--arms", default="", help="record only these arms (comma-separated names; default all)")
    parser.add_argument("--temperatures", default="", help="more nine-seat arms (`--wide`) whose samples take these "
                        "temperatures (comma-separated), beside 0.7")
    parser.add_argument("--concurrency", type=int, default=1, help="items asked at once while recording (each "
                        "seat gets that many slots; on CPU a bigger batch costs little more time per step)")
    parser.add_argument("--judge", action="store_true", help="record a judge (the best model, greedy) choosing among "
                        "the seats of the chosen council's recording, where they disagree (with --choice-half: on "
                        "that half only): `vote.strategy: judge`, replayed")
    parser.add_argument("--choice-half", action="store_true", help="record only the items the council is chosen on "
                        "(a seeded half of the first sample): a candidate is tried there before it is asked the rest")
    args = parser.parse_args()
    categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    every = load_bfcl(download_wheel(), categories)
    items, first, fresh = drawn(every, args.n, args.seed, args.more, args.fresh)
    by_id = {i.id: i for i in items}
    RECORDS.mkdir(exist_ok=True)
    temperatures = [float(t) for t in args.temperatures.split(",") if t.strip()]
    plan = arms(models, args.best, args.samples, args.wide, temperatures)
    files = {name: RECORDS / f"agents-{name}.jsonl" for name in plan}
    if not args.score_only:
        chosen = {a.strip() for a in args.arms.split(",") if a.strip()}
        choose = halves([i for i in items if i.id in first], args.seed)[0] if args.choice_half else None
        asked = [i for i in items if choose is None or i.id in choose]
        for name, (policy, extra) in plan.items():
            if chosen and name not in chosen:
                continue
            print(f"recording {name}: {len(asked)} items", flush=True)
            asyncio.run(record(policy, extra, round_robin(asked), files[name], args.concurrency))
    # Only the records of the items sampled now (a file may hold more, from a larger run).
    records = {name: sorted((r for r in read_records(path).values() if r.item_id in by_id), key=lambda r: r.index)
               for name, path in files.items()}
    judging = judged_arm(args.best, args.wide)
    judge_file = RECORDS / f"agents-judge-{judging}.jsonl"
    if args.judge and not args.score_only and records.get(judging):
        choose = halves([i for i in items if i.id in first], args.seed)[0] if args.choice_half else None
        asked = [r for r in with_recovered_calls(records[judging], by_id) if choose is None or r.item_id in choose]
        prompts = [(r.item_id or "", p) for r in asked if (p := judge_prompt_for(r.answers, by_id[r.item_id or ""]))]
        asyncio.run(record_judge(args.best, prompts, judge_file))
    judged = {judging: read_judged(judge_file)} if judge_file.exists() else {}
    rows = score(records, by_id, args.best, judged)
    print_table(rows, categories)
    chosen = held_out(records, by_id, args.best, args.seed, first, judged, fresh)
    if chosen is not None and "not_yet_asked" in chosen:
        print(f"\nchosen on {chosen['chosen_on']} items: {chosen['council']} "
              f"({100 * chosen['accuracy_on_choice_half']:.0f}% there), not yet asked the other "
              f"{chosen['not_yet_asked']}: record its arm (`--arms`) on items drawn now (`--more`, a new `--seed`)")
    elif chosen is not None:
        vs = chosen["vs_best_seat"]
        print(f"\nchosen on {chosen['chosen_on']} items: {chosen['council']}; on the other {chosen['reported_on']}: "
              f"{100 * chosen['council_accuracy']:.0f}% vs its best seat alone "
              f"{100 * chosen['best_seat_accuracy']:.0f}%"
              f" ({vs['points']:+.1f} pts [{vs['low']:+.1f}, {vs['high']:+.1f}]), plain passthrough "
              f"{100 * (chosen['plain_passthrough_accuracy'] or 0):.0f}%"
              + (f" (recorded on {chosen['reported_on']} of the {chosen['report_half']} items so far: an interim "
                 "count, not a result)" if chosen["reported_on"] < chosen["report_half"] else ""))
        judges = {arm: a for arm, a in chosen["candidates"].items() if "(judge" in arm}
        for arm, accuracy in judges.items():
            print(f"  on the choice half, against it ({100 * chosen['accuracy_on_choice_half']:.0f}%): {arm} "
                  f"{100 * accuracy:.0f}%")
        print_by_category(chosen["per_category"])
        print(f"  completion tokens per item: {chosen['tokens_per_item']:.0f}; the same recording as cascades:")
        for arm, c in chosen["cascades"].items():
            print(f"    {arm.split(': ', 1)[1]:<40}{100 * c['accuracy']:>5.0f}%  {c['tokens_per_item']:>5.0f} "
                  f"tokens/item  {c['points']:+.1f} pts [{c['low']:+.1f}, {c['high']:+.1f}] vs its greedy seat")
        others = chosen["seat_accuracies"][1:]
        print(f"  each seat alone: greedy {100 * chosen['seat_accuracies'][0]:.0f}%, samples "
              f"{100 * min(others, default=0):.0f}% to {100 * max(others, default=0):.0f}% (mean "
              f"{100 * sum(others) / max(len(others), 1):.0f}%); some seat right: "
              f"{100 * chosen['any_seat_right']:.0f}%")
        if later := chosen["drawn_later"]:
            print(f"  of those, the {later['items']} drawn after the choice: {100 * later['council']:.0f}% vs "
                  f"{100 * later['best_seat']:.0f}% ({later['points']:+.1f} pts [{later['low']:+.1f}, "
                  f"{later['high']:+.1f}])")
        if new := chosen.get("fresh"):
            print(f"  apart, on the {new['items']} `--fresh` items it was asked: {100 * new['council']:.0f}% vs its "
                  f"greedy seat {100 * new['best_seat']:.0f}% ({new['points']:+.1f} pts [{new['low']:+.1f}, "
                  f"{new['high']:+.1f}]), calls returned that fail their schema: {new['invalid_calls_returned']}")
            print_by_category(new["per_category"], "    ")
        print("  against its greedy seat, on the items the choice was not made on:")
        for arm, splits in chosen["splits"].items():
            print(f"    {arm.split(': ', 1)[1]}")
            for name, got in splits.items():
                if got:
                    label = f"{name} ({got['items']})"
                    print(f"      {label:<28}"
                          f"{100 * got['council']:>5.1f}% vs {100 * got['best_seat']:5.1f}%  {got['points']:+.1f} pts "
                          f"[{got['low']:+.1f}, {got['high']:+.1f}], {got['invalid_calls_returned']} failing schema")
    check = recovery_check(records, by_id)
    if check is not None:
        print(f"\nrecovery vs reference parser: {check}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "agents.json"
    doc = {"n_per_category": args.n, "more_per_category": args.more,
           "fresh_per_category": args.fresh,
           "seed": args.seed, "categories": categories,
           "models": models, "best": args.best, "samples": args.samples,
           "items": {name: len(recs) for name, recs in records.items()},
           "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
           "held_out": chosen, "recovery_check": check}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    sys.exit(main())
