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

