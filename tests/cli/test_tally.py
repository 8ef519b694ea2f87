"""`council tally` re-runs the vote on recorded answers (CONTRACT §5)."""

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


def test_tally_majority_and_override(tmp_path: Path) -> None:
    path = write(tmp_path, {"council": "x", "strategy": "majority", "extract": "number", "answers": ANSWERS})
    result = run_cli("tally", str(path))
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision == {"answer": "42", "agreement": 0.666667, "votes": {"42": 2.0, "41": 1.0},
                        "winner_members": ["a", "b"], "tie_broken_by": None}
    weighted = json.loads(run_cli("tally", str(path), "--strategy", "weighted").stdout)
    assert weighted["answer"] == "41" and weighted["votes"] == {"42": 2.0, "41": 3.0}


def test_tally_tie_break_is_reported(tmp_path: Path) -> None:
    answers = [{"member": "slow", "text": "7", "latency_ms": 900}, {"member": "fast", "text": "8", "latency_ms": 100}]
    path = write(tmp_path, {"extract": "number", "tie_break": ["latency", "order"], "answers": answers})
    decision = json.loads(run_cli("tally", str(path)).stdout)
    assert (decision["answer"], decision["tie_broken_by"]) == ("8", "latency")


def test_all_abstaining_is_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, {"extract": "number", "answers": [{"member": "a", "text": "no idea"}]})
    result = run_cli("tally", str(path))
    assert result.returncode == 2
    assert "every member abstained" in result.stderr and "Traceback" not in result.stderr


def test_bad_input_is_exit_2_with_one_line(tmp_path: Path) -> None:
    cases = [
        ("{not json", "cannot read the ballot"),
        ({"answers": []}, "`answers` must be a non-empty list"),
        ({"answers": [{"text": "1"}]}, "answers[0] needs a `member`"),
        ({"answers": [{"member": "a", "text": "1", "weight": -1}]}, "weight must be positive"),
        ({"strategy": "plurality", "answers": ANSWERS}, "unknown strategy 'plurality'"),
        ({"extract": "regex:(", "answers": ANSWERS}, "bad extractor 'regex:('"),
    ]
    for doc, message in cases:
        result = run_cli("tally", str(write(tmp_path, doc)))
        assert result.returncode == 2, (doc, result.stdout)
        assert message in result.stderr, (doc, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert run_cli("tally", str(tmp_path / "missing.json")).returncode == 2
