"""The tool-call vote in-process, against scripted members (tests/voting/fakes.py): a call set is one answer
whatever the order of its calls, invalid calls abstain and say why, "no call" can win, per-argument votes,
recovered calls, and the ballot `council tally` re-runs. The same through a real `council serve` with real
llama-server members: tests/server/test_tool_calls.py."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from council.voting.client import MemberReply
from council.voting.engine import CouncilEngine, QuorumError
from council.voting.request import CouncilRequest
from council.voting.tools import (
    CUT_OFF,
    CUT_OFF_CALL,
    NO_CALL,
    ONE_CALL_ONLY,
    ONE_CALL_RULES,
    TOOL_RULES,
    Toolbox,
    read_answer,
    schema_problem,
    tool_instructions,
)
from tests.conftest import run_cli
from tests.servers import until
from tests.voting.fakes import FakeClient, Say, council

pytestmark = pytest.mark.anyio
SLOW = 30.0

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"], "additionalProperties": False}}}
PLACE = {"type": "function", "function": {
    "name": "locate", "parameters": {"type": "object",
                                     "properties": {"city": {"type": "string"}, "lat": {"type": "number"},
                                                    "lon": {"type": "number"}},
                                     "oneOf": [{"required": ["city"]}, {"required": ["lat", "lon"]}]}}}
TOOLS = [WEATHER, PLACE]


def ask(tools: list[dict[str, Any]] | None = None, question: str = "Weather in Paris and Rome?") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}], "tools": TOOLS if tools is None else tools}


def calls(*made: tuple[str, dict[str, Any] | str], delay: float = 0.0) -> Say:
    """A member answering with native tool calls (arguments as OpenAI sends them: a JSON string)."""
    return Say("", delay=delay, message={"role": "assistant", "content": None, "tool_calls": [
        {"id": f"m{i}", "type": "function",
         "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
        for i, (name, args) in enumerate(made)]})


def weather(city: str, **more: Any) -> tuple[str, dict[str, Any]]:
    return ("get_weather", {"city": city, **more})


def returned(answer: Any) -> list[tuple[str, dict[str, Any]]]:
    """The council's calls as a client reads them."""
    out = []
    for call in answer.message["tool_calls"]:
        assert call["type"] == "function" and call["id"].startswith("call_")
        out.append((call["function"]["name"], json.loads(call["function"]["arguments"])))
    return out


def member(answer: Any, index: int) -> dict[str, Any]:
    return answer.council_json()["members"][index]


async def test_parallel_calls_in_another_order_are_one_vote() -> None:
    engine, _ = council({"vote": {"strategy": "majority"}},
                        calls(weather("Paris"), weather("Rome")),
                        calls(weather("Rome"), ("get_weather", '{"city": "Paris"}'), weather("Rome")),  # a repeat
                        calls(weather("Paris")))
    answer = await engine.ask(CouncilRequest.of(ask(), early_stop=False))
    doc = answer.council_json()
    assert doc["agreement"] == 0.6667 and doc["winner_members"] == ["c/0", "c/1"]
    assert sorted(returned(answer), key=str) == [weather("Paris"), weather("Rome")]
    assert answer.finish_reason == "tool_calls" and answer.message["content"] is None
    ids = [c["id"] for c in answer.message["tool_calls"]]
    assert len(set(ids)) == 2 and "m0" not in ids  # fresh ids, not a member's


async def test_an_undeclared_function_or_invalid_arguments_never_win_and_the_ballot_says_why() -> None:
    engine, _ = council({"vote": {"strategy": "majority"}},
                        calls(("delete_files", {"path": "/"})),
                        calls(("delete_files", {"path": "/"})),
                        calls(weather("Paris", unit="kelvin")),
                        calls(("get_weather", '{"city": "Paris"')),  # not JSON
                        calls(weather("Paris")))
    answer = await engine.ask(ask())
    assert returned(answer) == [weather("Paris")] and answer.council_json()["votes"] == {
        'get_weather({"city":"Paris"})': 1.0}
    ballot = engine.ballots.get(answer.id)
    assert ballot is not None
    verdicts = [[c["verdict"] for c in a["calls"]] for a in ballot["answers"]]
    assert verdicts[0] == ["'delete_files' is not a declared tool (declared: get_weather, locate)"]
    assert verdicts[2] == ["arguments fail get_weather's schema at $.unit: 'kelvin' is not one of ['c', 'f']"]
    assert verdicts[3] == ["arguments are not valid JSON"] and verdicts[4] == ["valid"]
    assert ballot["answers"][0]["abstained"].startswith("invalid tool call: delete_files: ")
    assert member(answer, 0)["extracted"] is None and member(answer, 0)["abstained"]
    assert ballot["tools"] == TOOLS  # what `council tally` re-checks the calls against


async def test_when_every_call_is_invalid_the_error_says_why() -> None:
    engine, _ = council({"vote": {"strategy": "majority"}}, calls(("delete_files", {})), calls(weather("Paris",
                                                                                                     unit=3)))
    with pytest.raises(QuorumError, match=r"every seat abstained: c/0: invalid tool call: delete_files: "
                                          r".*c/1: invalid tool call: get_weather: arguments fail"):
        await engine.ask(ask())


async def test_no_call_wins_when_most_seats_make_none_and_the_council_answers_with_text() -> None:
    engine, _ = council({"vote": {"strategy": "majority", "extract": "number"}},
                        calls(weather("Paris")),
                        Say("I cannot tell the time of day with these tools."),
                        Say("Sorry, no tool for that. It is 12 o'clock somewhere, the answer is 12."),
                        Say("12"))
    answer = await engine.ask(ask(question="What time is it?"))
    assert answer.decision.answer == NO_CALL and answer.decision.votes == {'get_weather({"city":"Paris"})': 1.0,
                                                                          NO_CALL: 3.0}
    assert "tool_calls" not in answer.message and answer.finish_reason == "stop"
    # the no-call seats' texts voted among themselves with the council's extractor: "12" beat no number
    assert answer.council_json()["speaker"] == "c/2"
    assert answer.message["content"] == "Sorry, no tool for that. It is 12 o'clock somewhere, the answer is 12."


async def test_free_text_that_agrees_with_no_other_is_the_first_no_call_seats_not_the_quickest() -> None:
    """After an agent's tool results every seat answers in its own words: each reply was a vote of its own, and
    the tie went to the quickest, the shortest: a sample restating the question beat the greedy seat's answer.
    Without a majority among the no-call texts the first no-call seat speaks (where most agree, they do)."""
    answer_text = "The distance from Berlin to Munich by road is 584 km."
    engine, _ = council({"vote": {"strategy": "majority"}},
                        Say(answer_text, delay=0.05), Say("The road distance is 584 km.", delay=0.03),
                        Say("How far is it from Berlin to Munich by road?"))
    asked = CouncilRequest.of(ask(question="How far is it from Berlin to Munich by road?"), early_stop=False)
    answer = await engine.ask(asked)  # every seat answers (early stop would close the slowest, here the first)
    assert answer.decision.answer == NO_CALL and answer.message["content"] == answer_text
    assert answer.council_json()["speaker"] == "c/0"
    # A first no-call seat that wrote nothing never speaks: the first with something to say does.
    silent, _ = council({"vote": {"strategy": "majority"}}, Say(""), Say(answer_text), Say("How far is it?"))
    spoken = await silent.ask(CouncilRequest.of(ask(question="How far?"), early_stop=False))
    assert spoken.message["content"] == answer_text and spoken.council_json()["speaker"] == "c/1"
    same = Say("Berlin to Munich: 584 km.")
    agreeing, _ = council({"vote": {"strategy": "majority"}}, Say(answer_text, delay=0.05), same, same)
    agreed = await agreeing.ask(CouncilRequest.of(ask(question="How far?"), early_stop=False))
    assert agreed.message["content"] == "Berlin to Munich: 584 km."


async def test_a_call_written_as_text_is_recovered_and_marked_unless_the_policy_says_no() -> None:
    fenced = '```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n  }\n}\n```'
    for recover in (True, False):
        engine, _ = council({"vote": {"strategy": "majority", "recover_tool_calls": recover}},
                            Say(fenced), Say(fenced), calls(weather("Paris")))
        answer = await engine.ask(ask())
        first = member(answer, 0)
        if recover:
            assert returned(answer) == [weather("Paris")] and answer.council_json()["agreement"] == 1.0
            assert first["recovered"] is True and first["calls"] == [
                {"name": "get_weather", "arguments": {"city": "Paris"}, "verdict": "valid", "recovered": True}]
            assert "recovered" not in member(answer, 2)  # its calls were the server's own
        else:  # the two fenced replies are text: "no call" wins, with the text as it came
            assert answer.decision.answer == NO_CALL and answer.message["content"] == fenced
            assert "tool_calls" not in answer.message and first["calls"] == [] and "recovered" not in first


async def test_calls_in_the_shapes_sampled_seats_write_vote_as_calls() -> None:
    """Qwen2.5-Coder-1.5B's sampled seats on BFCL (bench/agents.py): the template's <tools> tags and its escaped
    braces copied. Read as text they would be two votes for "no call", with the mangled JSON as the answer."""
    tagged = ('<tools>\n{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}\n'
              "</tools>")
    doubled = '{{"name": "get_weather", "arguments": {"city": "Paris"}}}'
    engine, _ = council({"vote": {"strategy": "majority"}}, Say(tagged), Say(doubled), Say("It is sunny in Paris."))
    answer = await engine.ask(CouncilRequest.of(ask(), early_stop=False))
    assert returned(answer) == [weather("Paris")]
    assert member(answer, 0)["recovered"] is True and member(answer, 1)["recovered"] is True
    assert member(answer, 2)["calls"] == []


async def test_per_argument_vote_takes_each_value_most_seats_give() -> None:
    # three sets, a tie: it goes to the quickest seat (`tie_break`: weight, latency, order), scripted to be the
    # first; left to chance (every seat at once), a pause of the process could make another seat the quickest
    replies = (calls(weather("Paris", unit="c")), calls(weather("Paris", unit="f"), delay=0.05),
               calls(weather("Rome", unit="f"), delay=0.1))
    whole, _ = council({"vote": {"strategy": "majority"}}, *replies)
    assert returned(await whole.ask(ask())) == [weather("Paris", unit="c")]
    parts, _ = council({"vote": {"strategy": "majority", "tools": "per_argument"}}, *replies)
    answer = await parts.ask(ask())
    assert returned(answer) == [weather("Paris", unit="f")]  # no seat made this call; each value has 2 of 3
    shown = {(a["argument"], json.dumps(a["value"])): a["votes"] for a in answer.council_json()["tool_vote"][
        "arguments"]}
    assert shown == {("city", '"Paris"'): {'"Paris"': 2.0, '"Rome"': 1.0},
                     ("unit", '"f"'): {'"c"': 1.0, '"f"': 2.0}}


async def test_with_tie_break_order_a_tied_call_vote_goes_to_the_first_seat_not_the_quickest() -> None:
    """The agents policy lists its greedy seat first and breaks ties by `order`: where the calls tie, the council
    answers with the greedy seat's, however long it took (by default the group whose seat finished first wins)."""
    replies = (calls(weather("Paris"), delay=0.1), calls(weather("Rome")), calls(weather("Paris"), delay=0.1),
               calls(weather("Rome")))
    quickest, _ = council({"vote": {"strategy": "majority"}}, *replies)
    assert returned(await quickest.ask(ask())) == [weather("Rome")]
    first, _ = council({"vote": {"strategy": "majority", "tie_break": ["order"]}}, *replies)
    answer = await first.ask(ask())
    assert returned(answer) == [weather("Paris")]
    assert answer.council_json()["tie_broken_by"] == "order"


async def test_per_argument_aligns_parallel_calls_by_their_arguments_not_their_order() -> None:
    replies = (calls(weather("Paris", unit="c"), weather("Rome", unit="f")),
               calls(weather("Rome", unit="c"), weather("Paris", unit="c")),  # the other order
               calls(weather("Paris", unit="f"), weather("Rome", unit="c")),
               Say("No idea."))
    engine, _ = council({"vote": {"strategy": "majority", "tools": "per_argument"}}, *replies)
    answer = await engine.ask(ask())
    assert sorted(returned(answer), key=str) == [weather("Paris", unit="c"), weather("Rome", unit="c")]
    assert answer.council_json()["votes"] == {"get_weather\nget_weather": 3.0, NO_CALL: 1.0}  # the shapes


async def test_per_argument_never_returns_a_composed_call_that_fails_its_schema() -> None:
    # lon: a three-way tie that "absent" wins; the set vote it falls back to is a three-way tie too, which goes to
    # the quickest seat: scripted to be the first (left to chance, a pause made the third the quickest in CI)
    replies = (calls(("locate", {"city": "Paris"})), calls(("locate", {"lat": 1, "lon": 2}), delay=0.05),
               calls(("locate", {"lat": 1, "lon": 3}), delay=0.1))
    engine, _ = council({"vote": {"strategy": "majority", "tools": "per_argument"}}, *replies)
    answer = await engine.ask(ask())
    assert returned(answer) == [("locate", {"city": "Paris"})]  # {"lat": 1} alone fails oneOf: the set vote's
    assert "composed calls fail their schema" in answer.council_json()["tool_vote"]["fallback"]


async def test_per_argument_stops_early_only_on_a_majority_of_every_vote() -> None:
    config = {"members": [{"weight": 2.5}, {}, {}, {}], "vote": {"strategy": "weighted"}}
    replies = (calls(weather("Paris", unit="c")), calls(weather("Paris", unit="f")),
               calls(weather("Rome", unit="f")), calls(weather("Oslo", unit="f"), delay=0.2))
    whole, clients = council(config, *replies)
    answer = await whole.ask(ask())
    assert answer.early_stop  # 2.5 > 1 + 1 left: no single set can catch up
    await until(lambda: clients[3].cancelled == 1, 5, "the slow seat's request closed")
    parts, clients = council({**config, "vote": {"strategy": "weighted", "tools": "per_argument"}}, *replies)
    answer = await parts.ask(ask())
    # 1 + 1 + 1 could outvote the 2.5 on `unit`: the slow seat is waited for, and does
    assert not answer.early_stop and clients[3].cancelled == 0
    assert returned(answer) == [weather("Paris", unit="f")]


async def test_validators_are_compiled_once_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    from jsonschema import validators

    compiled: list[object] = []
    real = validators.validator_for

    ours = [t["function"]["parameters"] for t in TOOLS]

    def counting(schema: Any, default: Any = None) -> Any:
        if any(schema is s for s in ours):  # (checking a schema looks up its metaschema's validator too)
            compiled.append(schema)
        return real(schema, default=default)

    monkeypatch.setattr(validators, "validator_for", counting)
    engine, _ = council({"vote": {"strategy": "majority"}, "members": [{"samples": 5}]},
                        *[calls(weather("Paris"), ("locate", {"city": "Paris"}))] * 5)
    await engine.ask(ask())
    assert len(compiled) == 2  # one per tool, not one per seat
    await engine.ask(ask())
    assert len(compiled) == 4  # and anew per request: another request may declare other schemas


def test_a_reply_cut_off_while_writing_a_call_abstains() -> None:
    box = Toolbox(TOOLS)
    cut = read_answer({}, '```json\n{"name": "get_weather", "argu', "length", box)
    assert cut.vote is None and cut.abstained == CUT_OFF_CALL
    # Prose cut off is unfinished too (it may have been leading up to its calls): "no call" only when it ended.
    prose = read_answer({}, "To answer, I will first look up the weather in Paris, then", "length", box)
    assert prose.vote is None and prose.abstained == CUT_OFF
    assert read_answer({}, "The weather in Paris is usually mild.", "stop", box).vote == NO_CALL


async def test_seats_cut_off_before_they_called_never_outvote_those_that_called() -> None:
    """Three seats still explaining at max_tokens are no "no call" majority over two that made the call."""
    cut = Say("To find the weather in Paris, I need to call get_weather. Let me think about the unit first",
              finish_reason="length")
    engine, _ = council({"vote": {"strategy": "majority"}}, cut, cut, cut, calls(weather("Paris")),
                        calls(weather("Paris")))
    answer = await engine.ask(CouncilRequest.of(ask(), early_stop=False))
    assert returned(answer) == [weather("Paris")] and answer.council_json()["votes"] == {
        'get_weather({"city":"Paris"})': 2.0}
    assert member(answer, 0)["abstained"] == CUT_OFF and member(answer, 0)["finish_reason"] == "length"
    # Every seat cut off: as one model cut off answers (its unfinished text, finish_reason length), not an error.
    engine, _ = council({"vote": {"strategy": "majority"}}, cut, cut)
    answer = await engine.ask(ask())
    assert answer.finish_reason == "length" and answer.message["content"] == cut.text
    assert "tool_calls" not in answer.message


def test_an_argument_equal_to_its_declared_default_is_left_out() -> None:
    """The tool gets its default either way: the call is the one without it, and a default the schema's own type
    refuses (`"default": null` on a string, as BFCL's tools declare) is no invalid call."""
    schema = {"type": "object", "required": ["city", "days"],
              "properties": {"city": {"type": "string"}, "days": {"type": "integer", "default": 1},
                             "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
                             "station": {"type": "string", "default": None},
                             "window": {"type": "object", "properties": {"hours": {"type": "number", "default": 24}}}}}
    box = Toolbox([{"type": "function", "function": {"name": "forecast", "parameters": schema}}])
    call = box.call("forecast", '{"city": "Paris", "days": 1, "unit": "c", "station": null, "window": {"hours": 24.0}}')
    assert call.valid and call.arguments == {"city": "Paris", "days": 1, "window": {}}  # `days` is required: kept
    assert call.defaulted == ("unit", "station", "window.hours") and call.to_json()["defaulted"] == [
        "unit", "station", "window.hours"]
    assert call.key == box.call("forecast", {"city": "Paris", "days": 1, "window": {}}).key
    other = box.call("forecast", {"city": "Paris", "days": 1, "unit": "f", "station": "LFPG"})
    assert other.valid and other.arguments == {"city": "Paris", "days": 1, "unit": "f", "station": "LFPG"}
    assert other.defaulted == () and "defaulted" not in other.to_json()
    # a value that only looks like the default is another value: "c " is not "c"
    assert box.call("forecast", {"city": "Paris", "days": 1, "unit": "c "}).verdict.startswith("arguments fail")
    # where leaving a default out would break the schema (an argument that requires it), the call stands as written
    tied = {**schema, "dependentRequired": {"station": ["unit"]}}
    box = Toolbox([{"type": "function", "function": {"name": "forecast", "parameters": tied}}])
    whole = box.call("forecast", {"city": "Paris", "days": 1, "unit": "c", "station": "LFPG"})
    assert whole.valid and whole.arguments["unit"] == "c" and whole.defaulted == ()


async def test_seats_that_differ_only_by_a_default_vote_together_and_the_call_returned_leaves_it_out() -> None:
    parameters = {"type": "object", "required": ["city"],
                  "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"],
                                                                      "default": "c"},
                                 "station": {"type": "string", "default": None}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": parameters}}]
    engine, _ = council({"vote": {"strategy": "majority"}},
                        calls(weather("Rome")), calls(weather("Rome")),
                        calls(weather("Paris")), calls(weather("Paris", unit="c")),
                        calls(weather("Paris", station=None)))  # null: the declared default, not a string
    answer = await engine.ask(CouncilRequest.of(ask(tools), early_stop=False))
    assert answer.council_json()["votes"] == {'get_weather({"city":"Paris"})': 3.0,
                                              'get_weather({"city":"Rome"})': 2.0}
    assert returned(answer) == [weather("Paris")]
    ballot = engine.ballots.get(answer.id)
    assert ballot is not None and ballot["answers"][4]["calls"][0]["defaulted"] == ["station"]


def test_a_tool_whose_parameters_are_no_schema_fails_its_calls_with_the_reason() -> None:
    box = Toolbox([{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}])
    assert box.call("f", "{}").verdict.startswith("f's parameters are not a valid JSON Schema: ")
    # Not an object at all (a hand-made ballot): a number was a TypeError from jsonschema, not a verdict.
    for parameters in (5, 1.5, "x", [1]):
        box = Toolbox([{"type": "function", "function": {"name": "f", "parameters": parameters}}])
        assert box.call("f", "{}").verdict.startswith("f's parameters are not a valid JSON Schema: "), parameters


TWO_WRITTEN = Say('[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                  '{"name": "get_weather", "arguments": {"city": "Rome"}}]')


async def test_with_parallel_tool_calls_false_a_seat_answers_with_its_first_call() -> None:
    """llama-server holds a member's native calls to one under `parallel_tool_calls: false`, but calls recovered
    from text bypassed it: the council returned two. As OpenAI promises (one call an answer, the agent asks again
    for the next) and as the server's own enforcement leaves it, a seat's first call is its answer; the others are
    listed as `dropped`, with why."""
    engine, _ = council({"vote": {"strategy": "majority"}}, TWO_WRITTEN, TWO_WRITTEN, Say("I don't know"))
    answer = await engine.ask({**ask(), "parallel_tool_calls": False})
    assert returned(answer) == [weather("Paris")] and answer.finish_reason == "tool_calls"
    seat = member(answer, 0)
    assert [c["arguments"] for c in seat["calls"]] == [{"city": "Paris"}] and "abstained" not in seat
    assert seat["dropped"] == [{"name": "get_weather", "arguments": {"city": "Rome"}, "verdict": ONE_CALL_ONLY,
                                "recovered": True}]
    assert engine.ballots.get(answer.id)["parallel_tool_calls"] is False  # `council tally` re-runs it so
    # A provider's native calls are held to it too; a repeated call is one call.
    engine, _ = council({"vote": {"strategy": "majority"}},
                        calls(weather("Rome"), weather("Rome"), weather("Paris")), calls(weather("Rome")))
    answer = await engine.ask({**ask(), "parallel_tool_calls": False})
    assert returned(answer) == [weather("Rome")] and answer.council_json()["agreement"] == 1.0
    assert [(c["arguments"], c["verdict"]) for c in member(answer, 0)["dropped"]] == [  # the repeat too
        ({"city": "Rome"}, ONE_CALL_ONLY), ({"city": "Paris"}, ONE_CALL_ONLY)]
    # Parallel calls allowed (unset, or true): every call is the answer, as before.
    engine, _ = council({"vote": {"strategy": "majority"}}, TWO_WRITTEN, TWO_WRITTEN, Say("I don't know"))
    answer = await engine.ask(ask())
    assert returned(answer) == [weather("Paris"), weather("Rome")] and "dropped" not in member(answer, 0)


async def test_tally_re_runs_a_tool_call_ballot(tmp_path: Path) -> None:
    fenced = '```json\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n```'
    engine: CouncilEngine
    engine, _ = council({"vote": {"strategy": "majority", "tools": "set"}},
                        calls(weather("Paris"), weather("Rome")), calls(weather("Rome"), weather("Paris")),
                        Say(fenced), Say(fenced), Say(fenced), calls(("delete_files", {})))
    answer = await engine.ask(CouncilRequest.of(ask(), early_stop=False))
    live = engine.ballots.get(answer.id)
    assert live is not None and live["answer"] == 'get_weather({"city":"Rome"})'
    path = tmp_path / "ballot.json"
    path.write_text(json.dumps(live))
    started = time.monotonic()
    result = run_cli("tally", str(path))
    assert result.returncode == 0, result.stderr
    offline = json.loads(result.stdout)
    assert time.monotonic() - started < 120
    assert offline["answer"] == live["answer"] and offline["votes"] == live["votes"]
    assert offline["tool_vote"]["calls"] == [{"name": "get_weather", "arguments": {"city": "Rome"},
                                              "verdict": "valid", "recovered": True}]
    assert offline["members"]["c/2"]["recovered"] is True
    assert offline["members"]["c/5"]["abstained"].startswith("invalid tool call: delete_files: 'delete_files' is")
    # without recovery the fenced replies are text, and "no call" wins
    plain = json.loads(run_cli("tally", str(path), "--no-recover-tool-calls").stdout)
    assert plain["votes"] == {NO_CALL: 3.0, 'get_weather({"city":"Paris"})\nget_weather({"city":"Rome"})': 2.0}
    assert plain["answer"] == NO_CALL and plain["tool_vote"]["calls"] == [] and plain["speaker"] == "c/2"
    bad = {**live, "tools": "get_weather"}
    path.write_text(json.dumps(bad))
    result = run_cli("tally", str(path))
    assert result.returncode == 2 and "`tools` must be a list" in result.stderr and "Traceback" not in result.stderr


async def test_tool_choice_decides_what_may_win() -> None:
    fenced = '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'
    replies = (calls(weather("Paris")), calls(("locate", {"city": "Paris"})), Say("No."), Say("No."))
    engine, _ = council({"vote": {"strategy": "majority"}}, *replies)
    assert (await engine.ask(CouncilRequest.of(ask(), early_stop=False))).decision.answer == NO_CALL
    # `required`: a seat that calls nothing abstains, and says why
    required = await engine.ask(CouncilRequest.of({**ask(), "tool_choice": "required"}, early_stop=False))
    assert "tool_calls" in required.message and member(required, 2)["abstained"] == (
        "made no call, though tool_choice requires one")
    # a named function: members get only that tool (`request.for_members`), so a call to another is undeclared
    named = await engine.ask(CouncilRequest.of(
        {**ask(), "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, early_stop=False))
    assert returned(named) == [weather("Paris")] and named.council_json()["votes"] == {
        'get_weather({"city":"Paris"})': 1.0}
    assert member(named, 1)["calls"][0]["verdict"] == "'locate' is not a declared tool (declared: get_weather)"
    # `none`: the answer is text, voted on as text (a call written as text stays text)
    text, _ = council({"vote": {"strategy": "majority", "extract": "text"}}, Say(fenced), Say(fenced), Say("No."))
    answer = await text.ask({**ask(), "tool_choice": "none"})
    assert "tool_calls" not in answer.message and answer.message["content"] == fenced
    assert answer.tool_calls is None and "calls" not in member(answer, 0)


async def test_the_council_adds_its_tool_instructions_after_the_agents_system_message() -> None:
    agent = {"messages": [{"role": "system", "content": "You are a travel agent."},
                          {"role": "user", "content": "Weather in Paris and Rome?"}], "tools": TOOLS}
    engine, clients = council({"vote": {"strategy": "majority"}}, calls(weather("Paris")))
    await engine.ask(agent)
    system = clients[0].sent[0]["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("You are a travel agent.\n\n")
    assert "JSON list of every call" in system["content"] and "one call for each" in system["content"]
    assert len(clients[0].sent[0]["messages"]) == 2 and agent["messages"][0]["content"] == "You are a travel agent."
    # `listed` names each tool and its parameters (templates without tool syntax); one call when parallel is off
    listed, clients = council({"vote": {"strategy": "majority", "tool_instructions": "listed"}}, Say("No."))
    await listed.ask({**ask(), "parallel_tool_calls": False})
    first = clients[0].sent[0]["messages"][0]
    assert first["role"] == "system" and '"name":"locate"' in first["content"]
    assert "at most one call" in first["content"] and "one call for each" not in first["content"]
    # nothing without tools, with tool_choice none, or with `none`
    for config, body in (({}, {"messages": ask()["messages"]}), ({}, {**ask(), "tool_choice": "none"}),
                         ({"tool_instructions": "none"}, ask())):
        plain, clients = council({"vote": {"strategy": "majority", "extract": "text", **config}}, Say("No."))
        await plain.ask(body)
        assert [m["role"] for m in clients[0].sent[0]["messages"]] == ["user"]


def told(client: FakeClient, request: int = 0) -> str | None:
    """The system message a seat's member was sent with its `request`-th request (None: it had none)."""
    first = client.sent[request]["messages"][0]
    return first["content"] if first["role"] == "system" else None


async def test_each_member_is_given_its_own_tool_instructions() -> None:
    """A mixed council: SmolLM2's template renders no tools (`listed`), Qwen2.5-Coder's does (the council's
    `brief`); each seat is sent its own text after the agent's system message, and `parallel_tool_calls: false`
    picks the one-call rules for each."""
    agent = {"messages": [{"role": "system", "content": "You are a travel agent."},
                          {"role": "user", "content": "Weather in Paris and Rome?"}], "tools": TOOLS}
    listed = tool_instructions(TOOLS, "listed")
    mixed = {"members": [{"model": "smollm2", "tool_instructions": "listed"}, {"model": "qwen"}],
             "vote": {"strategy": "majority"}}
    engine, clients = council(mixed, Say("No."), Say("No."))
    await engine.ask(CouncilRequest.of(agent, early_stop=False))
    assert told(clients[0]) == f"You are a travel agent.\n\n{listed}" and '"name":"locate"' in (listed or "")
    assert told(clients[1]) == f"You are a travel agent.\n\n{TOOL_RULES}"
    await engine.ask(CouncilRequest.of({**agent, "parallel_tool_calls": False}, early_stop=False))
    assert told(clients[0], 1) == f"You are a travel agent.\n\n{tool_instructions(TOOLS, 'listed', False)}"
    assert told(clients[1], 1) == f"You are a travel agent.\n\n{ONE_CALL_RULES}"
    # and in a cascade's later stage, asked because the first two seats disagree
    staged, clients = council({"members": [*mixed["members"], {"model": "smollm2", "tool_instructions": "listed"}],
                               "vote": {"strategy": "majority", "cascade": {"first": 2}}},
                              calls(weather("Paris")), calls(weather("Rome")), calls(weather("Paris")))
    answer = await staged.ask(agent)
    assert answer.council_json()["stage"] == 2 and returned(answer) == [weather("Paris")]
    assert [told(c) for c in clients] == [f"You are a travel agent.\n\n{text}" for text in (listed, TOOL_RULES,
                                                                                            listed)]


async def test_a_members_samples_share_one_request_with_its_own_tool_instructions() -> None:
    """`samples: 3` with the member's own instructions: its three seats still send one request, `n: 3` (one
    prefill), and the council's other member on the same process gets the council's text, in a request of its own."""
    engine, clients = council({"members": [{"model": "qwen", "samples": 3, "tool_instructions": "listed",
                                            "sampling": {"temperature": 0.7, "seed": 1}},
                                           {"model": "qwen", "sampling": {"temperature": 0.7, "seed": 9}}],
                               "vote": {"strategy": "majority"}}, *[calls(weather("Paris"))] * 4)
    for client in clients:
        client.target = "qwen-process"  # one llama-server: what lets seats share a request
    answer = await engine.ask(CouncilRequest.of(ask(), early_stop=False))
    assert [m["status"] for m in answer.council_json()["members"]] == ["ok"] * 4
    assert [c.grouped for c in clients] == [[3], [], [], []]  # the samples' one request, `n: 3`
    assert [len(c.sent) for c in clients] == [3, 0, 0, 1]  # (the fake answers its `n` choices one by one)
    assert told(clients[0]) == tool_instructions(TOOLS, "listed") and told(clients[3]) == TOOL_RULES


class StreamingServer(FakeClient):
    """A process whose `n` requests stream, as `HttpMemberClient.choices` sends them, and which refuses logprobs with
    tools on a stream as llama-server b11434 does (tools/server/server-common.cpp: a 400)."""

    async def choices(self, payload: Mapping[str, Any], n: int,
                      streaming: object = None) -> AsyncIterator[tuple[int, MemberReply]]:
        if payload.get("tools") and (payload.get("logprobs") or payload.get("top_logprobs")):
            self.grouped.append(n)
            for i in range(n):
                yield i, MemberReply(status="error", http_status=400,
                                     error="member answered 400: logprobs is not supported with tools + stream")
            return
        async for choice in super().choices(payload, n, streaming):
            yield choice


async def test_a_clients_logprobs_with_tools_leave_grouped_samples_one_prompt_pass_without_logprobs() -> None:
    """`logprobs: true` with `tools` reached the samples' shared request, which streams, and llama-server refuses
    that: every sample errored and the answer was degraded. The grouped request now goes without the client's
    logprobs (one prefill for the samples still); a seat asked alone keeps them, and the council returns its
    speaker's."""
    lp = {"content": [{"token": "x", "logprob": -0.5}]}
    say = Say(calls(weather("Paris")).text, message=calls(weather("Paris")).message, logprobs=lp)
    engine, _ = council({"members": [{"sampling": {"temperature": 0}},
                                     {"samples": 4, "sampling": {"temperature": 0.7, "seed": 1}}]}, *[say] * 5)
    process = StreamingServer(say, target="p")
    engine.seats = [dataclasses.replace(seat, client=process) for seat in engine.seats]
    answer = await engine.ask(CouncilRequest.of({**ask(), "logprobs": True, "top_logprobs": 2}, early_stop=False))
    assert not answer.degraded and [m["status"] for m in answer.council_json()["members"]] == ["ok"] * 5
    assert process.grouped == [4]
    asked = [(s.get("logprobs"), s.get("top_logprobs")) for s in process.sent]
    assert sorted(asked, key=str) == [(None, None)] * 4 + [(True, 2)]  # 4 samples as one request; the greedy seat
    assert returned(answer) == [weather("Paris")] and answer.speaker.seat.name == "c/0" and answer.logprobs == lp


async def test_a_member_with_none_is_given_nothing_while_the_others_get_the_councils() -> None:
    engine, clients = council({"members": [{"model": "qwen"}, {"model": "big", "tool_instructions": "none"},
                                           {"model": "smollm2", "tool_instructions": "brief"}],
                               "vote": {"strategy": "majority", "tool_instructions": "listed"}},
                              *[calls(weather("Paris"))] * 3)
    await engine.ask(CouncilRequest.of(ask(), early_stop=False))
    assert told(clients[0]) == tool_instructions(TOOLS, "listed")
    assert [m["role"] for m in clients[1].sent[0]["messages"]] == ["user"]  # the request as the agent sent it
    assert told(clients[2]) == TOOL_RULES
    engine, clients = council({"members": [{"model": "qwen", "tool_instructions": "none"}, {"model": "smollm2"}],
                               "vote": {"strategy": "majority"}}, *[calls(weather("Paris"))] * 2)
    await engine.ask(CouncilRequest.of(ask(), early_stop=False))
    assert told(clients[0]) is None and told(clients[1]) == TOOL_RULES


async def test_a_tool_council_as_a_cascade_asks_the_rest_only_where_its_first_seats_disagree() -> None:
    """`cascade: {first: 2}` on a tool council (README, "Measured on BFCL": what the vote costs): where the first
    two seats' calls agree the others are never asked; where the first seat's call is invalid it abstains, and an
    abstention is no agreement: every seat is asked (before, the other seat's call, the only vote, decided the
    stage); where they disagree every seat is asked and the majority wins."""
    cascade = {"vote": {"strategy": "majority", "cascade": {"first": 2}}}
    agree, others = calls(weather("Paris")), calls(weather("Rome"))
    engine, clients = council(cascade, agree, agree, others, others, others)
    answer = await engine.ask(ask())
    assert returned(answer) == [weather("Paris")] and answer.council_json()["stage"] == 1
    assert [len(c.sent) for c in clients] == [1, 1, 0, 0, 0]

    engine, clients = council(cascade, calls(weather("Paris", unit="kelvin")), agree, others, others, others)
    answer = await engine.ask(ask())
    assert returned(answer) == [weather("Rome")] and answer.council_json()["stage"] == 2
    assert [len(c.sent) for c in clients] == [1, 1, 1, 1, 1]

    engine, clients = council(cascade, agree, others, others, agree, others)
    answer = await engine.ask(ask())
    assert returned(answer) == [weather("Rome")] and answer.council_json()["stage"] == 2
    assert [len(c.sent) for c in clients] == [1, 1, 1, 1, 1]


def test_a_tool_schemas_refs_resolve_within_it_and_a_remote_one_is_never_fetched() -> None:
    """jsonschema's default registry downloads `http://` refs: a request's tool schema could make the router fetch
    any URL, blocking its event loop. Refs resolve within the schema; a dangling or remote one is refused (400
    `invalid_tools` at the request) or, where a nested `$id` hides it from that check, makes the call invalid."""
    fetched: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetched.append(self.path)
            body = b'{"type": "string"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    remote = f"http://127.0.0.1:{server.server_address[1]}/schema.json"
    try:
        local = {"type": "object", "$defs": {"city": {"type": "string"}},
                 "properties": {"city": {"$ref": "#/$defs/city"}}}
        assert schema_problem(local) is None
        assert "does not resolve" in (schema_problem({"properties": {"city": {"$ref": "#/$defs/nowhere"}}}) or "")
        assert "never fetched" in (schema_problem({"properties": {"city": {"$ref": remote}}}) or "")
        hidden = {"type": "object", "properties": {"city": {"$id": "urn:city", "$ref": remote}}}
        box = Toolbox([{"type": "function", "function": {"name": "f", "parameters": hidden}}])
        assert "does not resolve" in box.verdict("f", {"city": 1})
        assert Toolbox([{"type": "function", "function": {"name": "g", "parameters": local}}]).verdict(
            "g", {"city": 1}).startswith("arguments fail g's schema")
    finally:
        server.shutdown()
    assert fetched == []


def _tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


BACKTRACKS = "^(a|a)*$"  # exponential in `re` and in `regex` alike: 26 a's and a "!" take seconds in either


def test_a_pattern_that_backtracks_makes_its_call_invalid_within_the_time_limit() -> None:
    """A tool schema comes from the client, a call's arguments from a member, and both are checked on the event
    loop: jsonschema's `re` took seconds on a pattern that backtracks (the router stalled for every request).
    Patterns are matched with `regex` under a time limit: past it the call is invalid, and the verdict says why;
    every pattern keyword that reads a member's text is covered, and the request's searches share a budget."""
    from council.voting.patterns import PATTERN_BUDGET, PATTERN_TIMEOUT

    slow = "a" * 26 + "!"
    boxes = {
        "pattern": (Toolbox([_tool("f", {"type": "object", "properties": {"s": {"pattern": BACKTRACKS}}})]),
                    {"s": slow}),
        "patternProperties": (Toolbox([_tool("f", {"type": "object", "patternProperties": {BACKTRACKS: {}}})]),
                              {slow: 1}),
        "propertyNames": (Toolbox([_tool("f", {"type": "object", "propertyNames": {"pattern": BACKTRACKS}})]),
                          {slow: 1}),
    }
    for keyword, (box, arguments) in boxes.items():
        started = time.monotonic()
        verdict = box.call("f", arguments).verdict
        took = time.monotonic() - started
        assert verdict.startswith("arguments of f cannot be checked: pattern '^(a|a)*$' ran out of time"), keyword
        assert took < PATTERN_TIMEOUT + 0.3, (keyword, took)
    box, arguments = boxes["pattern"]
    started = time.monotonic()
    for _ in range(20):  # 20 seats' calls in one request: together within the request's budget
        assert "ran out of time" in box.call("f", arguments).verdict
    assert time.monotonic() - started < PATTERN_BUDGET + 0.5


def test_patterns_still_decide_as_json_schema_says() -> None:
    box = Toolbox([_tool("f", {"type": "object", "properties": {"s": {"type": "string", "pattern": "^[a-z]+$"}},
                               "patternProperties": {"^x_": {"type": "integer"}}, "additionalProperties": False})])
    assert box.call("f", {"s": "abc", "x_n": 1}).valid
    assert box.call("f", {"s": "abc1"}).verdict == "arguments fail f's schema at $.s: 'abc1' does not match '^[a-z]+$'"
    assert box.call("f", {"x_n": "one"}).verdict == "arguments fail f's schema at $.x_n: 'one' is not of type 'integer'"
    assert box.call("f", {"y": 1}).verdict == "arguments fail f's schema: 'y' does not match any of the regexes: '^x_'"
    loose = Toolbox([_tool("f", {"type": "object", "patternProperties": {"^x_": {"type": "integer"}},
                                 "additionalProperties": {"type": "string"}})])
    assert loose.call("f", {"x_n": 1, "y": "z"}).valid
    assert loose.call("f", {"y": 2}).verdict == "arguments fail f's schema at $.y: 2 is not of type 'string'"
    draft4 = Toolbox([_tool("f", {"$schema": "http://json-schema.org/draft-04/schema#",
                                  "properties": {"s": {"pattern": "^x"}}})])
    assert draft4.call("f", {"s": "y"}).verdict == "arguments fail f's schema at $.s: 'y' does not match '^x'"


def test_a_schema_pattern_is_checked_as_it_is_matched_with_regex() -> None:
    """Patterns are matched with `regex`, but a schema's own check compiled them with `re` (the metaschema's
    `format: regex`): `\\p{L}`, which JSON Schema allows and `regex` matches, was 400 "is not a 'regex'"."""
    letters = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^\\p{L}+$"}}}
    assert schema_problem(letters) is None
    box = Toolbox([_tool("f", letters)])
    assert box.call("f", {"s": "Åsa"}).valid and not box.call("f", {"s": "a1"}).valid
    via_ref = {"type": "object", "$defs": {"w": {"type": "string", "pattern": "^\\p{Lu}"}},
               "properties": {"s": {"$ref": "#/$defs/w"}}}
    assert schema_problem(via_ref) is None
    assert "is not a 'regex'" in (schema_problem({"type": "object", "properties": {"s": {"pattern": "(?<"}}}) or "")


def test_what_jsonschema_would_match_without_a_time_limit_is_refused_at_the_door() -> None:
    """jsonschema matches `unevaluatedProperties`' names against `patternProperties` with `re` itself, and a
    nested `$schema` naming a draft switches to its own validators: with patterns, such a schema is refused."""
    unevaluated = {"type": "object", "patternProperties": {"^x": {}}, "unevaluatedProperties": False}
    assert "`unevaluatedProperties` beside `patternProperties` is not supported" in (schema_problem(unevaluated) or "")
    nested = {"type": "object", "properties": {
        "s": {"$schema": "http://json-schema.org/draft-07/schema#", "pattern": BACKTRACKS}}}
    assert "a `$schema` inside a schema that uses patterns" in (schema_problem(nested) or "")
    box = Toolbox([_tool("f", nested)])
    assert box.call("f", {"s": "a" * 26 + "!"}).verdict.startswith("f's parameters are not a valid JSON Schema")
    # A property named `$schema` is a name, not the keyword; patterns under a top-level `$schema` are ours.
    assert schema_problem({"type": "object", "properties": {"$schema": {"type": "string", "pattern": "^h"}}}) is None
    assert schema_problem({"$schema": "http://json-schema.org/draft-07/schema#",
                           "properties": {"s": {"pattern": "^x"}}}) is None
    assert schema_problem({"type": "object", "unevaluatedProperties": False}) is None


async def test_a_members_argument_against_a_backtracking_pattern_does_not_stall_the_council() -> None:
    """The reviewer's case: `^(\\w+\\s?)*$` passes the request's schema check, and a member's 27-character title
    held the event loop for ~5 s; `regex` decides it at once (the seat abstains: it does not match)."""
    tool = _tool("set_title", {"type": "object", "properties": {"title": {"type": "string",
                                                                          "pattern": "^(\\w+\\s?)*$"}}})
    assert schema_problem(tool["function"]["parameters"]) is None
    engine, _ = council({}, calls(("set_title", {"title": "Meeting" + "s" * 19 + "!"})), Say("ok"), Say("ok"))
    started = time.monotonic()
    answer = await engine.ask(ask([tool], "set my title"))
    assert time.monotonic() - started < 1.0
    assert "does not match" in member(answer, 0)["abstained"]


def test_a_ref_to_no_schema_or_one_that_loops_is_refused_at_the_door() -> None:
    """Each of these resolved, so the request check let it through; checking a call then raised inside jsonschema
    (a 500, or the seat reported as a timeout) or recursed until Python's limit."""
    b = {"type": "string", "enum": ["x"]}
    refused = {
        "points at 'string', not a schema": {"properties": {"a": {"$ref": "#/properties/b/type"}, "b": b}},
        "points at ['x'], not a schema": {"properties": {"a": {"$ref": "#/properties/b/enum"}, "b": b}},
        "points at ['a'], not a schema": {"required": ["a"], "properties": {"a": {"$ref": "#/required"}}},
        "points at no valid JSON Schema": {"x": {"type": 5}, "properties": {"a": {"$ref": "#/x"}}},
    }
    loops = [{"$defs": {"x": {"$ref": "#/$defs/x"}}, "properties": {"a": {"$ref": "#/$defs/x"}}},
             {"$defs": {"x": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/x"}]}}},
             {"not": {"$ref": "#"}},
             {"properties": {"a": {"$id": "urn:a", "allOf": [{"$ref": "#"}]}}}]  # resolved where it is
    for says, schema in refused.items():
        assert says in (schema_problem({"type": "object", **schema}) or ""), schema
    for schema in loops:
        assert "leads back to where it is without descending into the arguments" in (schema_problem(schema) or "")
    # a ref that descends into the arguments is no loop (a tree); a schema outside the keywords is a schema
    tree = {"type": "object", "properties": {"name": {"type": "string"},
                                             "children": {"type": "array", "items": {"$ref": "#"}}}}
    aside = {"type": "object", "x": {"type": "string"}, "properties": {"a": {"$ref": "#/x"},
                                                                        "b": {"$ref": "#/properties/a"}}}
    assert schema_problem(tree) is None and schema_problem(aside) is None
    box = Toolbox([_tool("t", tree), _tool("a", aside)])
    assert box.verdict("t", {"name": "x", "children": [{"name": "y", "children": []}]}) == "valid"
    assert box.verdict("t", {"children": [{"name": 1}]}).startswith("arguments fail t's schema at $.children[0]")
    assert box.verdict("a", {"a": "x", "b": 1}) == "arguments fail a's schema at $.b: 1 is not of type 'string'"


HALVES = _tool("f", {"type": "object", "properties": {"n": {"type": "number", "multipleOf": 0.5}}})
HUGE = calls(("f", '{"n": 1' + "0" * 400 + "}"))  # past a float's range: jsonschema's multipleOf raised on it


async def test_a_call_that_cannot_be_checked_makes_its_seat_abstain_never_a_500_or_a_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid schema, a member's argument jsonschema raised on: with seats on several processes the exception
    left the vote (HTTP 500); with one, the seat that answered at once was reported as a timeout."""
    assert Toolbox([HALVES]).verdict("f", {"n": 10 ** 400}).startswith(
        "arguments of f cannot be checked: OverflowError: ")
    engine, _ = council({}, HUGE, calls(("f", {"n": 1.5})), calls(("f", {"n": 1.5})))
    answer = await engine.ask(CouncilRequest.of(ask([HALVES], "f"), early_stop=False))
    assert returned(answer) == [("f", {"n": 1.5})]
    assert member(answer, 0)["abstained"].startswith("invalid tool call: f: arguments of f cannot be checked: "
                                                     "OverflowError")
    engine, _ = council({}, HUGE)
    with pytest.raises(QuorumError, match="c/0: invalid tool call: f: arguments of f cannot be checked") as alone:
        await engine.ask(ask([HALVES], "f"))
    assert alone.value.outcomes[0].reply.status == "ok"  # it answered: no timeout
    # Whatever else fails in reading a seat's calls is that seat's abstention too, never the vote's fault.
    import council.voting.engine as engine_module

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a fault of its own")

    monkeypatch.setattr(engine_module, "read_answer", broken)
    for seats in (1, 3):
        engine, _ = council({}, *[calls(("f", {"n": 1.5}))] * seats)
        with pytest.raises(QuorumError, match="its calls could not be checked: RuntimeError: a fault of its own"
                           ) as failed:
            await engine.ask(ask([HALVES], "f"))
        assert [o.reply.status for o in failed.value.outcomes] == ["ok"] * seats


async def test_per_argument_never_returns_the_same_call_twice() -> None:
    """Each slot is composed on its own: two could come out the same call, which the council returned twice (two
    ids: an agent ran it twice) though no seat made it twice and its vote counted it once."""
    pair = _tool("f", {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}})
    replies = (calls(("f", {"a": 1, "b": 2}), ("f", {"a": 1, "b": 3})),  # the quickest: the reference on a tie
               calls(("f", {"a": 1, "b": 3}), ("f", {"a": 3, "b": 3}), delay=0.05),
               calls(("f", {"a": 1, "b": 3}), ("f", {"a": 2, "b": 3}), delay=0.1))
    engine, _ = council({"vote": {"strategy": "majority", "tools": "per_argument"}}, *replies)
    answer = await engine.ask(ask([pair], "go"))
    assert returned(answer) == [("f", {"a": 1, "b": 2}), ("f", {"a": 1, "b": 3})]  # the reference's, each once
    assert answer.council_json()["tool_vote"]["fallback"] == (
        'the composed calls repeat f({"a":1,"b":3}): the reference calls are returned')


def test_a_pattern_reached_by_a_ref_from_beside_the_keywords_is_held_to_the_time_limits() -> None:
    """`"$ref": "#/x"` with `x` beside `properties` (no keyword reads it, jsonschema follows the ref all the same):
    the request check did not see the pattern there, so its calls were not timed. Each search got a fresh 20 ms,
    no call or request budget applied, and nine seats' calls held the event loop for seconds; and a `$schema`
    there made jsonschema match it with `re`, without any limit."""
    from council.voting.patterns import PATTERN_BUDGET

    aside = {"type": "object", "x": {"type": "string", "pattern": BACKTRACKS}, "properties": {"s": {"$ref": "#/x"}}}
    assert schema_problem(aside) is None
    box = Toolbox([_tool("f", aside)])
    started = time.monotonic()
    for _ in range(60):  # 60 seats' calls, each search out of time: 20 ms each, until the request's budget is spent
        assert "ran out of time" in box.call("f", {"s": "a" * 26 + "!"}).verdict
    assert time.monotonic() - started < PATTERN_BUDGET + 0.5  # not 60 x 20 ms
    drafted = {**aside, "x": {"$schema": "http://json-schema.org/draft-07/schema#", **aside["x"]}}
    assert "a `$schema` inside a schema that uses patterns" in (schema_problem(drafted) or "")


def test_a_schema_jsonschema_cannot_even_look_up_is_a_problem_not_an_exception() -> None:
    """`$schema` is looked up before the metaschema is applied: a number there raised AttributeError from
    urllib (the request check then gave a 500, not 400 `invalid_tools`), and a URI urllib cannot split, ValueError."""
    assert schema_problem({"type": "object", "$schema": 5}) == "$schema must be a string (a metaschema's URI), not 5"
    assert schema_problem({"$schema": "http://["}) == "it cannot be checked: ValueError: Invalid IPv6 URL"
    box = Toolbox([_tool("f", {"type": "object", "$schema": 5})])
    assert box.call("f", "{}").verdict == ("f's parameters are not a valid JSON Schema: $schema must be a string (a "
                                           "metaschema's URI), not 5")


def test_an_agents_calls_and_results_reach_a_member_in_the_words_of_its_rules() -> None:
    """A member told to write calls as a JSON list read its past calls and their results in its chat template's
    tags, which Qwen2.5-Coder-1.5B echoed back (`<tool_response>...`) or called again, 10 of 10 turns after a
    result; told in the rules' own words (and that it may answer from the results), it answered all 10."""
    from council.voting.tools import RESULTS, calls_as_text

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and London?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "London"}'}}]},
        {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "14 C"}]},
        {"role": "tool", "tool_call_id": "a", "content": "18 C"},
        {"role": "tool", "tool_call_id": "unknown", "content": "?"},
    ]
    told, results = calls_as_text(messages)
    assert results and told[:2] == messages[:2]
    assert told[2] == {"role": "assistant", "content": 'Checking.\n[{"name": "get_weather", "arguments": {"city": '
                       '"Paris"}}, {"name": "get_weather", "arguments": {"city": "London"}}]'}
    assert told[3] == {"role": "user", "content": f'{RESULTS}\n- get_weather with {{"city": "London"}}: 14 C\n'
                       '- get_weather with {"city": "Paris"}: 18 C\n- a call: ?'}
    assert len(told) == 4
    assert calls_as_text(messages[:2]) == (messages[:2], False)  # nothing to tell: as it came
    # A new question after the results is asked afresh: no rule to answer from the old results.
    assert calls_as_text([*messages, {"role": "assistant", "content": "18 and 14 C."},
                          {"role": "user", "content": "And in Rome?"}])[1] is False
    # A result holding an image (a screenshot) goes as it came: in text, the image was lost.
    shot = {"role": "tool", "tool_call_id": "a", "content": [
        {"type": "text", "text": "the page:"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}
    assert calls_as_text([*messages[:3], shot]) == ([*messages[:3], shot], False)


def test_the_rule_to_answer_from_results_is_not_given_where_a_call_is_required() -> None:
    from council.voting.tools import FOLLOW_UP_RULE

    engine, _ = council({"vote": {"strategy": "majority"}}, Say("x"), Say("x"))
    body = {**ask(), "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "a", "content": "18 C"}]}
    for choice, told in ((None, True), ("auto", True), ("required", False)):
        request = CouncilRequest.of({**body, **({"tool_choice": choice} if choice else {})})
        system = engine.members_body(request, engine.toolbox(request))["messages"][0]["content"]
        assert (FOLLOW_UP_RULE in system) is told, choice
