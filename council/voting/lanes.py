"""How a council's seats are asked: which seats share one request, and which requests go one after another.

Seats that would send the same request to the same process, differing only in seed, share one request with
`n` (llama-server reads the prompt once for all n choices). Requests to one process with one prompt but
different sampling cannot share `n`; sent at once, each reads the whole prompt. Sent one after another
(a *lane*), each finds the prompt the previous one left in its slot (llama-server's prompt cache) and reads
only what differs: cheaper when reading the prompt costs more than generating an answer, which the process's
own recent timings tell (`Rates`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

import orjson

from council.voting.client import MemberClient, MemberReply

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "seed", "max_tokens", "logprobs", "top_logprobs")
CHARS_PER_TOKEN = 4.0  # a prompt's size before the server tokenises it (English text and JSON)
MIN_PREFILL_TOKENS = 64  # shorter prefills (cache hits) say nothing about the prefill speed


class HasClient(Protocol):
    @property
    def client(self) -> MemberClient: ...


S = TypeVar("S", bound=HasClient)  # a seat (`council.voting.engine.Seat`)


@dataclass
class Call(Generic[S]):
    """One request: the seats it answers for (one, or `n` sharing the prompt) and its body."""

    seats: list[S]
    payload: dict[str, Any]


T = TypeVar("T")


def _gather(items: list[T], key: Callable[[T], str | None]) -> list[tuple[str | None, list[T]]]:
    """`items` gathered by key, each group where its first item stood; an item whose key is None stands alone."""
    groups: dict[str, list[T]] = {}
    out: list[tuple[str | None, list[T]]] = []
    for item in items:
        k = key(item)
        if k is None:
            out.append((None, [item]))
        elif k in groups:
            groups[k].append(item)
        else:
            groups[k] = [item]
            out.append((k, groups[k]))
    return out


def _same_body(target: str | None, payload: dict[str, Any], leave_out: tuple[str, ...]) -> str | None:
    """What makes two calls alike for one process: its name and the body without `leave_out` (None: no target)."""
    if target is None:
        return None
    body = orjson.dumps({k: v for k, v in payload.items() if k not in leave_out}, default=str,
                        option=orjson.OPT_SORT_KEYS)
    return target + "\n" + body.decode()


def _alone(targets: list[str | None]) -> bool:
    """No two calls go to one process: nothing to share or chain (and no body to compare)."""
    named = [t for t in targets if t is not None]
    return len(set(named)) == len(named)


def group_calls(payloads: list[tuple[S, dict[str, Any]]], share_prompt: bool) -> list[Call[S]]:
    """One call per seat, except that seats sending the same body (but for the seed) to the same process share
    one call; it is seeded with its first seat's seed (llama-server seeds each further choice apart)."""
    if not share_prompt or _alone([seat.client.target for seat, _ in payloads]):
        return [Call([seat], payload) for seat, payload in payloads]
    groups = _gather(payloads, lambda p: _same_body(p[0].client.target, p[1], ("seed",)))
    return [Call([seat for seat, _ in run], run[0][1] if len(run) == 1 else _shared(run[0][1])) for _, run in groups]


def _shared(payload: dict[str, Any]) -> dict[str, Any]:
    """The body of a request for `n` choices. It streams (`HttpMemberClient.choices`), and llama-server b11434
    refuses logprobs with tools on a stream (a 400 for every choice): with tools, the client's `logprobs` and
    `top_logprobs` are left out, so its samples still share one prompt pass; they answer without logprobs (a seat
    asked alone keeps them, and the council returns its speaker's)."""
    if not payload.get("tools") or ("logprobs" not in payload and "top_logprobs" not in payload):
        return payload
    return {k: v for k, v in payload.items() if k not in ("logprobs", "top_logprobs")}


@dataclass
class Rates:
    """One process's recent speed (moving averages over its replies): prefill and generation tokens per second,
    and completion tokens per answer."""

    prompt_per_s: float | None = None
    predicted_per_s: float | None = None
    completion_tokens: float | None = None
    alpha: float = 0.3

    def _mix(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.alpha) * old + self.alpha * new

    def observe(self, reply: MemberReply) -> None:
        t = reply.timings or {}
        if (t.get("prompt_n") or 0) >= MIN_PREFILL_TOKENS and (t.get("prompt_per_second") or 0) > 0:
            self.prompt_per_s = self._mix(self.prompt_per_s, float(t["prompt_per_second"]))
        if (t.get("predicted_per_second") or 0) > 0:
            self.predicted_per_s = self._mix(self.predicted_per_s, float(t["predicted_per_second"]))
        if reply.status == "ok" and reply.completion_tokens:
            self.completion_tokens = self._mix(self.completion_tokens, float(reply.completion_tokens))

    def prefill_dominates(self, prompt_tokens: float, max_tokens: int | None) -> bool:
        """Reading the prompt takes longer than generating an answer (unknown until both were measured)."""
        if self.prompt_per_s is None or self.predicted_per_s is None or self.completion_tokens is None:
            return False
        answer = min(self.completion_tokens, max_tokens) if max_tokens else self.completion_tokens
        return prompt_tokens / self.prompt_per_s > answer / self.predicted_per_s


def lanes(calls: list[Call[S]], mode: Literal["auto", "chain", "parallel"],
          rates: dict[str, Rates]) -> list[list[Call[S]]]:
    """The calls as lanes: each lane's calls go one after another, the lanes at once. Calls with one prompt to
    one process form one lane when `mode` is `chain`, or `auto` and the process's prefill dominates."""
    if mode == "parallel" or _alone([call.seats[0].client.target for call in calls]):
        return [[call] for call in calls]
    result: list[list[Call[S]]] = []
    for key, run in _gather(calls, lambda c: _same_body(c.seats[0].client.target, c.payload, SAMPLING_KEYS)):
        target = run[0].seats[0].client.target
        # After the target's name, the key is the prompt's body: its length estimates the prompt.
        chain = key is not None and target is not None and len(run) > 1 and (
            mode == "chain" or rates.setdefault(target, Rates()).prefill_dominates(
                (len(key) - len(target) - 1) / CHARS_PER_TOKEN, run[0].payload.get("max_tokens")))
        result += [run] if chain else [[call] for call in run]
    return result
