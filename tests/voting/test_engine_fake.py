"""The engine's rules in-process, against scripted members (tests/voting/fakes.py): early stop, deadline, quorum,
cascades, refusals, and whose reply the council returns. The same rules against real llama-server processes are
in test_engine.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import pytest

from council.plan.planner import fallback_council
from council.policy.schema import CouncilConfig
from council.voting.engine import STRAGGLER_GRACE, QuorumError, RequestRejected
from council.voting.request import CouncilRequest, last_user_text
from tests.servers import until
from tests.voting.fakes import Say, council, engine_of

pytestmark = pytest.mark.anyio
SLOW = 30.0  # a member that would take this long: every test that passes ends long before it


def ask(question: str = "go", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}], **extra}


def statuses(answer: Any) -> list[str]:
    return [o.reply.status for o in answer.outcomes]


async def test_early_stop_cancels_the_straggler_once_no_vote_can_change_the_winner() -> None:
    engine, clients = council({"vote": {"strategy": "majority", "extract": "text"}},
                              Say("a"), Say("a", delay=0.01), Say("b", delay=SLOW))
    started = time.monotonic()
    answer = await engine.ask(ask())
    assert time.monotonic() - started < 5
    assert statuses(answer) == ["ok", "ok", "cancelled"] and answer.early_stop and not answer.degraded
    # closed a moment after the answer (STRAGGLER_GRACE), not left running
    await until(lambda: clients[2].cancelled == 1 and clients[2].in_flight == 0, 5, "the straggler's request closed")


async def test_a_straggler_that_ends_within_its_grace_is_not_closed() -> None:
    """Its reply was on its way when the vote was decided: the call ends as it would have (its connection kept),
    the answer did not wait for it, and the ballot still says `cancelled` (it did not vote)."""
    engine, clients = council({"vote": {"strategy": "majority", "extract": "text"}},
                              Say("a"), Say("a"), Say("b", delay=STRAGGLER_GRACE / 5))
    answer = await engine.ask(ask())
    assert statuses(answer) == ["ok", "ok", "cancelled"] and answer.decision.votes == {"a": 2.0}
    # Its own timer is due before the grace's, which was set later for longer: it ends first, on any machine.
    await until(lambda: clients[2].in_flight == 0, 5, "the straggler's call to end")
    assert clients[2].cancelled == 0 and len(clients[2].sent) == 1


def raises(payload: Mapping[str, Any]) -> Say:
    raise RuntimeError("Session is closed")  # what aiohttp says to a call on a stopped process's session


async def test_a_client_that_raises_fails_its_seat_at_once_and_never_stalls_the_vote() -> None:
    """A member client should reply, never raise; one that does (a fault) fails its own seat, with the reason,
    while the others vote: the council neither waits for its deadline nor answers with an internal error."""
    engine, _ = council({"vote": {"strategy": "majority", "extract": "text"}, "timeout": SLOW},
                        Say("a"), raises, Say("a", delay=0.01))
    answer = await asyncio.wait_for(engine.ask(CouncilRequest.of(ask(), early_stop=False)), SLOW / 3)
    assert statuses(answer) == ["ok", "error", "ok"] and answer.decision.votes == {"a": 2.0}
    assert answer.outcomes[1].reply.error == "the member's client failed: RuntimeError: Session is closed"
    alone, _ = council({"vote": {"extract": "text"}}, raises)  # one lane, run in the vote's own task
    with pytest.raises(QuorumError, match="only 0 of 1 seats answered"):  # a 503, not a 500
        await asyncio.wait_for(alone.ask(ask()), SLOW / 3)


async def test_no_early_stop_waits_for_every_member() -> None:
    engine, _ = council({"vote": {"strategy": "majority", "extract": "text"}},
                        Say("a"), Say("a"), Say("b", delay=0.05))
    answer = await engine.ask(CouncilRequest.of(ask(), early_stop=False))
    assert statuses(answer) == ["ok", "ok", "ok"] and not answer.early_stop
    assert answer.decision.votes == {"a": 2.0, "b": 1.0}


async def test_a_heavy_vote_still_out_keeps_the_council_waiting_until_the_deadline() -> None:
    engine, clients = council({"members": [{}, {}, {"weight": 3}], "vote": {"strategy": "weighted", "extract": "text"},
                               "timeout": "0.3s"}, Say("a"), Say("a"), Say("b", delay=SLOW))
    started = time.monotonic()
    answer = await engine.ask(ask())
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 5
    assert statuses(answer) == ["ok", "ok", "timeout"] and answer.degraded and answer.decision.answer == "a"
    assert "no answer within the council's 0.3s" in (answer.outcomes[2].reply.error or "")
    assert clients[2].cancelled == 1


async def test_a_one_member_council_past_its_deadline_closes_the_call_and_says_so() -> None:
    # One member is one lane, asked in the request's own task (no task or queue): the deadline must still close it.
    engine, clients = council({"vote": {"extract": "text"}, "timeout": "0.2s"}, Say("a", delay=SLOW))
    started = time.monotonic()
    with pytest.raises(QuorumError, match="only 0 of 1 seats answered") as caught:
        await engine.ask(ask())
    assert 0.15 <= time.monotonic() - started < 5
    assert statuses(caught.value) == ["timeout"] and clients[0].cancelled == 1 and clients[0].in_flight == 0


async def test_cancelling_a_one_member_council_is_a_cancel_not_a_timeout() -> None:
    # A client that goes away cancels the request's task: that must reach the member's call and leave as a cancel,
    # never be mistaken for the council's deadline.
    engine, clients = council({"vote": {"extract": "text"}, "timeout": "30s"}, Say("a", delay=SLOW))
    task = asyncio.create_task(engine.ask(ask()))
    deadline = time.monotonic() + 5
    while clients[0].in_flight == 0:
        assert time.monotonic() < deadline, "the member was never asked"
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clients[0].cancelled == 1 and clients[0].in_flight == 0


async def test_fewer_answers_than_the_quorum_is_an_error() -> None:
    engine, _ = council({"vote": {"extract": "text"}, "quorum": "all"},
                        Say("a"), Say("a"), Say(status="error", http_status=500))
    with pytest.raises(QuorumError, match="only 2 of 3 seats answered; the quorum is 3") as caught:
        await engine.ask(ask())
    assert [o.reply.status for o in caught.value.outcomes] == ["ok", "ok", "error"]


async def test_every_member_refusing_is_the_requests_fault() -> None:
    engine, clients = council({"vote": {"extract": "text", "cascade": {"first": 1}}},
                              Say(http_status=400), Say("a"))
    with pytest.raises(RequestRejected, match="every member rejected the request"):
        await engine.ask(ask())
    assert clients[1].sent == []  # a later stage would refuse it too: never asked


async def test_a_cascade_stage_that_agrees_skips_the_rest() -> None:
    engine, clients = council({"vote": {"extract": "text", "cascade": {"first": 2}}},
                              Say("a"), Say("a"), Say("b"))
    answer = await engine.ask(ask())
    assert statuses(answer) == ["ok", "ok", "skipped"] and (answer.stage, answer.stages) == (1, 2)
    assert clients[2].sent == []


async def test_a_cascade_stage_that_disagrees_asks_the_next() -> None:
    engine, clients = council({"vote": {"extract": "text", "cascade": [[0, 1], [2]]}},
                              Say("a"), Say("b"), Say("a"))
    answer = await engine.ask(ask())
    assert statuses(answer) == ["ok", "ok", "ok"] and (answer.stage, answer.stages) == (2, 2)
    assert answer.decision.answer == "a" and len(clients[2].sent) == 1


async def test_a_cascade_stage_with_an_abstaining_seat_does_not_agree() -> None:
    """A seat of the stage wrote no answer (no number here): one vote for "42" is not the two-seat agreement the
    stage asks for, so the next stage is asked (before, the votes cast were all that counted: 1 of 1 agreed)."""
    engine, clients = council({"vote": {"extract": "number", "cascade": {"first": 2}}},
                              Say("42"), Say("I cannot say"), Say("41"), Say("41"))
    answer = await engine.ask(ask())
    assert statuses(answer) == ["ok", "ok", "ok", "ok"] and (answer.stage, answer.stages) == (2, 2)
    assert answer.decision.answer == "41" and len(clients[2].sent) == 1


async def test_a_cascade_stage_with_a_failed_seat_does_not_agree() -> None:
    """The same for a seat that failed, where the quorum lets one answer through (`quorum: 1`)."""
    engine, clients = council({"quorum": 1, "vote": {"extract": "text", "cascade": {"first": 2}}},
                              Say("a"), Say(status="error", http_status=500), Say("b"), Say("b"))
    answer = await engine.ask(ask())
    assert statuses(answer) == ["ok", "error", "ok", "ok"] and answer.stage == 2
    assert answer.decision.answer == "b" and len(clients[3].sent) == 1


async def test_a_cascade_stage_agrees_by_the_share_of_its_seats() -> None:
    """`agreement: 0.6` of three seats: two that agree beside one that abstains decide the stage (2/3)."""
    engine, clients = council({"vote": {"extract": "number", "cascade": {"first": 3, "agreement": 0.6}}},
                              Say("7"), Say("7"), Say("no number"), Say("8"))
    answer = await engine.ask(ask())
    assert statuses(answer) == ["ok", "ok", "ok", "skipped"] and answer.stage == 1 and answer.decision.answer == "7"
    assert clients[3].sent == []


async def test_early_stop_reaches_across_stages() -> None:
    """Stage 2's first answer makes the leader unbeatable (3 > 1 + 1 still out): its straggler is cancelled."""
    engine, clients = council({"vote": {"strategy": "majority", "extract": "text", "cascade": {"first": 2}}},
                              Say("a"), Say("b"), Say("a"), Say("a", delay=0.01), Say("b", delay=SLOW))
    answer = await engine.ask(ask())
    assert statuses(answer) == ["ok", "ok", "ok", "ok", "cancelled"] and answer.early_stop and answer.stage == 2
    await until(lambda: clients[4].cancelled == 1, 5, "the straggler's request closed")


async def test_similarity_answers_with_the_medoids_own_reply() -> None:
    """The medoid (the reply most like the others) is the answer: its text, message and logprobs are returned,
    not those of the first member of the winning cluster (before: member 0's reply with member 1's answer)."""
    texts = ["the cat sat on the warm mat all day", "the cat sat on the mat", "the cat sat on the mat"]
    scripts = [Say(t, logprobs={"content": [{"token": str(i), "logprob": -0.1}]}) for i, t in enumerate(texts)]
    engine, _ = council({"vote": {"strategy": "similarity", "extract": "text"}}, *scripts)
    answer = await engine.ask(ask(logprobs=True))
    assert answer.decision.winner_members == ("c/0", "c/1", "c/2")
    assert answer.decision.speaker == "c/1" and answer.council_json()["speaker"] == "c/1"
    assert answer.message["content"] == texts[1]
    assert answer.logprobs == {"content": [{"token": "1", "logprob": -0.1}]}


async def test_judge_answers_with_the_reply_it_picked() -> None:
    def judge(payload: Mapping[str, Any]) -> Say:
        prompt = last_user_text(payload["messages"])
        if prompt.startswith("Several assistants answered"):
            assert "What is 6 times 7?" in prompt  # the question: the last user turn's text parts
            return Say("2")  # the second answer: member 1's wording of 42
        return Say("41")

    engine, _ = council({"vote": {"strategy": "judge", "judge": 2, "extract": "number"}},
                        Say("The answer is 42."), Say("6 x 7 = 42, so 42."), judge)
    question = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is 6 times 7?"}]}]}
    answer = await engine.ask(question)
    assert statuses(answer) == ["ok", "ok", "ok"] and answer.decision.votes == {"42": 2.0, "41": 1.0}
    assert answer.decision.answer == "42" and not answer.judge_fallback
    assert answer.decision.winner_members == ("c/0", "c/1") and answer.decision.speaker == "c/1"
    assert answer.message["content"] == "6 x 7 = 42, so 42."


def _judging(pick: Say) -> Any:
    """Seat 0's script: `pick` to the judge's prompt, 7 to the question."""
    def script(payload: Mapping[str, Any]) -> Say:
        return pick if last_user_text(payload["messages"]).startswith("Several assistants") else Say("7")
    return script


async def test_the_judge_answers_within_the_councils_deadline_or_majority_decides() -> None:
    """The judge's call ran without the council's deadline: a judge on a busy slot held the answer for as long as
    it took (`timeout: 1s` answered after 5 s). It is cancelled at the deadline (its slot freed) and the council
    falls back to majority, as when the judge fails."""
    engine, clients = council({"timeout": "1s", "vote": {"strategy": "judge", "judge": 0}},
                              _judging(Say("1", delay=SLOW)), Say("8"), Say("8"))
    started = time.monotonic()
    answer = await engine.ask(ask("q?"))
    assert time.monotonic() - started < 5
    assert answer.judge_fallback and answer.decision.answer == "8" and statuses(answer) == ["ok", "ok", "ok"]
    assert len(clients[0].sent) == 2 and clients[0].cancelled == 1 and clients[0].in_flight == 0
    judge = answer.council_json()["judge"]
    assert judge["member"] == "c/0" and judge["status"] == "timeout" and "within the council's 1s" in judge["error"]


async def test_the_judges_tokens_count_in_usage() -> None:
    """README: usage is every member's tokens; the judge's call is one of them (it was left out)."""
    engine, _ = council({"vote": {"strategy": "judge", "judge": 0}},
                        _judging(Say("pick 2")), Say("8"), Say("8"))
    answer = await engine.ask(ask("q?"))
    assert not answer.judge_fallback and answer.decision.answer == "8"
    members = sum(o.reply.prompt_tokens + o.reply.completion_tokens for o in answer.outcomes)
    assert members == 3 * (3 + 1)
    assert answer.usage()["total_tokens"] == members + 3 + 2  # the judge's prompt and its two words
    judge = answer.council_json()["judge"]
    assert judge["member"] == "c/0" and judge["status"] == "ok"
    assert (judge["prompt_tokens"], judge["completion_tokens"]) == (3, 2) and "error" not in judge


async def test_members_get_the_pass_through_fields_with_their_own_sampling() -> None:
    engine, clients = council({"members": [{"sampling": {"temperature": 0.2, "system": "be brief"}}, {}],
                               "vote": {"extract": "text"}}, Say("a"), Say("a"))
    body = {"messages": [{"role": "system", "content": "old"}, {"role": "user", "content": "q"}], "grammar": "g",
            "temperature": 1.0}
    await engine.ask(body)
    first, second = clients[0].sent[0], clients[1].sent[0]
    assert first["temperature"] == 0.2 and first["grammar"] == "g"
    # the member's system prompt is added to the request's, in one system message
    assert first["messages"] == [{"role": "system", "content": "old\n\nbe brief"}, {"role": "user", "content": "q"}]
    assert second == body and second is not body  # each seat's own copy; the request is never changed
    assert body["temperature"] == 1.0


async def test_a_fallback_council_with_a_cascade_answers() -> None:
    """The planner's fallback keeps 3 of 5 members; `first: 2` maps onto its seats (before this issue a list-form
    cascade naming seats 3 and 4 raised IndexError here: `council check` now refuses that, see test_policy)."""
    declared = CouncilConfig.model_validate({"members": [{"model": "big"}] * 5, "fallback": {"members": 3,
                                             "model": "small"}, "vote": {"extract": "text", "cascade": {"first": 2}}})
    fallback = fallback_council("c", declared)
    assert fallback is not None and fallback.stages() == [[0, 1], [2]]
    engine, _ = engine_of(fallback, Say("a"), Say("b"), Say("a"))
    answer = await engine.ask(ask())
    assert answer.decision.answer == "a" and (answer.stage, answer.stages) == (2, 2)
    assert [o.seat.model for o in answer.outcomes] == ["small"] * 3


def test_the_question_is_the_last_user_turns_text() -> None:
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "reply"},
                {"role": "user", "content": [{"type": "text", "text": "look at"},
                                             {"type": "image_url", "image_url": {"url": "data:x"}},
                                             {"type": "text", "text": "this"}]},
                {"role": "tool", "content": "t", "tool_call_id": "1"}]
    assert last_user_text(messages) == "look at this"
    assert last_user_text([{"role": "system", "content": "s"}]) == "" and last_user_text(None) == ""
    assert CouncilRequest.of({"messages": messages, "logprobs": True}).logprobs is True


@pytest.mark.parametrize("texts", [["a", "a", "b", "a", "b"], ["a", "b", "a", "b", "a"], ["a", "a", "a", "b", "b"]])
async def test_the_offline_replay_stops_where_the_live_council_does(texts: list[str]) -> None:
    """One stop rule: replaying recorded answers (`council eval`) hears the members the live engine heard."""
    from council.evaluation.record import ItemRecord, MemberAnswer
    from council.evaluation.score import Rule, early_stop

    delays = [0.01 * (i + 1) for i in range(len(texts))]  # members answer in council order, 10 ms apart
    engine, _ = council({"vote": {"strategy": "majority", "extract": "text"}},
                        *[Say(t, delay=d) for t, d in zip(texts, delays, strict=True)])
    live = await engine.ask(ask())
    record = ItemRecord(index=0, line=1, question="go", reference="a", wall_ms=0.0, answers=[
        MemberAnswer(member=f"c/{i}", model="m", status="ok", text=t, latency_ms=d * 1000)
        for i, (t, d) in enumerate(zip(texts, delays, strict=True))])
    answer, _, _, heard, early = early_stop(record, Rule("majority", "text"), engine.config.quorum_count())
    assert (answer, early) == (live.decision.answer, live.early_stop)
    assert heard == sum(o.reply.status == "ok" for o in live.outcomes)


async def test_the_quorum_error_counts_seats_and_calls_them_seats() -> None:
    """One member with `samples: 3` is three seats: the error said "only 1 of 3 members answered", a count of
    members the policy does not have."""
    engine, _ = council({"members": [{"samples": 3}], "vote": {"extract": "text"}},
                        Say("42"), Say(status="error"), Say(status="error"))
    with pytest.raises(QuorumError, match=r"^council c: only 1 of 3 seats answered; the quorum is 2$"):
        await engine.ask(ask())
    every, _ = council({"vote": {"extract": "regex:(\\d+)"}}, Say("no number"), Say("none either"))
    with pytest.raises(QuorumError, match=r"^council c: every seat abstained: c/0: no answer found by vote.extract "
                       r"\(regex:\(\\d\+\)\); c/1: "):
        await every.ask(ask())


async def test_a_fixed_seed_draws_anew_for_each_question_and_repeats_for_one_question() -> None:
    """Before: `seed: 1` with `samples: 3` sent seeds 1, 2, 3 on every question, so sample k replayed one sequence of
    random numbers everywhere (on BFCL two of eight such samples were right on 95 of 240 items, the rest on about
    160). Now the question is mixed in: other questions draw anew, the same question repeats its draws."""
    engine, clients = council({"members": [{"samples": 3, "sampling": {"temperature": 0.7, "seed": 1}}],
                               "vote": {"extract": "text"}}, Say("a"), Say("a"), Say("a"))
    for question in ("What is 2+2?", "Name a colour.", "What is 2+2?"):
        await engine.ask(ask(question))
    seeds = [[c.sent[i]["seed"] for c in clients] for i in range(3)]
    assert seeds[0] == seeds[2]  # a seeded council repeats itself on one question
    assert seeds[0] != seeds[1] and seeds[0] != [1, 2, 3]
    assert len(set(seeds[0])) == 3  # the samples of one question still differ


def test_salted_leaves_random_and_absent_seeds_alone() -> None:
    from council.voting.engine import question_salt, salted

    body = {"messages": [{"role": "user", "content": "x"}], "tools": [{"n": 10 ** 30}]}  # beyond orjson's ints
    salt = question_salt(body)
    assert salt == question_salt(dict(body)) and salt != question_salt({"messages": body["messages"]})
    assert salted(None, salt) is None and salted(-1, salt) == -1 and salted(True, salt) is True
    assert salted(0xFFFFFFFF - 1 - salt % 0xFFFFFFFF, salt) != 0xFFFFFFFF  # never llama-server's "random"


async def test_a_reply_the_extractor_cannot_read_abstains_and_the_others_vote() -> None:
    """A reply the extractor could not read (here a tool call whose `function` is a number, from a member asked
    without tools) raised out of the vote: a 500 for the whole council, or, for a seat asked alone, its seat
    reported as a timeout. It is that seat's abstention now, with the reason in its ballot."""
    garbage = Say(message={"role": "assistant", "content": None, "tool_calls": [{"function": 5}]})
    engine, _ = council({"vote": {"strategy": "majority", "extract": "text"}}, garbage, Say("a"), Say("a"))
    answer = await engine.ask(ask())
    assert answer.decision.answer == "a" and statuses(answer) == ["ok", "ok", "ok"]
    broken = answer.council_json()["members"][0]
    assert broken["abstained"].startswith("its reply could not be read: AttributeError"), broken
