"""Recording a council's answers to every item: each member's reply, tokens, latency and confidence.

Items are asked through the real engine with early stop (and any cascade) off, so every member's answer is
known; everything after that — strategies, extractors, early stop, cascades — is re-scored offline from
these records. Records can be appended to a JSONL file as they come, and a run resumes from it.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from council.errors import CouncilError
from council.evaluation.bfcl import BfclItem
from council.evaluation.dataset import Item
from council.paths import write_whole
from council.voting.engine import CouncilAnswer, CouncilEngine, QuorumError, RequestRejected, SeatOutcome
from council.voting.request import CouncilRequest


def _calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for call in calls:
        if not isinstance(call.get("function", {}), dict):
            raise ValueError("a tool call's `function` must be an object (`name`, `arguments`), as OpenAI sends it")
    return calls


# A member's probability of its answer: 0 is possible (the router rounds to 6 places, and a long reply's geometric
# mean can underflow), above 1 or below 0 is not.
Probability = Annotated[float, Field(ge=0, le=1)]


class MemberAnswer(BaseModel):
    """One member's reply to one item. Its numbers are bounded as a live council's are (a ballot in `council tally`
    too): a record edited by hand or merged from another tool with a NaN weight or a negative confidence is refused
    as not a record, where scoring it died in the vote."""

    # pydantic's JSON parser reads `NaN` and `Infinity`; no recorded number means anything as either.
    model_config = ConfigDict(allow_inf_nan=False)

    member: str
    model: str
    status: str  # ok | timeout | error
    text: str | None = None
    weight: float = Field(default=1.0, gt=0)
    latency_ms: float = Field(default=0.0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    prompt_tokens: int = Field(default=0, ge=0)
    confidence: Probability | None = None  # its probability of its answer, from token logprobs
    # Its mean token logprob, which the tie-break rule `logprob` reads; absent (not in `model_fields_set`) in records
    # made before it was kept, where the replay cannot break a tie as the live council did (`logprob_known`).
    logprob: float | None = Field(default=None, le=0)
    signals: dict[str, Probability] | None = None  # every confidence signal (answer, reply, tail)
    error: str | None = None
    # Why generation ended (`length`: cut off by max_tokens) and the seat's max_tokens; records from before they
    # were kept have neither (`score.with_caps` fills max_tokens from the policy).
    finish_reason: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    # The seat's tool calls as OpenAI sends them (`function.name`, `function.arguments` as a JSON string), when it
    # made any: a function-calling answer is its set of calls.
    tool_calls: Annotated[list[dict[str, Any]], AfterValidator(_calls)] | None = None
    recovered: bool = False  # the calls were written as text and recovered (`calls.with_recovered_calls`)

    @property
    def logprob_known(self) -> bool:
        """Whether the record says what the live tie-break `logprob` read (a value, or null: the member sent none)."""
        return "logprob" in self.model_fields_set

    @property
    def cut_off(self) -> bool:
        """The reply was cut off by max_tokens: the member said so, or (an old record) it used every token."""
        if self.finish_reason is not None:
            return self.finish_reason == "length"
        return self.max_tokens is not None and self.completion_tokens >= self.max_tokens


class ItemRecord(BaseModel):
    """Every member's answer to one item, with the reference and the item's wall time."""

    model_config = ConfigDict(allow_inf_nan=False)

    index: int
    line: int
    question: str
    reference: str
    wall_ms: float = Field(ge=0)
    answers: list[MemberAnswer]
    error: str | None = None  # why the council itself could not answer (its members' answers still count)
    # Function-calling data (BFCL): the item's id and category; `reference` is its ground truth as JSON.
    item_id: str | None = None
    category: str | None = None

    @property
    def complete(self) -> bool:
        """Every seat answered: none timed out or failed. A resumed run asks the other items again."""
        return bool(self.answers) and all(a.status == "ok" for a in self.answers)


def unanswered(records: Sequence[ItemRecord]) -> int:
    """Items no member answered at all: the council refused the item, or the router could not be asked."""
    return sum(not r.answers for r in records)


def with_every_seat(records: Sequence[ItemRecord], seats: Sequence[tuple[str, str]]) -> list[ItemRecord]:
    """The records with an item no member answered (`answers=[]`) given a failed answer from every seat, so that
    it is scored wrong for each member and the council rather than breaking the per-seat tables. The seats are
    those of the first record that has answers (the council that answered, which with `--url` is the router's),
    else `seats` (name, model): the policy's."""
    template = next(([(a.member, a.model) for a in r.answers] for r in records if r.answers), list(seats))
    return [r if r.answers else r.model_copy(update={"answers": [
        MemberAnswer(member=name, model=model, status="error", error=r.error or "no answer")
        for name, model in template]}) for r in records]


AnyItem = Item | BfclItem
Asker = Callable[[AnyItem], Awaitable[tuple[list[MemberAnswer], str | None]]]


def _answers(doc_members: Iterable[dict[str, Any]]) -> list[MemberAnswer]:
    return [MemberAnswer(member=m["name"], model=m.get("model", ""), status=m["status"], text=m.get("answer"),
                         weight=m.get("weight", 1.0), latency_ms=m.get("latency_ms", 0.0),
                         completion_tokens=m.get("completion_tokens", 0), prompt_tokens=m.get("prompt_tokens", 0),
                         confidence=m.get("confidence"), signals=m.get("confidence_signals"),
                         error=m.get("error"), finish_reason=m.get("finish_reason"),
                         tool_calls=m.get("tool_calls") or None,
                         # A router from before `logprob` was in the council object: left unknown, not null.
                         **({"logprob": m["logprob"]} if "logprob" in m else {})) for m in doc_members]


def _from_outcomes(outcomes: list[SeatOutcome]) -> list[MemberAnswer]:
    return [a.model_copy(update={"max_tokens": o.seat.sampling.max_tokens,
                                 "tool_calls": (o.reply.message or {}).get("tool_calls") or a.tool_calls})
            for a, o in zip(_answers(o.to_json() for o in outcomes), outcomes, strict=True)]


def item_body(item: AnyItem, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every member is asked: the item's messages (and its tools), with `extra` fields (`tool_choice`...)."""
    if isinstance(item, BfclItem):
        # No logprobs with tools: llama-server refuses them on a streamed request (seats sharing one `n` request
        # stream), and a call vote does not use them.
        return {"messages": item.messages, "tools": item.tools, **(extra or {})}
    # Logprobs are asked for so confidence votes can be scored offline from the same answers.
    return {"messages": item.messages, "logprobs": True, **(extra or {})}


def engine_asker(engine: CouncilEngine, extra: dict[str, Any] | None = None) -> Asker:
    """Ask through an engine of this process (members this command started)."""

    async def ask(item: AnyItem) -> tuple[list[MemberAnswer], str | None]:
        try:
            answer: CouncilAnswer = await engine.ask(CouncilRequest.of(item_body(item, extra), early_stop=False))
        except QuorumError as exc:
            return _from_outcomes(exc.outcomes), str(exc)
        except RequestRejected as exc:
            return [], str(exc)
        return _from_outcomes(answer.outcomes), None

    return ask


def http_asker(url: str, council: str, api_key: str | None, timeout: float,
               extra: dict[str, Any] | None = None) -> Asker:
    """Ask a running `council serve` (its council must not stop early: the request says so)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    async def ask(item: AnyItem) -> tuple[list[MemberAnswer], str | None]:
        body = {"model": council, **item_body(item, extra), "council": {"early_stop": False}}
        try:
            reply = await client.post("/v1/chat/completions", json=body)
        except httpx.HTTPError as exc:
            return [], f"cannot reach {url}: {type(exc).__name__}: {exc}"
        doc: Any = {}
        if reply.headers.get("content-type", "").startswith("application/json"):
            try:
                doc = reply.json()
            except ValueError:
                doc = None
        if reply.status_code != 200:
            error = doc.get("error") if isinstance(doc, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            return [], f"{reply.status_code}: {message or reply.text[:200]}"
        found = doc.get("council") if isinstance(doc, dict) else None
        members = found.get("members") if isinstance(found, dict) else None
        if not isinstance(members, list):
            # Another OpenAI-compatible server (llama-server, a proxy) answers without the seats' answers: every
            # item would be scored from nothing, so the run stops at the first such reply.
            raise NotACouncil(f"{url} is not a council router: its reply to item {item.index} has no "
                              f"`council.members` ({'not JSON' if doc is None else 'a chat completion without it'})")
        try:
            return _answers(members), None
        except (KeyError, TypeError, AttributeError, ValidationError) as exc:
            raise NotACouncil(f"{url} is not a council router: its reply to item {item.index} has members of "
                              f"another shape ({type(exc).__name__}: {exc})") from None

    return ask


class NotACouncil(CouncilError, ValueError):
    """`--url` answered, but not as a council router does (no `council.members`): the option is wrong."""


class RecordError(CouncilError, ValueError):
    """A records file that cannot be read or resumed from; the message is `file:line: what is wrong`."""


def _problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def _numbered_records(path: Path) -> list[tuple[int, ItemRecord]]:
    if not path.exists():
        return []
    if not path.is_file():
        raise RecordError(f"{path}: not a file")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise RecordError(f"{path}: not UTF-8 text") from None
    out = []
    # Lines end at "\n" alone: a reply may hold U+2028 or U+0085, which JSON keeps raw and `splitlines` would cut.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            out.append((number, ItemRecord.model_validate_json(line)))
        except ValidationError as exc:
            # A run killed while writing leaves a cut last line: named, so it can be removed by hand.
            raise RecordError(f"{path}:{number}: not a record ({_problem(exc)})") from None
    return out


def read_records(path: Path) -> dict[int, ItemRecord]:
    """Records already in a JSONL file (to resume a run), by item index; RecordError for a line that is not one."""
    return {r.index: r for _, r in _numbered_records(path)}


def resumable(path: Path, items: Sequence[AnyItem], seats: Sequence[Sequence[str]] = ()) -> dict[int, ItemRecord]:
    """The records of `path` that answer `items`, by index: what a resumed run does not ask again. RecordError for a
    line that is not a record, or a record of an item whose question is not the data's at that index (a recording
    of other data, whose answers would be scored against this data's references). With `seats` (the seat names the
    council may run with: as declared, its fallback), each record's answers are put in that order by name, and a
    record of other seats is refused (see `in_seat_order`). Each record carries the data's reference, not the one
    it was recorded with. A record where a seat did not answer (it timed out or failed) is not returned: the item is
    asked again, every seat (`record_items` replaces its line)."""
    by_index = {item.index: item for item in items}
    done: dict[int, ItemRecord] = {}
    for number, record in _numbered_records(path):
        item = by_index.get(record.index)
        if item is None or record.item_id != (item.id if isinstance(item, BfclItem) else None):
            continue  # not asked now, or (BFCL) another item at this index: asked again, as before
        if record.question != item.question:
            raise RecordError(f"{path}:{number}: item {record.index} is {_short(record.question)} here but "
                              f"{_short(item.question)} in the data (line {item.line}): a recording of other data?")
        # The data is what is scored against: an answer corrected since the recording counts (the members' answers
        # are not asked again), and the item's line is where it is now.
        record = record.model_copy(update={"reference": item.reference, "line": item.line})
        record, order, problem = in_seat_order(record, seats)
        if problem is not None:
            raise RecordError(f"{path}:{number}: item {record.index} was answered by {problem}: a recording of "
                              "another council? Record to another file, or score this one with the policy it was "
                              "made with")
        if order is not None:
            seats = [order]  # one file, one council: not the declared seats for one item and the fallback's for another
        if not record.complete:
            # A member's hiccup (a timeout, a process that died) is not what the run measures, and kept, it could
            # never be mended: the item is asked again. Every seat, as the live council asks them: seats of one
            # model share one request, and a seat asked alone would answer from another prefill.
            done.pop(record.index, None)
            continue
        done[record.index] = record
    return done


def _item_id(item: AnyItem) -> str | None:
    return item.id if isinstance(item, BfclItem) else None


def drop_asked_again(path: Path, items: Sequence[AnyItem], done: Mapping[int, ItemRecord]) -> dict[int, str]:
    """Rewrite `path` without the records of the items `done` lacks (`resumable` left out those where a seat did not
    answer): they are asked again and their new answers appended, one line per item, so a reader of the file never
    counts one twice. Returns the lines taken out, by item index. The other lines stay as they were; the file is
    replaced at once, keeping its mode (OSError when that fails)."""
    again = {(item.index, _item_id(item)) for item in items if item.index not in done}
    if not again or not path.is_file():
        return {}
    dropped: dict[int, str] = {}
    kept = []
    for line in re.findall(r"[^\n]*\n|[^\n]+\Z", path.read_text()):  # at "\n" alone, as `_numbered_records`
        record = ItemRecord.model_validate_json(line) if line.strip() else None
        if record is not None and (record.index, record.item_id) in again:
            dropped[record.index] = line.rstrip("\n")
        else:
            kept.append(line)
    if not dropped:
        return {}
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"  # a last line left unended (a cut run, a hand edit): the next append starts its own line
    write_whole(path, "".join(kept))  # its mode kept, the old file whole if the write fails
    return dict(sorted(dropped.items()))


def _seat_difference(recorded: Sequence[str], council: Sequence[str], mine: str = "the record",
                     theirs: str = "the council") -> str | None:
    """None when `recorded` names the council's seats (in any order); else the two lists and what differs."""
    if sorted(recorded) == sorted(council):
        return None
    only_recorded = [s for s in recorded if s not in council]
    only_council = [s for s in council if s not in recorded]
    differ = "; ".join([*([f"only in {mine}: {', '.join(only_recorded)}"] if only_recorded else []),
                        *([f"only in {theirs}: {', '.join(only_council)}"] if only_council else [])])
    whose = f"{theirs}'" if theirs.endswith("s") else f"{theirs}'s"
    return f"seats {', '.join(recorded)}, not {whose} {', '.join(council)} ({differ or 'a seat named twice'})"


def in_seat_order(record: ItemRecord, seats: Sequence[Sequence[str]]
                  ) -> tuple[ItemRecord, Sequence[str] | None, str | None]:
    """The record with its answers in the order of the first of `seats` (seat-name lists) that names the same seats,
    matched by name: scoring reads a seat's answer by its position (the per-member tables, cascade stages, ties
    broken by `order`), so a record of the same seats in another order would credit one seat with another's answers.
    Returns (record, the seat list it matched or None, why none matched or None). Answers of other seats are not
    guessed at: a seat missing from the record has no answer to vote with, and one the council lacks is not its."""
    if not record.answers or not seats:
        return record, None, None
    recorded = [a.member for a in record.answers]
    for order in seats:
        if _seat_difference(recorded, order) is None:
            by_name = {a.member: a for a in record.answers}
            same = recorded == list(order)
            return (record if same else record.model_copy(update={"answers": [by_name[s] for s in order]}), order,
                    None)
    closest = min(seats, key=lambda order: len(set(order) ^ set(recorded)))
    return record, None, _seat_difference(recorded, closest)


def in_one_seat_order(records: Sequence[ItemRecord], seats: Sequence[Sequence[str]]) -> list[ItemRecord]:
    """Every record's answers in one seat order: the first record that has answers sets it (the list of `seats`
    naming its seats, else its own: with `--url`, the router's council is what answered), and every later one is
    put in it by name (`in_seat_order`). RecordError naming the first item answered by other seats than the items
    before it (resumed answers of one council, new ones from a router running another)."""
    out: list[ItemRecord] = []
    fixed: Sequence[str] | None = None
    for record in records:
        if fixed is None and record.answers:
            fixed = in_seat_order(record, seats)[1] or [a.member for a in record.answers]
        if fixed is not None and record.answers:
            problem = _seat_difference([a.member for a in record.answers], fixed, "this item", "the earlier items")
            if problem is not None:
                raise RecordError(f"item {record.index} was answered by {problem}")
            record = in_seat_order(record, [fixed])[0]
        out.append(record)
    return out


def _short(text: str, size: int = 60) -> str:
    return repr(text if len(text) <= size else text[:size - 1] + "…")


def _ends_a_line(path: Path) -> bool:
    """Whether the file is empty or ends with a newline: what is appended then starts a line of its own."""
    with path.open("rb") as file:
        if file.seek(0, os.SEEK_END) == 0:
            return True
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


async def record_items(ask: Asker, items: Sequence[AnyItem], *, concurrency: int = 1, append_to: Path | None = None,
                       on_record: Callable[[ItemRecord], None] | None = None,
                       done: dict[int, ItemRecord] | None = None,
                       replacing: Mapping[int, str] | None = None) -> list[ItemRecord]:
    """Ask every item (`concurrency` at a time); items already in `append_to` are not asked again (`done`: those
    records, when the caller has read them already with `resumable`). The record in `append_to` of an item asked
    again (a seat did not answer) is taken out before anything is asked and the new answers appended (`replacing`:
    those lines, when the caller has taken them out with `drop_asked_again`)."""
    if done is None:
        done = resumable(append_to, items) if append_to is not None else {}
    if replacing is None:
        replacing = drop_asked_again(append_to, items, done) if append_to is not None else {}
    gate = asyncio.Semaphore(concurrency)
    sink = append_to.open("a") if append_to is not None else None
    # A file whose last record has no newline (a run cut between the record and its "\n", a hand edit) still reads;
    # the first new record must not be glued onto that line, which no later run could read.
    unended = append_to is not None and not _ends_a_line(append_to)

    async def one(item: Item) -> ItemRecord:
        nonlocal unended
        item_id = _item_id(item)
        if item.index in done:
            record = done[item.index]
        else:
            async with gate:
                started = time.monotonic()
                answers, error = await ask(item)
                record = ItemRecord(index=item.index, line=item.line, question=item.question,
                                    reference=item.reference, wall_ms=(time.monotonic() - started) * 1000,
                                    answers=answers, error=error,
                                    item_id=item_id,
                                    category=item.category if isinstance(item, BfclItem) else None)
            # An item no member answered (a dead process, a deadline on a busy machine) is not kept: a resumed
            # run asks it again. One asked again keeps the answers it had (this run scores what it got now).
            line = record.model_dump_json() if any(a.status == "ok" for a in record.answers) else \
                replacing.get(item.index)
            if sink is not None and line is not None:
                sink.write(("\n" if unended else "") + line + "\n")
                unended = False
                sink.flush()
        if on_record is not None:
            on_record(record)
        return record

    try:
        return list(await asyncio.gather(*(one(item) for item in items)))
    finally:
        if sink is not None:
            sink.close()
