"""`council tally` re-runs the vote on recorded answers (README: "Councils: fan-out, extraction, votes")."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli


def write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "ballot.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


ANSWERS = [
    {"member": "a", "text": "Let me think. 20 + 22 = 42. The answer is 42.", "weight": 1.0, "latency_ms": 300},
    {"member": "b", "text": "**Answer:** 42", "weight": 1.0, "latency_ms": 200},
    {"member": "c", "text": "I believe it is 41.", "weight": 3.0, "latency_ms": 100},
    {"member": "d", "text": "I cannot answer that.", "weight": 1.0},
]


CALLS = [{"member": "a", "text": "", "tool_calls": [{"type": "function", "function": {"name": "f",
                                                                                    "arguments": "{}"}}]}]


def test_tally_majority_and_override(tmp_path: Path) -> None:
    path = write(tmp_path, {"council": "x", "strategy": "majority", "extract": "number", "answers": ANSWERS})
    result = run_cli("tally", str(path))
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision == {"answer": "42", "agreement": 0.666667, "votes": {"42": 2.0, "41": 1.0},
                        "winner_members": ["a", "b"], "tie_broken_by": None,
                        "confidence": {"a": None, "b": None, "c": None, "d": None}}
    weighted = json.loads(run_cli("tally", str(path), "--strategy", "weighted").stdout)
    assert weighted["answer"] == "41" and weighted["votes"] == {"42": 2.0, "41": 3.0}


def test_tally_tie_break_is_reported(tmp_path: Path) -> None:
    answers = [{"member": "slow", "text": "7", "latency_ms": 900}, {"member": "fast", "text": "8", "latency_ms": 100}]
    path = write(tmp_path, {"extract": "number", "tie_break": ["latency", "order"], "answers": answers})
    decision = json.loads(run_cli("tally", str(path)).stdout)
    assert (decision["answer"], decision["tie_broken_by"]) == ("8", "latency")


def test_tally_breaks_a_tie_by_the_recorded_logprob_and_says_when_a_ballot_has_none(tmp_path: Path) -> None:
    # The answers' logprob was neither recorded nor read: the tie went to `order` ("7") in silence.
    answers = [{"member": "a", "text": "7", "logprob": -2.0}, {"member": "b", "text": "8", "logprob": -0.1}]
    path = write(tmp_path, {"extract": "number", "tie_break": ["logprob", "order"], "answers": answers})
    result = run_cli("tally", str(path))
    assert result.returncode == 0 and result.stderr == ""
    assert (json.loads(result.stdout)["answer"], json.loads(result.stdout)["tie_broken_by"]) == ("8", "logprob")
    old = [{k: v for k, v in a.items() if k != "logprob"} for a in answers]  # a ballot from before it was kept
    result = run_cli("tally", str(write(tmp_path, {"extract": "number", "tie_break": ["logprob", "order"],
                                                   "answers": old})))
    assert result.returncode == 0 and json.loads(result.stdout)["answer"] == "7"
    assert result.stderr.strip() == (f"note: {path}: the tie reached tie_break `logprob`, but the ballot's answers "
                                     "have no `logprob` (recorded before it was kept): broken by 'order', the live "
                                     "council may have answered otherwise")


def test_all_abstaining_is_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, {"extract": "number", "answers": [{"member": "a", "text": "no idea"}]})
    result = run_cli("tally", str(path))
    assert result.returncode == 2
    assert "every seat abstained" in result.stderr and "Traceback" not in result.stderr


def test_every_reply_cut_off_is_the_first_seats_unfinished_reply_as_it_was_live(tmp_path: Path) -> None:
    cut = [{"member": "c/0", "text": "17*20 = 340\n1", "finish_reason": "length"},
           {"member": "c/1", "text": '[{"name": "f", "arguments": {"ci', "finish_reason": "length"}]
    result = run_cli("tally", str(write(tmp_path, {"extract": "number", "answers": cut})))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"answer": None, "agreement": 0.0, "votes": {}, "winner_members": [],
                                         "tie_broken_by": None, "speaker": "c/0", "finish_reason": "length"}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    called = run_cli("tally", str(write(tmp_path, {"tools": tools, "answers": cut[1:]})))
    assert called.returncode == 0 and json.loads(called.stdout)["speaker"] == "c/1", called.stderr
    # one reply that finished and abstained: the error, as live
    finished = run_cli("tally", str(write(tmp_path, {"extract": "number", "answers": [
        cut[0], {"member": "c/1", "text": "no idea", "finish_reason": "stop"}]})))
    assert finished.returncode == 2 and "every seat abstained" in finished.stderr


def test_bad_input_is_exit_2_with_one_line(tmp_path: Path) -> None:
    cases = [
        ("{not json", "cannot read the ballot"),
        ({"answers": []}, "`answers` must be a non-empty list"),
        ({"answers": [{"text": "1"}]}, "answers[0] needs a `member`"),
        ({"answers": [{"member": "a", "text": "1", "weight": -1}]},
         "answers[0]: `weight` must be a positive number up to 1e6, not -1"),
        # Three of 1e308 summed to infinity: the one-vote answer won, and the printed JSON held `Infinity`.
        ({"answers": [{"member": "a", "text": "1", "weight": 1e308}]},
         "answers[0]: `weight` must be a positive number up to 1e6, not 1e+308"),
        ({"strategy": "plurality", "answers": ANSWERS}, "unknown strategy 'plurality'"),
        ({"extract": "regex:(", "answers": ANSWERS}, "bad extractor 'regex:('"),
        # Hand-made ballots that were tracebacks (exit 1): an extractor that is no string, a tool's `parameters`
        # that is no object, tools or tie-break rules of the wrong shape.
        ({"extract": 5, "answers": ANSWERS}, "`extract` must be a string (auto, number, choice, text, regex:...), "
                                             "not 5"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": 5}}], "answers": CALLS},
         "tools[0]: `function.parameters` must be a JSON Schema object, not 5"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": 1.5}}], "answers": CALLS},
         "tools[0]: `function.parameters` must be a JSON Schema object, not 1.5"),
        ({"tools": [{"type": "function", "name": "f"}], "answers": CALLS},
         "tools[0] needs a `function` with a `name`"),
        ({"tie_break": "weight", "answers": ANSWERS}, "`tie_break` must be a list of rules"),
    ]
    for doc, message in cases:
        result = run_cli("tally", str(write(tmp_path, doc)))
        assert result.returncode == 2, (doc, result.stdout)
        assert message in result.stderr, (doc, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert run_cli("tally", str(tmp_path / "missing.json")).returncode == 2


def test_a_ballot_nested_too_deeply_is_exit_2_with_one_line(tmp_path: Path) -> None:
    # json.loads raises RecursionError, not ValueError: it was a traceback, exit 1.
    result = run_cli("tally", str(write(tmp_path, '{"answers": ' + "[" * 100_000 + "]" * 100_000 + "}")))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'ballot.json'}: cannot read the ballot: "
                                                  "nested too deeply"]


def test_tally_confidence_votes_weigh_each_members_recorded_confidence(tmp_path: Path) -> None:
    sure = [{**a, "confidence": c} for a, c in zip(ANSWERS, (0.2, 0.3, 0.9, 0.5), strict=True)]
    path = write(tmp_path, {"strategy": "confidence", "extract": "number", "answers": sure})
    decision = json.loads(run_cli("tally", str(path)).stdout)
    # 42: 1 x 0.2 + 1 x 0.3; 41: 3 x 0.9 (weight x confidence).
    assert decision["answer"] == "41" and decision["votes"] == {"42": 0.5, "41": 2.7}
    assert decision["confidence"] == {"a": 0.2, "b": 0.3, "c": 0.9, "d": 0.5}
    sharp = write(tmp_path, {"strategy": "confidence", "extract": "number", "confidence_temperature": 0.5,
                             "answers": [{**a, "weight": 1.0} for a in sure]})
    votes = json.loads(run_cli("tally", str(sharp)).stdout)["votes"]  # p ** 2
    assert votes["41"] == 0.81 and abs(votes["42"] - 0.13) < 1e-9
    bad = write(tmp_path, {"strategy": "confidence", "answers": [{"member": "a", "text": "1", "confidence": 2}]})
    result = run_cli("tally", str(bad))
    assert result.returncode == 2 and "answers[0]: `confidence` must be a probability in (0, 1], not 2" in result.stderr


def test_numbers_and_settings_a_vote_cannot_use_are_exit_2(tmp_path: Path) -> None:
    # Each was exit 0 (a negative temperature even turned the vote: 41 won), a traceback (a list), or a message that
    # named no field ("min() arg is an empty sequence" for NaN, which Python's json reads, as it does Infinity).
    sure = [{"member": "a", "text": "42", "confidence": 0.9}, {"member": "b", "text": "41", "confidence": 0.5}]
    conf = {"strategy": "confidence", "extract": "number", "answers": sure}
    tools = [{"type": "function", "function": {"name": "f"}}]
    temperature = "`confidence_temperature` must be a positive number (T in weight x p^(1/T)), not"
    cases: list[tuple[object, str]] = [
        ({**conf, "confidence_temperature": -1}, f"{temperature} -1"),
        ({**conf, "confidence_temperature": 0}, f"{temperature} 0"),
        ({**conf, "confidence_temperature": "warm"}, f"{temperature} 'warm'"),
        ({**conf, "confidence_temperature": [1]}, f"{temperature} [1]"),
        (json.dumps({"confidence_temperature": 1, **conf}).replace(": 1,", ": NaN,", 1),
         "`confidence_temperature` must be a finite number, not nan"),
        ({**conf, "answers": [{**sure[0], "weight": True}, sure[1]]}, "answers[0]: `weight` must be a positive number "
                                                                     "up to 1e6, not True"),
        (json.dumps({**conf, "strategy": "weighted"}).replace('"confidence": 0.9', '"weight": Infinity'),
         "answers[0]: `weight` must be a finite number, not inf"),
        ({**conf, "answers": [sure[0], {**sure[1], "latency_ms": -5}]},
         "answers[1]: `latency_ms` must be a number of milliseconds, 0 or more, not -5"),
        ({**conf, "answers": [{**sure[0], "confidence": True}, sure[1]]},
         "answers[0]: `confidence` must be a probability in (0, 1], not True"),
        ({**conf, "answers": [sure[0], {**sure[1], "member": "a"}]}, "answers[1]: member 'a' is listed twice"),
        ({"tools": tools, "tool_choice": "sometimes", "answers": CALLS}, "`tool_choice` must be none, auto, required "
                                                                         "or {\"type\": \"function\""),
        ({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "g"}}, "answers": CALLS},
         "`tool_choice` names function 'g', which `tools` does not declare (declared: f)"),
        ({"tools": tools, "recover_tool_calls": "no", "answers": CALLS},
         "`recover_tool_calls` must be true or false, not 'no'"),
    ]
    for doc, message in cases:
        result = run_cli("tally", str(write(tmp_path, doc)))
        assert result.returncode == 2, (doc, result.stdout)
        assert message in result.stderr, (doc, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    # Absent or null is the schema's default, T = 1.
    votes = json.loads(run_cli("tally", str(write(tmp_path, {**conf, "confidence_temperature": None}))).stdout)
    assert votes["votes"] == {"42": 0.9, "41": 0.5}


def test_a_reply_cut_off_by_max_tokens_votes_only_with_an_answer_it_stated(tmp_path: Path) -> None:
    """A ballot from /v1/ballots/ID keeps each reply's finish_reason: tally re-votes as the council did."""
    answers = [{"member": "a", "text": "17*20 = 320\n1", "finish_reason": "length"},
               {"member": "b", "text": "The answer is 391. Check: 1", "finish_reason": "length"},
               {"member": "c", "text": "So it is 1", "finish_reason": "stop"}]
    path = write(tmp_path, {"extract": "number", "answers": answers})
    decision = json.loads(run_cli("tally", str(path)).stdout)
    assert decision["votes"] == {"391": 1.0, "1": 1.0}  # a's "1" is the last number of unfinished reasoning
