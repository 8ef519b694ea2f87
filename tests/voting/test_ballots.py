"""The ballot store behind GET /v1/ballots/{id}: the last `server.ballots` ballots, within a byte budget."""

from __future__ import annotations

from council.voting.ballots import BallotStore


def ballot(i: int, text: str = "4") -> dict[str, object]:
    return {"id": f"b{i}", "answer": "4", "answers": [{"member": "c/0", "text": text}]}


def test_the_oldest_ballots_go_past_the_count_or_the_bytes() -> None:
    """Kept by count alone, 1,000 answers of three 128 KB replies held 260 MB of the router's memory."""
    store = BallotStore(capacity=3)
    for i in range(5):
        store.put(f"b{i}", ballot(i))
    assert [store.get(f"b{i}") is not None for i in range(5)] == [False, False, True, True, True]
    big = BallotStore(capacity=1000, max_bytes=1_000_000)
    for i in range(20):
        big.put(f"b{i}", ballot(i, "x" * 100_000))
    assert len(big) == 9 and big.bytes <= 1_000_000 and big.get("b19") is not None and big.get("b10") is None
    big.put("huge", ballot(99, "x" * 5_000_000))  # one past the budget alone: kept, the rest go
    assert len(big) == 1 and big.get("huge") is not None
    big.put("huge", ballot(99))  # the same id again: counted once
    assert len(big) == 1 and big.bytes < 1000
    big.resize(0)
    assert len(big) == 0 and big.bytes == 0
