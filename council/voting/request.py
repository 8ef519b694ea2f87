"""One council request, built once where it comes in: what the vote needs (the question, the council's own
options, whether the answer carries logprobs, the tools the client declared) and what every member is sent
(`members_payload`, the pass-through fields, to which each seat adds its own sampling).

The HTTP layer builds it from a validated body (`council.server.requests.council_request`); evaluation, tests and
benchmarks build it from a plain body with `CouncilRequest.of`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson


def last_user_text(messages: Iterable[Any] | None) -> str:
    """The last user turn's text (content parts: their text parts, space-joined): the council's question, for
    the judge, the dashboard and evaluation records."""
    listed = messages if isinstance(messages, Sequence) else list(messages or ())  # a request's list: no copy
    for message in reversed(listed):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(str(p.get("text") or "") for p in content
                                if isinstance(p, Mapping) and p.get("type", "text") == "text")
            return "" if content is None else str(content)
    return ""


def for_members(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """`body` with the tools its members get: none at all for `tool_choice: "none"`; only the named function,
    with `tool_choice: "required"`, for a named one (llama-server reads `tool_choice` only as a string, and
    an object would quietly become `auto`). Any other body is returned as it is, uncopied."""
    choice = body.get("tool_choice")
    if choice == "none":
        return {k: v for k, v in body.items() if k not in ("tools", "tool_choice", "parallel_tool_calls")}
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name")
        tools = [t for t in body.get("tools") or () if (t.get("function") or {}).get("name") == name]
        return {**body, "tools": tools, "tool_choice": "required"}
    return body


@dataclass(frozen=True)
class CouncilRequest:
    """A chat request to a council. `members_payload` is shared, never changed: each seat's body is a copy with
    its own sampling on top (`council.voting.engine.member_payload`)."""

    members_payload: Mapping[str, Any]
    question: str = ""
    early_stop: bool = True  # `council: {early_stop: false}`: wait for every member (what evaluation asks)
    logprobs: bool = False  # the answer carries the speaker's token logprobs
    tools: Sequence[Mapping[str, Any]] = ()  # the functions members may call (`for_members`: tool_choice applied)
    # Who asked (the HTTP API's name for the caller's key), kept on the ballot from the moment it is stored: only
    # they and the admin scope may read it. None outside the API (evaluation, tests, benchmarks).
    owner: str | None = None

    @classmethod
    def of(cls, body: Mapping[str, Any], *, early_stop: bool = True) -> CouncilRequest:
        """A request whose members get `body` (an OpenAI chat body without the router's own fields), its tools
        as `tool_choice` leaves them (`for_members`)."""
        body = for_members(body)
        return cls(members_payload=body, question=last_user_text(body.get("messages")), early_stop=early_stop,
                   logprobs=bool(body.get("logprobs")), tools=body.get("tools") or ())


def dumps(doc: Any) -> bytes:
    """`doc` as JSON, by orjson; what orjson refuses to write (an integer past 64 bits, a lone UTF-16 surrogate:
    a model's tool-call arguments may hold either) by the standard library, which writes the integer exactly and
    escapes the surrogate, so an answer is never lost to its encoding. A float that is not finite is null either
    way (as orjson writes it; the standard library's `Infinity` is no JSON a client parses)."""
    try:
        return orjson.dumps(doc)
    except TypeError:
        return json.dumps(_finite(doc), separators=(",", ":")).encode()


def _finite(doc: Any) -> Any:
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {k: _finite(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [_finite(v) for v in doc]
    return doc
