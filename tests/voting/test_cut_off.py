"""Replies cut off by max_tokens: they vote only with an answer they stated, the ballot says why the others did
not, and the council's finish_reason says when its winner was cut off. (The engine runs in-process here with
members whose replies are given; tests/server/test_cut_off.py asks real models.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from council.policy.schema import CouncilConfig, Sampling
from council.voting.client import MemberReply, _Choice, reply_from_openai
from council.voting.engine import CouncilEngine, NoValidAnswer, Seat
from council.voting.extract import answer_source, extract, extract_cut

# What a small model wrote when asked "Compute 17 times 23. Show the partial products first, then the final answer."
# with max_tokens 12: the last number of its unfinished reasoning is no answer.
UNFINISHED = "17*20 = 320\n1"
FINISHED = "17*20 = 340 and 17*3 = 51, so 340 + 51 = 391.\n\nThe answer is 391."


@pytest.mark.parametrize(("text", "spec", "source"), [
    (UNFINISHED, "number", "read"),  # the last number of the text
    ("So 340 + 51 = 391", "number", "read"),  # `= N` closing the last line, and it may go on: "3912"
    (FINISHED, "number", "marked"),
    ("17 * 23 = \\boxed{391} because", "number", "marked"),
    ("Let me add them.\n#### 391", "number", "marked"),
    ("Final answer: 391\nCheck: 17", "number", "marked"),  # the marker wins over the last number
    ("Option A is 12, option B is 14.\nI choose B", "choice", "marked"),
    ("Looking at the options:\nB", "choice", "read"),  # a letter-only line: maybe the start of "Because"
    ("The answer is C. Because", "auto", "marked"),
    ("17*20 = 340\n17*3 = 51", "auto", "read"),
    ("The capital of France is Pa", "auto", "whole"),  # auto's free text: the whole reply, as `text` votes it
    ("abcdef", "text", "whole"),
    ('{"answer": 391}', "json:answer", "whole"),
    ("ok", "regex:(ok)", "whole"),
])
def test_where_an_answer_came_from(text: str, spec: str, source: str) -> None:
    assert answer_source(text, spec) == source
    # extract() itself is unchanged; a cut-off reply keeps only what it stated or what is whole.
    assert extract_cut(text, spec) == (None if source == "read" else extract(text, spec))
    assert extract(text, spec) is not None


def test_extract_of_the_issue_reply_is_unchanged_and_a_cut_one_abstains() -> None:
    assert extract(UNFINISHED, "number") == "1"  # what the base code voted with
    assert extract_cut(UNFINISHED, "number") is None
    assert extract_cut(FINISHED, "number") == "391"
    assert extract_cut(None, "number") is None


def test_finish_reason_is_kept_from_a_body_and_from_each_streamed_choice() -> None:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": UNFINISHED},
                         "finish_reason": "length"}], "usage": {"prompt_tokens": 30, "completion_tokens": 12}}
    assert reply_from_openai(body, 1.0).finish_reason == "length"
    assert reply_from_openai({"choices": [{"message": {"content": "x"}}]}, 1.0).finish_reason is None
    choice = _Choice()
    choice.add({"index": 1, "delta": {"content": "17*20"}, "finish_reason": None})
    choice.add({"index": 1, "delta": {}, "finish_reason": "length"})
    assert choice.reply(1.0, {"completion_tokens": 12}, {}, first=True).finish_reason == "length"


@dataclass
class Given:
    """A member whose reply is given (the engine's own logic is what is under test here)."""

    reply: MemberReply
    target: None = None

    async def complete(self, payload: dict[str, Any]) -> MemberReply:
        return self.reply

    async def choices(self, payload: dict[str, Any], n: int,
                      streaming: object = None) -> AsyncIterator[tuple[int, MemberReply]]:
        for i in range(n):
            yield i, self.reply


def council(*replies: tuple[str, str]) -> CouncilEngine:
    config = CouncilConfig.model_validate({"members": [{"model": "m"} for _ in replies],
                                           "vote": {"strategy": "majority", "extract": "number"}, "quorum": 1})
    seats = [Seat(f"c/{i}", i, "m", 1.0, Sampling(),
                  Given(MemberReply(status="ok", text=text, message={"role": "assistant", "content": text},
                                    completion_tokens=12, finish_reason=finish)))
             for i, (text, finish) in enumerate(replies)]
    return CouncilEngine("c", config, seats)


def ask(engine: CouncilEngine) -> Any:
    return asyncio.run(engine.ask({"messages": [{"role": "user", "content": "Compute 17 times 23."}]}))


def test_a_cut_off_reply_abstains_and_the_ballot_says_why() -> None:
    # Alone, the cut reply's "1" would tie the finished "391" and win on council order.
    answer = ask(council((UNFINISHED, "length"), (FINISHED, "stop")))
    doc = answer.council_json()
    assert doc["answer"] == "391" and doc["votes"] == {"391": 1.0}
    cut, finished = doc["members"]
    assert cut["extracted"] is None and cut["finish_reason"] == "length"
    assert cut["abstained"] == "cut off by max_tokens before a final answer"
    assert cut["status"] == "ok" and cut["answer"] == UNFINISHED  # the existing fields stay
    assert "abstained" not in finished and finished["finish_reason"] == "stop"
    assert answer.finish_reason == "stop"  # the winner finished


def test_a_cut_off_reply_that_stated_its_answer_votes_and_the_council_says_length() -> None:
    answer = ask(council(("The answer is 391. Let me check: 17*2", "length"), (UNFINISHED, "length")))
    assert answer.decision.answer == "391"
    assert answer.finish_reason == "length"  # its winning reply is unfinished text


def test_every_reply_cut_off_is_the_first_seats_unfinished_reply_with_finish_reason_length() -> None:
    """As a single model cut off answers (OpenAI's `length`, Anthropic's `max_tokens`): an agent's SDK acts on
    that. It was a 503 "raise max_tokens", which the SDKs read as an outage and retried twice, to the same end."""
    answer = ask(council((UNFINISHED, "length"), ("17*23 = 17*20 +", "length")))
    assert answer.finish_reason == "length" and answer.message == {"role": "assistant", "content": UNFINISHED}
    doc = answer.council_json()
    assert doc["answer"] is None and doc["votes"] == {} and doc["winner_members"] == [] and doc["speaker"] == "c/0"
    assert [m["abstained"] for m in doc["members"]] == ["cut off by max_tokens before a final answer"] * 2
    with pytest.raises(NoValidAnswer, match="1 of 2 replies were cut off by max_tokens") as mixed:
        ask(council((UNFINISHED, "length"), ("I'm sorry, I cannot help with that.", "stop")))
    with pytest.raises(NoValidAnswer, match=r"every seat abstained: c/0: no answer found by vote.extract \(number\); "
                       r"c/1: an empty reply$") as none:  # each seat's reason (was: no answer could be extracted)
        ask(council(("no number here", "stop"), ("", "stop")))
    assert not mixed.value.retry and not none.value.retry  # every seat answered: asking again ends alike
