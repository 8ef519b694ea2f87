"""A member's confidence in its answer, from the token logprobs llama-server returns (`logprobs: true`).

Three signals, each a probability in (0, 1] (a geometric mean of token probabilities):
- `answer`: the tokens that spell the final answer (the last place in the reply the extractor reads as the
  answer). After a chain of reasoning a model is nearly always sure of the number it computed, right or not.
- `reply`: every token of the reply. It favours the greedy answer, which maximises likelihood everywhere.
- `tail`: the least likely tenth of the reply's tokens (the weakest steps of the reasoning; after DeepConf,
  arXiv 2508.15260, whose lowest-confidence groups predict wrong traces better than the mean).
`vote.confidence` picks the signal a `confidence` vote uses; `council eval` scores all three.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from council.voting.extract import extract

# Candidates for where an answer is spelled: numbers (with signs, currency, separators, decimals, fractions),
# lone option letters, else the answer text itself.
_NUMBER = re.compile(r"[-−]?[$€£]?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?")
_LETTER = re.compile(r"(?<![A-Za-z])[A-J](?![A-Za-z])")


def answer_span(text: str, answer: str, how: str) -> tuple[int, int] | None:
    """Character span of the last place in `text` that reads as `answer` on its own."""
    pattern = _LETTER if len(answer) == 1 and answer.isalpha() else _NUMBER
    for match in reversed(list(pattern.finditer(text))):
        if extract(match.group(0), how) == answer or extract(match.group(0), "number") == answer:
            return match.span()
    at = text.lower().rfind(answer.lower())
    return (at, at + len(answer)) if at >= 0 else None


def _token_logprobs(tokens: Sequence[dict[str, Any]]) -> list[tuple[int, int, float]]:
    """(start, end, logprob) per token, in characters of the reply (tokens concatenate to the reply)."""
    spans, at = [], 0
    for token in tokens:
        piece, logprob = token.get("token"), token.get("logprob")
        if not isinstance(piece, str) or not isinstance(logprob, int | float):
            return []
        spans.append((at, at + len(piece), min(0.0, float(logprob))))  # a probability is at most 1
        at += len(piece)
    return spans


SIGNALS = ("answer", "reply", "tail")
TAIL_SHARE = 0.1


def signals(logprobs: dict[str, Any] | None, text: str | None, answer: str | None,
            how: str) -> dict[str, float] | None:
    """The three confidence signals of one reply, or None when it reported no logprobs."""
    tokens = (logprobs or {}).get("content")
    if not isinstance(tokens, list) or not tokens:
        return None
    spans = _token_logprobs(tokens)
    if not spans:
        return None
    values = [lp for _, _, lp in spans]
    spelled = spans
    if text is not None and answer is not None and "".join(t["token"] for t in tokens) == text:
        where = answer_span(text, answer, how)
        if where is not None:
            spelled = [s for s in spans if s[0] < where[1] and s[1] > where[0]] or spans
    tail = sorted(values)[: max(1, math.ceil(TAIL_SHARE * len(values)))]
    return {"answer": math.exp(sum(lp for _, _, lp in spelled) / len(spelled)),
            "reply": math.exp(sum(values) / len(values)), "tail": math.exp(sum(tail) / len(tail))}
