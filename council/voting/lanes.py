"""How a council's seats are asked: which seats share one request, and which requests go one after another.

Seats that would send the same request to the same process, differing only in seed, share one request with
`n` (llama-server reads the prompt once for all n choices). Requests to one process with one prompt but
different sampling cannot share `n`; sent at once, each reads the whole prompt. Sent one after another
(a *lane*), each finds the prompt the previous one left in its slot (llama-server's prompt cache) and reads
only what differs: cheaper when reading the prompt costs more than generating an answer, which the process's
own recent timings tell (`Rates`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

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


def group_calls(payloads: list[tuple[S, dict[str, Any]]], share_prompt: bool) -> list[Call[S]]:
    """One call per seat, except that seats sending the same body (but for the seed) to the same process share
    one call; it is seeded with its first seat's seed (llama-server seeds each further choice apart)."""
    groups: dict[tuple[str, str], Call[S]] = {}
    calls: list[Call[S]] = []
    for seat, payload in payloads:
        target = seat.client.target
        if target is None or not share_prompt:
            calls.append(Call([seat], payload))
            continue
        key = (target, json.dumps({k: v for k, v in payload.items() if k != "seed"}, sort_keys=True, default=str))
        if key in groups:
            groups[key].seats.append(seat)
        else:
            groups[key] = Call([seat], payload)
            calls.append(groups[key])
    return calls


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


def prompt_key(payload: dict[str, Any]) -> str:
    """What decides the prompt the server reads: everything in the body but the sampling."""
    return json.dumps({k: v for k, v in payload.items() if k not in SAMPLING_KEYS}, sort_keys=True, default=str)


def lanes(calls: list[Call[S]], mode: Literal["auto", "chain", "parallel"],
                        rates: dict[str, Rates]) -> list[list[Call[S]]]:
    """The calls as lanes: each lane's calls go one after another, the lanes at once. Calls with one prompt to
    one process form one lane when `mode` is `chain`, or `auto` and the process's prefill dominates."""
    if mode == "parallel":
        return [[call] for call in calls]
    by_prompt: dict[tuple[str, str], list[Call[S]]] = {}
    out: list[list[Call[S]]] = []
    for call in calls:
        target = call.seats[0].client.target
        if target is None:
            out.append([call])
            continue
        key = (target, prompt_key(call.payload))
        if key not in by_prompt:
            by_prompt[key] = []
            out.append(by_prompt[key])
        by_prompt[key].append(call)
    result: list[list[Call[S]]] = []
    for lane in out:
        target = lane[0].seats[0].client.target
        chain = len(lane) > 1 and (mode == "chain" or (target is not None and rates.setdefault(
            target, Rates()).prefill_dominates(len(prompt_key(lane[0].payload)) / CHARS_PER_TOKEN,
                                               lane[0].payload.get("max_tokens"))))
        result += [lane] if chain else [[call] for call in lane]
    return result
