"""A tool-calling answer is its set of calls (README, "Agents" / "Tool calls").

When a request declares `tools`, each seat's answer is either its calls or "no call":
- **Calls**: every call the seat made (its message's `tool_calls`, else — with `vote.recover_tool_calls` —
  the calls its content consists of, `council.voting.recovery`), each as (name, canonical JSON arguments).
  The seat votes for the *set* of them (duplicates once, order ignored): parallel calls made in another order
  agree. A call whose name is not a declared tool, whose arguments are not a JSON object, or whose arguments
  fail that tool's JSON Schema (`function.parameters`, checked with `jsonschema`, its patterns under a time limit:
  `council.voting.patterns`) is invalid: the seat then abstains, and its ballot lists each call with its verdict.
  So an invalid call never wins.
- **No call**: every seat that calls nothing votes for one answer, `NO_CALL`, whatever it wrote; when "no call"
  wins, the council answers with text and no `tool_calls`, the text of the no-call seat the council's own
  extractor votes for (its usual vote over those replies). A reply cut off by max_tokens that began like a
  written call abstains instead (it was cut off before its call was complete).

`vote.tools: per_argument` votes in two steps: first the *shape* (which functions, how many times each, or no
call), then, among the seats of the winning shape, each argument's value separately. Parallel calls are aligned
before their arguments are compared: the reference is the call set the shape's seats agree on most (a set vote
among them); each other seat's calls to one function are matched to the reference's calls to that function by
the assignment that agrees on the most argument values (every permutation up to 6 calls of one function, else
in sorted order). Each argument then takes the value most of the aligned calls give it (an argument a seat left
out votes for leaving it out). A composed call that fails its schema is never returned, nor one composed twice
(an agent would run it twice): the reference's calls are, then.

Validators are compiled once per request (one per declared tool, on first use), never per seat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import time
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema import exceptions as schema_errors
from jsonschema import validators

from council.voting.extract import _canonical_json, extract
from council.voting.patterns import (
    FORMATS,
    PATTERN_BUDGET,
    PATTERN_TIMEOUT,
    REF_KEYWORDS,
    PatternUnchecked,
    deadline,
    pattern_problem,
    validator_class,
)
from council.voting.recovery import looks_like_a_call, recover
from council.voting.vote import Ballot, Decision, decide

# An empty registry: a tool schema's `$ref`s resolve within it, and a remote one fails rather than being fetched
# (jsonschema's default still downloads `http://` refs: a request could make the router fetch any URL, blocking).
_NO_RETRIEVAL: referencing.Registry[Any] = referencing.Registry()
NO_CALL = "(no call)"  # the vote of a seat that called no tool: no call key can look like it (names have no spaces)
VALID = "valid"
ABSENT = "(absent)"  # per-argument vote: the seat left this argument out
CUT_OFF_CALL = "cut off by max_tokens while writing a tool call"
# A reply cut off before it stated an answer, text or calls: unfinished, it abstains (the engine's text votes too).
CUT_OFF = "cut off by max_tokens before a final answer"
NO_CALL_REQUIRED = "made no call, though tool_choice requires one"
ONE_CALL_ONLY = "left out: parallel_tool_calls is false, so a seat's first call is its answer"
MAX_PERMUTED = 6  # calls to one function aligned by trying every permutation; more are aligned in sorted order

ToolVote = Literal["set", "per_argument"]


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_STRICT = json.JSONDecoder(parse_constant=_reject_constant)


@dataclass(frozen=True)
class ToolCall:
    """One call a seat made: its arguments parsed (or the raw string when they are not JSON), and its verdict:
    `valid`, or why it is not."""

    name: str
    arguments: Any
    verdict: str = VALID
    recovered: bool = False
    defaulted: tuple[str, ...] = ()  # arguments left out: each equal to its declared default (`without_defaults`)

    @property
    def valid(self) -> bool:
        return self.verdict == VALID

    @property
    def key(self) -> str:
        """`name(` + canonical JSON arguments + `)`: equal calls have equal keys (`1.0` == `1`, key order)."""
        return f"{self.name}({_canonical_json(self.arguments)})"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments, "verdict": self.verdict,
                **({"recovered": True} if self.recovered else {}),
                **({"defaulted": list(self.defaulted)} if self.defaulted else {})}

    def openai(self) -> dict[str, Any]:
        """As a returned tool call: a fresh id, `type: function`, the arguments as a JSON string."""
        arguments = json.dumps(self.arguments, ensure_ascii=False)
        try:
            arguments.encode()
        except UnicodeEncodeError:  # a lone surrogate the model wrote as an escape: kept as that escape
            arguments = json.dumps(self.arguments)
        return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": self.name, "arguments": arguments}}


@dataclass(frozen=True)
class ToolAnswer:
    """What one seat answered to a request with tools: its calls (each with its verdict), whether they were
    recovered from its text, and the vote: a call set's key, `NO_CALL`, or None (it abstains, `abstained` says
    why)."""

    calls: tuple[ToolCall, ...] = ()
    recovered: bool = False
    vote: str | None = NO_CALL
    abstained: str | None = None
    shape: str | None = None  # the recovery parser that read the calls (`fenced`, `bare_json`, ...)
    dropped: tuple[ToolCall, ...] = ()  # calls after the first, with `parallel_tool_calls: false`

    def to_json(self) -> dict[str, Any]:
        return {"calls": [c.to_json() for c in self.calls], **({"recovered": True} if self.recovered else {}),
                **({"dropped": [c.to_json() for c in self.dropped]} if self.dropped else {})}


def ballot_text(answer: ToolAnswer, text: str | None) -> str | None:
    """What a seat's ballot shows as its reply: a call set's key (what `similarity` compares and a judge reads; a
    recovered call's JSON, or no text at all, would not say which calls), else its text."""
    return answer.vote if answer.vote not in (None, NO_CALL) else text


def set_key(calls: Sequence[ToolCall]) -> str:
    """The vote of a set of valid calls: their keys, each once, sorted (canonical JSON has no raw newline)."""
    return "\n".join(sorted({c.key for c in calls}))


def unique(calls: Sequence[ToolCall]) -> tuple[ToolCall, ...]:
    """The calls, each once (the first of equal calls), in the order made."""
    seen: set[str] = set()
    kept = []
    for call in calls:
        if call.key not in seen:
            seen.add(call.key)
            kept.append(call)
    return tuple(kept)


def without_defaults(schema: Any, arguments: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The arguments less each one that is not required and equals the `default` its property declares, and the
    names left out (a nested object's as `outer.inner`). The tool gets that value either way (a default is what a
    tool applies to an argument left out), so seats that differ only there make one call and vote together, and a
    default the schema's own type refuses (BFCL's tools declare `"default": null` on strings) is no invalid call."""
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(properties, Mapping):
        return arguments, ()
    required = schema.get("required")
    required = required if isinstance(required, list) else []
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in arguments.items():
        spec = properties.get(key)
        if isinstance(spec, Mapping):
            if key not in required and "default" in spec and _same_json(value, spec["default"]):
                dropped.append(key)
                continue
            if isinstance(value, dict):
                value, inner = without_defaults(spec, value)
                dropped += [f"{key}.{name}" for name in inner]
        kept[key] = value
    return (kept, tuple(dropped)) if dropped else (arguments, ())


def _same_json(a: Any, b: Any) -> bool:
    try:
        return _canonical_json(a) == _canonical_json(b)
    except (ValueError, RecursionError):  # a default that is not JSON (a schema built in Python) equals nothing
        return False


def schema_problem(schema: Any) -> str | None:
    """Why `schema` (a tool's `parameters`) is not a valid JSON Schema, or not one the router can check, or None.
    Checking one walks jsonschema's metaschema, milliseconds per tool, and an agent sends the same tools with every
    turn: the verdict is kept per schema (its canonical JSON)."""
    try:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # not JSON (a caller's own objects): checked as it is, not kept
        return _check_schema(schema)
    return _cached_problem(key)


@functools.lru_cache(maxsize=1024)
def _cached_problem(key: bytes) -> str | None:
    return _check_schema(orjson.loads(key))


def _check_schema(schema: Any) -> str | None:
    if not isinstance(schema, Mapping | bool):
        # jsonschema looks `$schema` up in it first: a number there is a TypeError, not a SchemaError.
        return f"{schema!r} is not a JSON Schema (an object)"
    if isinstance(schema, Mapping) and not isinstance(dialect := schema.get("$schema", ""), str):
        # looked up before the metaschema can say so: a number there was an AttributeError from urllib
        return f"$schema must be a string (a metaschema's URI), not {dialect!r}"
    try:
        kind = validators.validator_for(schema, default=validators.Draft202012Validator)
        try:
            kind.check_schema(schema, format_checker=FORMATS)
        except schema_errors.SchemaError as exc:
            return str(exc.message)
        if isinstance(schema, Mapping) and "type" in schema and "object" not in (
                [schema["type"]] if isinstance(schema["type"], str) else schema["type"]):
            # a call's arguments are always a JSON object: no call could pass (OpenAI refuses it too)
            return f"`type` {schema['type']!r} admits no JSON object, and a call's arguments always are one"
        # The refs first: the pattern walk follows them, each to a schema, once they are known to lead to one.
        return _ref_problem(schema, kind) or pattern_problem(schema)[1]
    except Exception as exc:  # jsonschema or referencing raising on a schema they did not expect (`$schema:
        # "http://["`): the request is at fault (400 `invalid_tools`), never the router (a 500)
        shown = str(exc) if len(str(exc)) <= 200 else str(exc)[:197] + "..."
        return f"it cannot be checked: {type(exc).__name__}: {shown}"


def _ref_problem(schema: Mapping[str, Any] | bool, kind: Any) -> str | None:
    refs = list(_refs(schema))
    dialect = str(schema.get("$schema", "")) if isinstance(schema, dict) else ""
    spec = referencing.jsonschema.specification_with(dialect, default=referencing.jsonschema.DRAFT202012)
    resolver = _NO_RETRIEVAL.resolver_with_root(spec.create_resource(schema))
    for ref in refs:
        try:
            resolver.lookup(ref)
        except referencing.exceptions.Unresolvable:
            return f"$ref {ref!r} does not resolve within the tool's schema (remote schemas are never fetched)"
    return _target_problem(schema, spec, resolver, kind)


# Keywords whose subschemas check the same value as the schema they are in; the others descend into a part of it
# (a property, an item, a name). A loop through these and `$ref`s alone never reaches a smaller value.
_IN_PLACE = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas", "dependencies", "extends")


def _in_place(contents: Mapping[str, Any]) -> set[int]:
    found: set[int] = set()
    for keyword in _IN_PLACE:
        value = contents.get(keyword)
        if keyword in ("dependentSchemas", "dependencies") and isinstance(value, Mapping):
            found.update(id(each) for each in value.values())
        elif isinstance(value, list):
            found.update(id(each) for each in value)
        elif value is not None:
            found.add(id(value))
    return found


def _target_problem(schema: Mapping[str, Any] | bool, spec: Any, resolver: Any, kind: Any) -> str | None:
    """Why a `$ref` the checker would follow cannot be followed: it points at something that is not a schema
    (`#/required`, a `type`'s string: jsonschema raises on it) or at no valid one (outside the keywords the
    metaschema check covered), or it loops back to where it is without descending into the arguments (checking a
    call would recurse until Python's limit). The schema's subschemas and every `$ref` target are walked once,
    without recursion (a chain of refs can be long), each `$ref` resolved where it is (a nested `$id` included)."""
    edges: dict[int, list[int]] = {}  # a subschema (its id()) -> those checked against the same value
    ref_of: dict[int, str] = {}
    todo: list[tuple[Any, Any]] = [(spec.create_resource(schema), resolver)]
    targets: list[tuple[str, Any, Any]] = []  # walked once the metaschema-checked tree is
    while todo or targets:
        if not todo:
            ref, contents, at = targets.pop()
            if id(contents) in edges:
                continue
            try:  # outside the keywords the metaschema check walked: jsonschema would apply it unchecked
                kind.check_schema(contents, format_checker=FORMATS)
            except schema_errors.SchemaError as exc:
                return f"$ref {ref!r} points at no valid JSON Schema: {exc.message}"
            todo.append((spec.create_resource(contents), at))
            continue
        resource, at = todo.pop()
        contents = resource.contents
        if not isinstance(contents, Mapping) or id(contents) in edges:
            continue
        in_place = _in_place(contents)
        mine = edges[id(contents)] = []
        for sub in resource.subresources():
            todo.append((sub, at.in_subresource(sub)))
            if id(sub.contents) in in_place:
                mine.append(id(sub.contents))
        for keyword in REF_KEYWORDS:
            if not isinstance(ref := contents.get(keyword), str):
                continue
            try:
                resolved = at.lookup(ref)
            except referencing.exceptions.Unresolvable:
                continue  # under a nested `$id`: the call's check says so (`Toolbox.verdict`)
            if not isinstance(resolved.contents, Mapping | bool):
                return f"$ref {ref!r} points at {resolved.contents!r}, not a schema"
            if isinstance(resolved.contents, Mapping):
                mine.append(id(resolved.contents))
                ref_of.setdefault(id(contents), ref)
                targets.append((ref, resolved.contents, resolved.resolver))
    return _loop_problem(edges, ref_of)


def _loop_problem(edges: Mapping[int, list[int]], ref_of: Mapping[int, str]) -> str | None:
    """A `$ref` on a loop of `edges` (depth-first, without recursion), said as a problem."""
    done: set[int] = set()
    for first in edges:
        if first in done:
            continue
        path = [first]
        on_path = {first}
        left = [iter(edges[first])]
        while left:
            step = next(left[-1], None)
            if step is None:
                node = path.pop()
                on_path.discard(node)
                done.add(node)
                left.pop()
                continue
            if step in on_path:
                loop = path[path.index(step):]
                ref = next(ref_of[node] for node in loop if node in ref_of)  # JSON is a tree: a loop has a $ref
                return (f"$ref {ref!r} leads back to where it is without descending into the arguments: checking "
                        "a call would never end")
            if step not in done and step in edges:
                path.append(step)
                on_path.add(step)
                left.append(iter(edges[step]))
    return None


def _refs(node: Any) -> Iterator[str]:
    """The `$ref`s of a schema, outside subschemas with an `$id` of their own (which resolve against it)."""
    if isinstance(node, dict):
        if isinstance(ref := node.get("$ref"), str):
            yield ref
        for key, value in node.items():
            if key not in ("$ref", "const", "enum", "default", "examples") and not (
                    isinstance(value, dict) and "$id" in value):
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


class Toolbox:
    """The functions one request declared, with a JSON Schema validator per function, compiled on first use, and
    what its `tool_choice` demands: `required` (a seat that calls nothing abstains) or a named function (only
    calls to it are valid); `parallel`: False where `parallel_tool_calls: false` allows one call per answer."""

    def __init__(self, tools: Sequence[Mapping[str, Any]], choice: Any = None, parallel: bool = True) -> None:
        self.parallel = parallel
        named = choice.get("function") if isinstance(choice, Mapping) else None
        self.only: str | None = named.get("name") if isinstance(named, Mapping) else None
        self.required = choice == "required" or self.only is not None
        self.schemas: dict[str, Any] = {}
        for tool in tools:
            function = tool.get("function") if isinstance(tool, Mapping) else None
            if isinstance(function, Mapping) and isinstance(function.get("name"), str):
                parameters = function.get("parameters")
                self.schemas[function["name"]] = parameters if parameters is not None else {"type": "object"}
        self._validators: dict[str, Any] = {}
        self._pattern_time = PATTERN_BUDGET  # left to this request's pattern searches, every seat's calls together

    def __bool__(self) -> bool:
        return bool(self.schemas)

    @property
    def names(self) -> Collection[str]:
        return self.schemas.keys()

    def _validator(self, name: str) -> Any:
        """The compiled validator, or the reason the tool's schema is not one."""
        if name not in self._validators:
            schema = self.schemas[name]
            problem = schema_problem(schema)
            if problem is None:
                self._validators[name] = validator_class(schema)(schema, registry=_NO_RETRIEVAL)
            else:
                self._validators[name] = f"{name}'s parameters are not a valid JSON Schema: {problem}"
        return self._validators[name]

    def verdict(self, name: str, arguments: Any) -> str:
        """`valid`, or why a call to `name` with these (parsed) arguments is not."""
        if name not in self.schemas:
            known = ", ".join(sorted(self.schemas)) or "none"
            return f"{name!r} is not a declared tool (declared: {known})"
        if self.only is not None and name != self.only:
            return f"tool_choice names {self.only}, not {name}"
        if not isinstance(arguments, dict):
            return "arguments are not a JSON object"
        validator = self._validator(name)
        if isinstance(validator, str):
            return validator
        # Every call is timed, not only those to tools the request check saw patterns in: a pattern it did not see
        # (one way or another) would otherwise get a fresh PATTERN_TIMEOUT for each search, and no budget at all.
        started = time.monotonic()
        window = deadline.set(started + min(PATTERN_TIMEOUT, self._pattern_time))
        try:
            error = schema_errors.best_match(validator.iter_errors(arguments))
        except referencing.exceptions.Unresolvable as exc:  # a $ref the request check could not see (nested $id)
            return f"{name}'s parameters cannot be checked: $ref {getattr(exc, 'ref', exc)!r} does not resolve"
        except PatternUnchecked as exc:
            return (f"arguments of {name} cannot be checked: {exc} "
                    f"({PATTERN_TIMEOUT * 1000:g} ms a call, {PATTERN_BUDGET * 1000:g} ms a request)")
        except Exception as exc:  # a schema jsonschema cannot apply (a $ref chain past Python's recursion limit, say)
            # that the request check let through: the seat abstains, saying why, and the vote goes on
            shown = str(exc) if len(str(exc)) <= 200 else str(exc)[:197] + "..."
            return f"arguments of {name} cannot be checked: {type(exc).__name__}: {shown}"
        finally:
            deadline.reset(window)
            self._pattern_time -= time.monotonic() - started
        if error is None:
            return VALID
        where = f" at {error.json_path}" if error.path else ""
        message = error.message if len(error.message) <= 300 else error.message[:297] + "..."  # it quotes the value
        return f"arguments fail {name}'s schema{where}: {message}"

    def call(self, name: str, arguments: Any, recovered: bool = False) -> ToolCall:
        """A call as a member wrote it (arguments as a JSON string, as OpenAI sends them, or already an object),
        judged."""
        parsed = arguments
        if isinstance(arguments, str):
            try:
                parsed = _STRICT.decode(arguments.strip()) if arguments.strip() else {}
                if isinstance(parsed, str) and parsed.strip().startswith("{"):
                    parsed = _STRICT.decode(parsed.strip())  # double-encoded: a JSON string holding the object
            except (ValueError, RecursionError):
                return ToolCall(name, arguments, "arguments are not valid JSON", recovered)
        try:
            _canonical_json(parsed)
        except (ValueError, RecursionError):
            return ToolCall(name, arguments, "arguments are not valid JSON", recovered)
        if isinstance(parsed, dict) and name in self.schemas:
            kept, defaulted = without_defaults(self.schemas[name], parsed)
            if defaulted:
                verdict = self.verdict(name, kept)
                if verdict == VALID:
                    return ToolCall(name, kept, verdict, recovered, defaulted)
                # A schema can tie arguments together (`dependentRequired`, `oneOf` of required sets): where leaving
                # the defaults out breaks it, the call stands as written.
                as_written = self.verdict(name, parsed)
                return ToolCall(name, parsed, as_written, recovered) if as_written == VALID else ToolCall(
                    name, kept, verdict, recovered, defaulted)
        return ToolCall(name, parsed, self.verdict(name, parsed), recovered)


def read_answer(message: Mapping[str, Any] | None, text: str | None, finish_reason: str | None, toolbox: Toolbox,
                recover_calls: bool = True) -> ToolAnswer:
    """One seat's answer to a request with tools: its native calls, else (with `recover_calls`) the calls its
    text consists of, else no call."""
    native = (message or {}).get("tool_calls") or []
    calls: list[ToolCall] = []
    shape = None
    for item in native if isinstance(native, list) else []:
        function = item.get("function") if isinstance(item, Mapping) else None
        function = function if isinstance(function, Mapping) else {}
        name = function.get("name")
        calls.append(toolbox.call(name if isinstance(name, str) else "", function.get("arguments") or "{}"))
    if not calls and recover_calls:
        found = recover(text, toolbox.names)
        if found is not None:
            written, shape = found
            calls = [toolbox.call(name, arguments, recovered=True) for name, arguments in written]
    recovered = bool(calls) and not native
    dropped: tuple[ToolCall, ...] = ()
    if not toolbox.parallel and len(calls) > 1:
        # OpenAI's promise is at most one call per answer (the agent asks again for the next), and llama-server
        # keeps it for native calls by letting the model write only its first; calls recovered from text, or a
        # provider's, are held to it here the same way, rather than discarding the seat. A repeat of the first
        # call goes too: a relayed model's calls are returned as they are, and the agent would run it twice.
        calls, dropped = [calls[0]], tuple(dataclasses.replace(c, verdict=ONE_CALL_ONLY) for c in calls[1:])
    if native and finish_reason == "length":
        # cut off by max_tokens while writing its calls (a grouped seat streamed by llama-server keeps the partial
        # arguments): unfinished, as a call cut off in its text is, not an invalid call
        return ToolAnswer(tuple(calls), vote=None, abstained=CUT_OFF_CALL)
    if not calls and toolbox.required:
        return ToolAnswer(vote=None, abstained=NO_CALL_REQUIRED)
    if not calls:
        if finish_reason == "length":
            # Unfinished: "no call" is an answer only a finished reply gives (prose cut off may have been leading
            # up to its calls), as a cut-off text reply votes only with an answer it stated.
            return ToolAnswer(vote=None, abstained=CUT_OFF_CALL if looks_like_a_call(text, toolbox.names) else CUT_OFF)
        return ToolAnswer()
    invalid = [f"{c.name}: {c.verdict}" for c in calls if not c.valid]
    if invalid:
        return ToolAnswer(tuple(calls), recovered, None, "invalid tool call: " + "; ".join(invalid), shape, dropped)
    return ToolAnswer(tuple(calls), recovered, set_key(calls), shape=shape, dropped=dropped)


def recovered_calls(content: str | None, toolbox: Toolbox) -> tuple[ToolCall, ...] | None:
    """The calls a reply's text consists of, when every one is valid (a passthrough with recovery returns them);
    None otherwise (the reply is relayed as it came)."""
    answer = read_answer(None, content, None, toolbox)
    return answer.calls if answer.calls and answer.vote is not None else None


# ---- the decision --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolDecision:
    """The council's decision on a request with tools, and the calls it answers with (none: it answers with the
    speaker's text). `arguments` shows the per-argument votes (`per_argument` only); `fallback` says why the
    composed calls were not returned."""

    decision: Decision
    calls: tuple[ToolCall, ...]
    arguments: list[dict[str, Any]] | None = None
    fallback: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"calls": [c.to_json() for c in self.calls],
                **({"arguments": self.arguments} if self.arguments is not None else {}),
                **({"fallback": self.fallback} if self.fallback else {})}


def _with_speaker(decision: Decision, speaker: Ballot) -> Decision:
    return dataclasses.replace(decision, speaker=speaker.member, text=speaker.text)


def _no_call_speaker(decision: Decision, ballots: Sequence[Ballot], how: str, strategy: str,
                     tie_break: Sequence[str], temperature: float) -> Decision:
    """"No call" won: the council's text is the no-call reply its extractor votes for among the no-call seats where
    most of them agree on it, else the first no-call seat's in council order (a self-consistency council's greedy
    seat). Free text rarely agrees word for word: every reply its own vote, the tie went to the quickest, the
    shortest, and after an agent's tool results that was a sample restating the question ("How far is it from
    Berlin to Munich by road?") over four that answered it ("... is 584 km")."""
    if strategy not in ("majority", "weighted", "confidence"):
        return decision  # similarity picked its medoid, a judge its answer
    voters = [b for b in ballots if b.answer == NO_CALL]
    texts = [dataclasses.replace(b, answer=extract(b.text or "", how)) for b in voters]
    try:
        inner = decide(texts, strategy, tie_break, temperature=temperature)
    except (ValueError, ArithmeticError):  # every no-call reply abstains under the extractor: the first speaks
        return decision
    if inner.agreement <= 0.5:  # (a no-call seat whose reply the extractor reads as nothing never speaks)
        first = min((b for b in texts if b.answer is not None), key=lambda b: b.order)
        return _with_speaker(decision, next(b for b in voters if b.member == first.member))
    speaker = next(b for b in voters if b.member == inner.speaker)
    return _with_speaker(decision, speaker)


def _shape(answer: ToolAnswer) -> str | None:
    if answer.vote is None:
        return None
    if answer.vote == NO_CALL:
        return NO_CALL
    return "\n".join(sorted(c.name for c in unique(answer.calls)))


def decide_tools(ballots: Sequence[Ballot], answers: Mapping[str, ToolAnswer], toolbox: Toolbox, *,
                 mode: ToolVote = "set", strategy: str = "majority", tie_break: Sequence[str] = ("weight", "latency",
                 "order"), temperature: float = 1.0, how: str = "auto",
                 decision: Decision | None = None) -> ToolDecision:
    """Decide on a request with tools. `ballots` vote with each seat's `ToolAnswer.vote` (`answers` by member);
    `decision` is one already made (a judge's pick), whose calls are then the council's. Raises `VoteError` when
    every seat abstained, as `decide` does."""
    if decision is None and mode == "per_argument" and strategy in ("majority", "weighted", "confidence"):
        return _per_argument(ballots, answers, toolbox, strategy, tie_break, temperature, how)
    if decision is None:
        decision = decide(ballots, strategy, tie_break, temperature=temperature)
    if decision.answer == NO_CALL:
        return ToolDecision(_no_call_speaker(decision, ballots, how, strategy, tie_break, temperature), ())
    speaker = decision.speaker or decision.winner_members[0]
    return ToolDecision(decision, unique(answers[speaker].calls))


def _per_argument(ballots: Sequence[Ballot], answers: Mapping[str, ToolAnswer], toolbox: Toolbox, strategy: str,
                  tie_break: Sequence[str], temperature: float, how: str) -> ToolDecision:
    shapes = [dataclasses.replace(b, answer=_shape(answers[b.member])) for b in ballots]
    by_shape = decide(shapes, strategy, tie_break, temperature=temperature)
    if by_shape.answer == NO_CALL:
        return ToolDecision(_no_call_speaker(by_shape, ballots, how, strategy, tie_break, temperature), ())
    voters = [b for b in ballots if b.member in by_shape.winner_members]
    reference = decide(voters, strategy, tie_break, temperature=temperature)  # the set they agree on most
    ref_calls = unique(answers[reference.speaker or reference.winner_members[0]].calls)
    slots: list[tuple[ToolCall, list[tuple[Ballot, ToolCall]]]] = [(c, []) for c in ref_calls]
    for ballot in voters:
        aligned = _align(ref_calls, unique(answers[ballot.member].calls))
        for slot, call in zip(slots, aligned, strict=True):
            slot[1].append((ballot, call))
    composed: list[ToolCall] = []
    shown: list[dict[str, Any]] = []
    for index, (ref, votes) in enumerate(slots):
        names = sorted({k for _, call in votes for k in call.arguments})
        arguments: dict[str, Any] = {}
        for argument in names:
            values: dict[str, Any] = {}
            cast = []
            for ballot, call in votes:
                key = _value(call.arguments, argument)
                values.setdefault(key, call.arguments.get(argument))
                cast.append(dataclasses.replace(ballot, answer=key))
            won = decide(cast, strategy, tie_break, temperature=temperature)
            if won.answer != ABSENT:
                arguments[argument] = values[won.answer]
            shown.append({"call": index, "name": ref.name, "argument": argument,
                          "value": None if won.answer == ABSENT else values[won.answer], "absent": won.answer == ABSENT,
                          "votes": won.votes})
        composed.append(toolbox.call(ref.name, arguments))
    fallback = None
    if not all(c.valid for c in composed):
        why = "; ".join(f"{c.name}: {c.verdict}" for c in composed if not c.valid)
        fallback = f"the composed calls fail their schema ({why})"
    elif len(distinct := unique(composed)) < len(composed):
        # Two slots composed the same call: returned twice, an agent would run it twice, and as a set (each call
        # once) it no longer has the shape that won.
        repeated = ", ".join(c.key for c in distinct if sum(d.key == c.key for d in composed) > 1)
        fallback = f"the composed calls repeat {repeated}"
    if fallback is not None:
        return ToolDecision(dataclasses.replace(by_shape, answer=reference.answer, text=reference.answer,
                                                speaker=reference.speaker), ref_calls, shown,
                            f"{fallback}: the reference calls are returned")
    key = set_key(composed)
    return ToolDecision(dataclasses.replace(by_shape, answer=key, text=key, speaker=reference.speaker),
                        tuple(composed), shown)


def _value(arguments: Mapping[str, Any], name: str) -> str:
    return _canonical_json(arguments[name]) if name in arguments else ABSENT


def _agreement(a: ToolCall, b: ToolCall) -> int:
    """How many argument values two calls share (an argument both left out counts as shared)."""
    return sum(_value(a.arguments, k) == _value(b.arguments, k) for k in set(a.arguments) | set(b.arguments))


def _align(reference: Sequence[ToolCall], calls: Sequence[ToolCall]) -> list[ToolCall]:
    """`calls` (the same functions as many times each as `reference`) in the reference's order: per function,
    the assignment agreeing on the most argument values (ties: the first permutation in sorted order)."""
    out: list[ToolCall | None] = [None] * len(reference)
    for name in {c.name for c in reference}:
        where = [i for i, c in enumerate(reference) if c.name == name]
        mine = sorted((c for c in calls if c.name == name), key=lambda c: c.key)
        if len(mine) <= MAX_PERMUTED:
            best = max(itertools.permutations(mine),
                       key=lambda p: sum(_agreement(reference[i], c) for i, c in zip(where, p, strict=True)))
        else:
            best = tuple(mine)
        for i, call in zip(where, best, strict=True):
            out[i] = call
    assert all(c is not None for c in out), "a seat of the winning shape calls the same functions"
    return [c for c in out if c is not None]


# --- instructions a council adds to its members' system message (`vote.tool_instructions`) ---------------------

TOOL_RULES = (
    "You may call the functions described in the tools. If the request needs one or more calls, reply with only "
    "a JSON list of every call it needs, nothing else: "
    '[{"name": "<function name>", "arguments": {<argument>: <value>, ...}}, ...]. '
    "When the user asks for several things, or for the same thing with several values, write one call for each. "
    "If no function fits the request, or a required value is missing, do not call any function: answer in plain "
    "text.")
ONE_CALL_RULES = TOOL_RULES.replace("When the user asks for several things, or for the same thing with several "
                                    "values, write one call for each. ", "Write at most one call. ")
# Added where the conversation holds results (an agent's loop after its first call). Without it, and with the
# calls and results in the chat template's own tags, Qwen2.5-Coder-1.5B echoed the results as `<tool_response>` or
# called again on 10 of 10 such turns (greedy); with it and the history in the rules' own words (`calls_as_text`),
# it answered all 10 in text (75 of 80 samples at 0.7), and still made the second call a chained task needs (4 of
# 4). Qwen2.5-Coder-0.5B repeats its call either way.
FOLLOW_UP_RULE = (" The conversation already holds the results of calls made for this request: if they answer it, "
                  "answer the user in plain text from them, without calling a function again.")
RESULTS = "Results of your calls:"


def calls_as_text(messages: Sequence[Any]) -> tuple[list[Any], bool]:
    """An agent's conversation in the words the council's tool rules ask for: each assistant turn's `tool_calls`
    as the JSON list those rules say to write (after its text), and each run of `tool` messages as one user
    message, `Results of your calls:` then `- name with ARGUMENTS: RESULT` a line; and whether results came after
    its last user turn (the request continues from them). A conversation whose results hold an image or other
    media is returned as it came. A member given the rules then reads its own past calls as it was told to write
    them, not in its chat template's tags, which small models echo back."""
    if any(_holds_media(m) for m in messages):
        return list(messages), False  # a result holding an image (a screenshot): as sent, or the image is lost
    out: list[Any] = []
    calls: dict[str, tuple[str, Any]] = {}  # tool_call_id -> (name, arguments)
    results: list[str] = []
    for message in messages:
        role = message.get("role") if isinstance(message, Mapping) else None
        if role == "tool":
            name, arguments = calls.get(str(message.get("tool_call_id")), ("a call", None))
            # Not `name(arguments)`: sampled seats copied that line back as their answer (a call's echo).
            shown = name if arguments is None else f"{name} with {json.dumps(arguments, ensure_ascii=False)}"
            results.append(f"- {shown}: {_text(message.get('content'))}")
            continue
        if results:
            out.append({"role": "user", "content": "\n".join([RESULTS, *results])})
            results = []
        made = message.get("tool_calls") if role == "assistant" else None
        if not isinstance(made, list) or not made:
            out.append(message)
            continue
        listed = []
        for call in made:
            fn = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(fn, Mapping):
                continue
            arguments = fn.get("arguments")
            if isinstance(arguments, str):
                with contextlib.suppress(ValueError):
                    arguments = json.loads(arguments)
            calls[str(call.get("id"))] = (str(fn.get("name")), arguments)
            listed.append({"name": fn.get("name"), "arguments": arguments})
        said = _text(message.get("content"))
        text = json.dumps(listed, ensure_ascii=False)
        out.append({**{k: v for k, v in message.items() if k != "tool_calls"},
                    "content": f"{said}\n{text}" if said else text})
    if results:
        out.append({"role": "user", "content": "\n".join([RESULTS, *results])})
    # Results the current request continues from: after its last user turn (a new question later in a session,
    # "And in Rome?", is asked afresh).
    roles = [m.get("role") for m in messages if isinstance(m, Mapping)]
    last_user = max((i for i, r in enumerate(roles) if r == "user"), default=-1)
    return out, "tool" in roles[last_user + 1:]


def _holds_media(message: Any) -> bool:
    content = message.get("content") if isinstance(message, Mapping) and message.get("role") == "tool" else None
    return isinstance(content, list) and any(isinstance(p, Mapping) and p.get("type", "text") != "text"
                                             for p in content)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, Mapping))
    return "" if content is None else json.dumps(content, ensure_ascii=False)


def tool_instructions(tools: Sequence[Mapping[str, Any]], how: str, parallel: bool = True) -> str | None:
    """What a council adds to its members' system message when the request declares `tools`: `brief`, the rules
    of an answer (every call as a JSON list; plain text when no tool fits: small models otherwise write one call
    for a parallel question, or call something for a question no tool answers); `listed`, the rules after each
    tool's name, description and parameters, for members whose chat template renders no tools."""
    if how == "none" or not tools:
        return None
    rules = TOOL_RULES if parallel else ONE_CALL_RULES
    if how != "listed":
        return rules
    lines = ["Functions:"]
    for tool in tools:
        fn = tool.get("function") or {}
        lines.append(json.dumps({"name": fn.get("name"), "description": fn.get("description") or "",
                                 "parameters": fn.get("parameters") or {}}, separators=(",", ":")))
    return "\n".join([*lines, "", rules])
