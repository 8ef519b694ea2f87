"""Evaluation data: one JSON object per line with `question` (or `messages`) and `answer`.

GSM8K's answers (`... #### 72`) are understood: the text after `####` is the reference. With `choices` (a list
of option texts) the question gets lettered options and the reference becomes a letter: `answer` may be the
letter, the option's index or the option's text.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from council.errors import CouncilError
from council.voting.request import last_user_text

LETTERS = string.ascii_uppercase[:10]


class DatasetError(CouncilError, ValueError):
    """A data file that cannot be used; the message is `file:line: what is wrong`."""


@dataclass(frozen=True)
class Item:
    index: int  # place in the file, from 0
    line: int
    messages: list[dict[str, Any]]
    reference: str  # the expected answer as written (the extractor normalises it)
    choices: tuple[str, ...] = ()

    @property
    def question(self) -> str:
        return last_user_text(self.messages)


def _reference(raw: object, choices: tuple[str, ...], where: str) -> str:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise DatasetError(f"{where}: `answer` must be a string or a number")
    text = str(raw)
    if "####" in text:  # GSM8K: reasoning, then `#### ANSWER`
        text = text.rsplit("####", 1)[1].strip()
    if not choices:
        if not text.strip():
            raise DatasetError(f"{where}: `answer` is empty")
        return text.strip()
    if isinstance(raw, int) and 0 <= raw < len(choices):
        return LETTERS[raw]
    if text.strip().upper() in LETTERS[: len(choices)]:
        return text.strip().upper()
    if text in choices:
        return LETTERS[choices.index(text)]
    raise DatasetError(f"{where}: `answer` {text!r} is not a letter, an index or the text of one of the choices")


def _item(doc: Any, index: int, line: int, where: str) -> Item:
    if not isinstance(doc, dict):
        raise DatasetError(f"{where}: each line must be a JSON object with `question` and `answer`")
    raw_choices = doc.get("choices")
    valid = isinstance(raw_choices, list) and 0 < len(raw_choices) <= len(LETTERS) and all(
        isinstance(c, str) for c in raw_choices)
    if raw_choices is not None and not valid:
        raise DatasetError(f"{where}: `choices` must be a list of 1 to {len(LETTERS)} strings")
    choices = tuple(raw_choices or ())
    if "answer" not in doc:
        raise DatasetError(f"{where}: missing `answer`")
    reference = _reference(doc["answer"], choices, where)
    if isinstance(doc.get("messages"), list) and doc["messages"]:
        messages = doc["messages"]
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise DatasetError(f"{where}: `messages` must be chat messages with a `role`")
    elif isinstance(doc.get("question"), str) and doc["question"].strip():
        question = doc["question"].strip()
        if choices:
            question += "\n\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
        messages = [{"role": "user", "content": question}]
    else:
        raise DatasetError(f"{where}: needs `question` (a string) or `messages` (a list of chat messages)")
    return Item(index=index, line=line, messages=messages, reference=reference, choices=choices)


def load_items(path: Path | str) -> list[Item]:
    """Every item of a JSONL file; DatasetError names the first bad line."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise DatasetError(f"{file}:1: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{file}:1: cannot read the file: {exc}") from None
    items = []
    for number, line in enumerate(text.split("\n"), 1):  # not `splitlines`: JSON keeps U+2028 raw
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            doc = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise DatasetError(f"{where}: not valid JSON: {exc}") from None
        items.append(_item(doc, len(items), number, where))
    if not items:
        raise DatasetError(f"{file}:1: the file has no items")
    return items


def sample(items: list[Item], n: int | None, seed: int | None) -> list[Item]:
    """The first `n` items, or with a `seed` a random sample of `n` (in file order); all without `n`."""
    if n is None or n >= len(items):
        return items
    if seed is None:
        return items[:n]
    return sorted(random.Random(seed).sample(items, n), key=lambda i: i.index)
