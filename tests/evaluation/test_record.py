"""Resuming `council eval --record FILE` (in-process, no model asked): a line that is not a record, or a record of
other data, is refused naming the file and line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from council.evaluation.dataset import load_items
from council.evaluation.record import (
    AnyItem,
    ItemRecord,
    MemberAnswer,
    RecordError,
    in_one_seat_order,
    read_records,
    record_items,
    resumable,
)


def data(tmp_path: Path) -> list[AnyItem]:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in [
        {"question": "two and two?", "answer": "4"}, {"question": "three and three?", "answer": "6"}]))
    return list(load_items(path))


def recorded(item: AnyItem, answer: str = "4") -> str:
    return ItemRecord(index=item.index, line=item.line, question=item.question, reference=item.reference,
                      wall_ms=1.0, answers=[MemberAnswer(member="c/0", model="m", status="ok", text=answer)]
                      ).model_dump_json()


def test_a_record_file_cut_off_by_a_killed_run_names_its_line(tmp_path: Path) -> None:
    items = data(tmp_path)
    path = tmp_path / "r.jsonl"
    path.write_text(recorded(items[0]) + "\n" + recorded(items[1])[:40])  # killed while writing the second
    with pytest.raises(RecordError) as caught:
        resumable(path, items)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: not a record (") and "Invalid JSON" in message and "\n" not in message
    with pytest.raises(RecordError, match=r":2: not a record"):
        read_records(path)
    path.write_text(recorded(items[0]) + "\n\n" + json.dumps({"index": 1, "question": "q"}) + "\n")
    with pytest.raises(RecordError, match=r":3: not a record \(line: Field required\)"):
        resumable(path, items)


def test_a_recording_of_other_data_is_refused_not_reused(tmp_path: Path) -> None:
    items = data(tmp_path)
    other = ItemRecord.model_validate_json(recorded(items[1])).model_copy(update={"question": "what is 5 + 5?"})
    path = tmp_path / "r.jsonl"
    path.write_text(recorded(items[0]) + "\n" + other.model_dump_json() + "\n")
    with pytest.raises(RecordError) as caught:
        resumable(path, items)
    assert str(caught.value) == (f"{path}:2: item 1 is 'what is 5 + 5?' here but 'three and three?' in the data "
                                 "(line 2): a recording of other data?")
    asked: list[int] = []

    async def ask(item: AnyItem) -> tuple[list[MemberAnswer], str | None]:
        asked.append(item.index)
        return [MemberAnswer(member="c/0", model="m", status="ok", text="6")], None

    with pytest.raises(RecordError):  # the old answers are never scored against this data's references
        asyncio.run(record_items(ask, items, append_to=path))
    assert asked == []


def test_a_resumed_record_is_scored_against_the_datas_reference_now(tmp_path: Path) -> None:
    # The record's own reference was scored: an answer corrected in the data after a run counted for nothing.
    items = data(tmp_path)
    path = tmp_path / "r.jsonl"
    path.write_text(recorded(items[0]) + "\n" + recorded(items[1], "6") + "\n")
    (tmp_path / "data.jsonl").write_text("\n" + "".join(json.dumps(line) + "\n" for line in [
        {"question": "two and two?", "answer": "4"}, {"question": "three and three?", "answer": "7"}]))
    fixed = list(load_items(tmp_path / "data.jsonl"))
    done = resumable(path, fixed)
    assert [(r.reference, r.line) for r in done.values()] == [("4", 2), ("7", 3)]

    async def ask(item: AnyItem) -> tuple[list[MemberAnswer], str | None]:
        raise AssertionError("nothing is asked again")

    records = asyncio.run(record_items(ask, fixed, append_to=path, done=done))
    assert [r.reference for r in records] == ["4", "7"]
    assert [r.answers[0].text for r in records] == ["4", "6"]  # the answers stay as recorded


def seated(item: AnyItem, *seats: str) -> ItemRecord:
    return ItemRecord(index=item.index, line=item.line, question=item.question, reference=item.reference,
                      wall_ms=1.0, answers=[MemberAnswer(member=s, model="m", status="ok", text=s) for s in seats])


def test_a_resumed_record_is_matched_to_the_seats_by_name(tmp_path: Path) -> None:
    items = data(tmp_path)
    declared, fallback = ["c/0", "c/1", "c/2"], ["c/0", "c/1"]
    path = tmp_path / "r.jsonl"
    path.write_text(seated(items[0], "c/0", "c/1", "c/2").model_dump_json() + "\n"
                    + seated(items[1], "c/2", "c/0", "c/1").model_dump_json() + "\n")
    done = resumable(path, items, [declared, fallback])
    assert [[a.member for a in r.answers] for r in done.values()] == [declared, declared]
    assert [a.text for a in done[1].answers] == declared  # each answer stays its seat's
    # The fallback's seats resume too (a council that did not fit), but not beside the declared council's.
    path.write_text(seated(items[0], "c/1", "c/0").model_dump_json() + "\n")
    assert [a.member for a in resumable(path, items, [declared, fallback])[0].answers] == fallback
    path.write_text(seated(items[0], "c/0", "c/1").model_dump_json() + "\n"
                    + seated(items[1], "c/0", "c/1", "c/2").model_dump_json() + "\n")
    with pytest.raises(RecordError) as caught:
        resumable(path, items, [declared, fallback])
    assert str(caught.value).startswith(f"{path}:2: item 1 was answered by seats c/0, c/1, c/2, not the council's "
                                        "c/0, c/1 (only in the record: c/2): a recording of another council?")
    path.write_text(seated(items[0], "c/0", "x", "c/2").model_dump_json() + "\n")
    with pytest.raises(RecordError, match=r":1: item 0 was answered by seats c/0, x, c/2, not the council's c/0, "
                                          r"c/1, c/2 \(only in the record: x; only in the council: c/1\)"):
        resumable(path, items, [declared, fallback])


def test_new_answers_from_other_seats_than_the_resumed_ones_are_refused(tmp_path: Path) -> None:
    items = data(tmp_path)
    ordered = in_one_seat_order([seated(items[0], "b", "a"), seated(items[1], "a", "b")], [])
    assert [[a.member for a in r.answers] for r in ordered] == [["b", "a"], ["b", "a"]]  # the first record's order
    with pytest.raises(RecordError, match=r"^item 1 was answered by seats a, c, not the earlier items' b, a \(only "
                                          r"in this item: c; only in the earlier items: b\)$"):
        in_one_seat_order([seated(items[0], "b", "a"), seated(items[1], "a", "c")], [])


def test_an_item_a_seat_did_not_answer_is_asked_again_and_its_line_replaced(tmp_path: Path) -> None:
    items = data(tmp_path)
    path = tmp_path / "r.jsonl"
    hiccup = seated(items[1], "c/0", "c/1")
    hiccup.answers[1] = MemberAnswer(member="c/1", model="m", status="error", error="connection refused")
    path.write_text(seated(items[0], "c/0", "c/1").model_dump_json() + "\n" + hiccup.model_dump_json() + "\n")
    assert list(resumable(path, items)) == [0]
    replies: list[list[MemberAnswer]] = [
        [MemberAnswer(member="c/0", model="m", status="ok", text="6"),
         MemberAnswer(member="c/1", model="m", status="timeout")],  # a seat fails again
        [],  # then no seat answers at all (the router went away)
        [MemberAnswer(member=s, model="m", status="ok", text="6") for s in ("c/0", "c/1")],
    ]
    asked: list[int] = []

    async def ask(item: AnyItem) -> tuple[list[MemberAnswer], str | None]:
        asked.append(item.index)
        return replies[len(asked) - 1], None

    def statuses() -> list[tuple[int, list[str]]]:
        return [(r.index, [a.status for a in r.answers])
                for r in map(ItemRecord.model_validate_json, path.read_text().splitlines())]

    asyncio.run(record_items(ask, items, append_to=path))
    assert asked == [1] and statuses() == [(0, ["ok", "ok"]), (1, ["ok", "timeout"])]  # one line per item
    records = asyncio.run(record_items(ask, items, append_to=path))
    assert asked == [1, 1] and records[1].answers == []  # this run scores what it got: nothing
    assert statuses() == [(0, ["ok", "ok"]), (1, ["ok", "timeout"])]  # the file keeps what it had
    asyncio.run(record_items(ask, items, append_to=path))
    assert asked == [1, 1, 1] and statuses() == [(0, ["ok", "ok"]), (1, ["ok", "ok"])]
    asyncio.run(record_items(ask, items, append_to=path))
    assert asked == [1, 1, 1]


def test_answers_appended_after_a_last_line_without_a_newline_start_their_own_line(tmp_path: Path) -> None:
    # A last record without its "\n" (a run cut between the two, a file trimmed by hand) read fine, but the next
    # answers were appended onto that line: the file could no longer be read, the next run refused it.
    items = data(tmp_path)
    path = tmp_path / "r.jsonl"
    path.write_text(recorded(items[0]))

    async def ask(item: AnyItem) -> tuple[list[MemberAnswer], str | None]:
        return [MemberAnswer(member="c/0", model="m", status="ok", text="6")], None

    asyncio.run(record_items(ask, items, append_to=path))
    lines = path.read_text().split("\n")
    assert lines[0] == recorded(items[0]) and len(lines) == 3 and lines[2] == ""  # one record a line, ended
    assert [r.answers[0].text for r in read_records(path).values()] == ["4", "6"]
    # Where the unended last line is an item asked again, the line before it ends the kept part of the file.
    hiccup = seated(items[1], "c/0").model_copy(update={"answers": [
        MemberAnswer(member="c/0", model="m", status="timeout")]})
    path.write_text(recorded(items[0]) + "\n" + hiccup.model_dump_json())
    asyncio.run(record_items(ask, items, append_to=path))
    assert [[a.status for a in r.answers] for r in read_records(path).values()] == [["ok"], ["ok"]]
    assert path.read_text().count("\n") == 2 and path.read_text().endswith("\n")
    # And where it is kept, the item asked again starts a line of its own after it.
    path.write_text(hiccup.model_dump_json() + "\n" + recorded(items[0]))
    asyncio.run(record_items(ask, items, append_to=path))
    assert [(i, [a.status for a in r.answers]) for i, r in read_records(path).items()] == [(0, ["ok"]), (1, ["ok"])]
    assert path.read_text().splitlines()[0] == recorded(items[0]) and path.read_text().count("\n") == 2


def test_a_reply_holding_a_unicode_line_separator_is_one_record_line(tmp_path: Path) -> None:
    """JSON keeps U+2028, U+2029 and U+0085 raw in a string, and `splitlines` cut a line there: a recording whose
    reply held one (a model may write it) was refused as not a record by the next run."""
    items = data(tmp_path)
    path = tmp_path / "r.jsonl"
    reply = "four\u2028that is 4\x85\u2029done"

    async def ask(item: AnyItem) -> tuple[list[MemberAnswer], str | None]:
        return [MemberAnswer(member="c/0", model="m", status="ok", text=reply if item.index == 0 else "6")], None

    asyncio.run(record_items(ask, items[:1], append_to=path))
    assert "\u2028" in path.read_text()  # written raw, as JSON allows
    assert [r.answers[0].text for r in read_records(path).values()] == [reply]
    assert list(resumable(path, items)) == [0]
    # asked again (its seat failed): the rewrite keeps the other lines whole
    failed = seated(items[1], "c/0").model_copy(update={"answers": [MemberAnswer(member="c/0", model="m",
                                                                                 status="timeout")]})
    path.write_text(path.read_text() + failed.model_dump_json() + "\n")
    asyncio.run(record_items(ask, items, append_to=path))
    assert [r.answers[0].text for r in read_records(path).values()] == [reply, "6"]
