"""Tool calls small models write as text: one small parser per shape (as vLLM keeps one tool parser per format).

Small models often write a call in their reply's content instead of the tool-call syntax their chat template's
parser reads (Qwen2.5-Coder's habit: a fenced ```json {"name": ..., "arguments": ...}``` block). When the request
declared tools and a reply's content is *nothing but* calls, `recover` returns them; a reply that also says
something else (prose that mentions JSON, an example followed by an explanation) is text, never a call.

Shapes, tried in order (each on the content without a leading `<think>` block):
- `tool_call_tags`: `<tool_call>{...}</tool_call>`, one or more (the last may be left unclosed);
- `other_tags`: the same in `<tools>`, `<tool_calls>`, `<function_call>` or `<json>` tags (Qwen2.5's template lists
  the tools inside `<tools></tools>`, and its sampled replies wrap their calls in the same tags);
- `fenced`: one or more fenced code blocks (```json, ```tool_call or bare ```), each holding calls as JSON;
- `bare_json`: JSON objects, or lists of them, one after another;
- `pythonic`: `[get_weather(city="Paris"), ...]` or one such call, keyword arguments only (BFCL's prompt
  format and Llama 3.2's); only when every function it names is declared, since code looks the same;
- `introduced`: one line of prose ending with a colon ("Here is the JSON response:"), then calls in one of the
  shapes above;
- `repaired`: JSON calls as small models mangle them, mended, then read as above: a chat template's escaped
  braces copied (`{{"name": ..., "arguments": {...}}}`), call objects quoted as strings without escaping
  (`["{"name": ...}"]`), Python's `True`/`False`/`None`. Seen on BFCL (bench/agents.py): the sampled seats
  of Qwen2.5-Coder-1.5B write many of their calls so.

A JSON call is an object with a string `name` and an `arguments` (or `parameters`) object, or a JSON string
holding one; OpenAI's own `{"type": "function", "function": {...}}` and `{"tool_calls": [...]}` wrappers are
read too. An object with `name` alone is a call without arguments only when that name is declared (else
`{"name": "Bob"}` is data). A pair `["<declared name>", {arguments}]` is a call too. Whether the names are
declared and the arguments fit the tools' schemas is decided afterwards, by the vote (`council.voting.tools`):
a recovered call that fails abstains there, with the reason.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Collection
from typing import Any

# (name, arguments): what a parser recovered; the arguments are as written (an object, or a string of JSON).
Recovered = list[tuple[str, Any]]
Parser = Callable[[str, Collection[str]], Recovered | None]

_THINK = re.compile(r"\A\s*<think(?:ing)?>.*?</think(?:ing)?>", re.S | re.I)
_TAG = re.compile(r"<tool_call>(?P<body>.*?)(?:</tool_call>|\Z)", re.S)
_OTHER_TAGS = ("tools", "tool_calls", "function_call", "json")
_OTHER_OPENINGS = tuple(f"<{t}>" for t in _OTHER_TAGS)
_CALL_OPENINGS = ("{", "[", "```", "<tool_call>", *_OTHER_OPENINGS)  # how the JSON shapes begin
_PYTHONIC_START = re.compile(r"\[?\s*([A-Za-z_][\w.\-]*)\s*\(")  # group 1: the function's name
_OTHER_TAG = re.compile(rf"<(?P<tag>{'|'.join(_OTHER_TAGS)})>(?P<body>.*?)(?:</(?P=tag)>|\Z)", re.S)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON|tool_call|tool_calls)?[ \t]*\n(?P<body>.*?)\n?[ \t]*```", re.S)
_FENCE_LINE = re.compile(r"^[ \t]*```[ \t]*[\w-]*[ \t]*$", re.M)
_LEAD_IN = re.compile(r"\A[^\n{}\[\]`<]{1,200}:[ \t]*\n")
_DECODER = json.JSONDecoder()
_ARGUMENTS = ("arguments", "parameters")
_WRAPPER_KEYS = {"type", "id"}


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_STRICT = json.JSONDecoder(parse_constant=_reject_constant)


def _values(text: str) -> list[Any] | None:
    """The JSON values `text` consists of, one after another (whitespace between), or None if it holds
    anything else."""
    values, at, end = [], 0, len(text)
    while True:
        while at < end and text[at] in " \t\r\n,;":
            at += 1
        if at == end:
            return values or None
        try:
            value, at = _STRICT.raw_decode(text, at)
        except ValueError:
            return None
        values.append(value)


def _as_call(value: Any, declared: Collection[str]) -> Recovered | None:
    """The calls one JSON value holds, or None when it is not (only) calls."""
    if isinstance(value, list):
        if len(value) == 2 and isinstance(value[1], dict) and isinstance(value[0], str) and value[0] in declared:
            return [(value[0], value[1])]  # ["get_weather", {"city": "Paris"}]
        calls: Recovered = []
        for item in value:
            found = _as_call(item, declared)
            if found is None:
                return None
            calls += found
        return calls or None
    if not isinstance(value, dict):
        return None
    if set(value) == {"tool_calls"}:
        return _as_call(value["tool_calls"], declared)
    if isinstance(value.get("function"), dict) and set(value) - {"function"} <= _WRAPPER_KEYS:
        return _as_call(value["function"], declared)
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    rest = set(value) - {"name"} - _WRAPPER_KEYS
    given = [k for k in _ARGUMENTS if k in rest]
    if rest - set(_ARGUMENTS) or len(given) > 1:
        return None  # other keys: data that has a `name`, not a call
    if not given:
        return [(name.strip(), {})] if name.strip() in declared else None
    arguments = value[given[0]]
    if isinstance(arguments, str):
        try:
            arguments = _STRICT.decode(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return [(name.strip(), arguments)]


def _json_calls(text: str, declared: Collection[str]) -> Recovered | None:
    try:
        values = _values(text)
        return None if values is None else _as_call(values, declared)
    except RecursionError:  # nested past Python's limit (a model looping `[[[[`): no call a schema could check
        return None


def _blocks(text: str, opening: str | tuple[str, ...], pattern: re.Pattern[str],
            declared: Collection[str]) -> Recovered | None:
    """Blocks matched by `pattern` with nothing but whitespace around them, each holding calls as JSON."""
    if not text.startswith(opening):
        return None
    calls: Recovered = []
    at = 0
    for match in pattern.finditer(text):
        if text[at:match.start()].strip():
            return None
        found = _json_calls(match.group("body").strip(), declared)
        if found is None:
            return None
        calls += found
        at = match.end()
    return calls if calls and not text[at:].strip() else None


def tool_call_tags(text: str, declared: Collection[str]) -> Recovered | None:
    """`<tool_call>{"name": ..., "arguments": ...}</tool_call>` (Hermes, Qwen), as the server left them."""
    return _blocks(text, "<tool_call>", _TAG, declared)


def other_tags(text: str, declared: Collection[str]) -> Recovered | None:
    """`<tools>{...}</tools>`, `<tool_calls>`, `<function_call>`, `<json>`: calls in tags no parser reads."""
    return _blocks(text, _OTHER_OPENINGS, _OTHER_TAG, declared)


def fenced(text: str, declared: Collection[str]) -> Recovered | None:
    """Fenced code blocks, nothing but whitespace around them, each holding calls as JSON."""
    return _blocks(text, "```", _FENCE, declared)


def bare_json(text: str, declared: Collection[str]) -> Recovered | None:
    """JSON call objects, or lists of them, and nothing else."""
    if not text.startswith(("{", "[")):
        return None
    return _json_calls(text, declared)


def _literal(node: ast.expr) -> Any:
    value = ast.literal_eval(node)
    json.dumps(value)  # only JSON-able values: a tuple becomes a list, a set is refused
    return json.loads(json.dumps(value))


def pythonic(text: str, declared: Collection[str]) -> Recovered | None:
    """`[f(a=1, b="x"), g()]` or `f(a=1)`: keyword arguments with literal values, every name declared."""
    if not _PYTHONIC_START.match(text):
        return None
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError):
        return None
    nodes = tree.elts if isinstance(tree, ast.List) else [tree]
    calls: Recovered = []
    for node in nodes:
        if not isinstance(node, ast.Call) or node.args or any(k.arg is None for k in node.keywords):
            return None
        name = ast.unparse(node.func)
        if name not in declared:
            return None
        try:
            calls.append((name, {str(k.arg): _literal(k.value) for k in node.keywords}))
        except (ValueError, TypeError, SyntaxError, RecursionError):
            return None
    return calls or None


_DIRECT: tuple[Parser, ...] = (tool_call_tags, other_tags, fenced, bare_json, pythonic)


def _direct(text: str, declared: Collection[str]) -> tuple[Recovered, str] | None:
    for parser in _DIRECT:
        found = parser(text, declared)
        if found:
            return found, parser.__name__
    return None


def introduced(text: str, declared: Collection[str]) -> Recovered | None:
    """One line of prose ending with a colon, then nothing but calls ("Here is the JSON response:\\n\\n{...}")."""
    match = _LEAD_IN.match(text)
    if match is None:
        return None
    found = _direct(text[match.end():].strip(), declared)
    return found[0] if found else None


def among_prose(text: str, declared: Collection[str]) -> Recovered | None:
    """Calls in fenced blocks or `<tool_call>` tags anywhere in prose ("To do this, call:\n```json {...}```, then
    ..."), as vLLM's Hermes parser reads tags anywhere. Prose may show JSON as an example, so here only blocks
    that are wholly calls to declared functions count; other blocks are text. A council reads the whole reply
    before it votes, so it uses this shape; a passthrough does not (it would have to hold back every stream)."""
    fences = list(_FENCE_LINE.finditer(text))  # paired in order: a ```plaintext block's end opens no block
    for blocks in ([m.group("body") for m in _TAG.finditer(text)],
                   [text[a.end():b.start()] for a, b in zip(fences[::2], fences[1::2], strict=False)]):
        calls: Recovered = []
        for block in blocks:
            found = _json_calls(block.strip(), declared)
            if found and all(name in declared for name, _ in found):
                calls += found
        if calls:
            return calls
    return None


def _outside_strings(text: str) -> list[bool]:
    """For each character of `text`, whether it lies outside a JSON string (quotes and escapes followed)."""
    out, inside, escaped = [], False, False
    for char in text:
        if inside:
            out.append(False)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                inside = False
        else:
            inside = char == '"'
            out.append(not inside)
    return out


_QUOTED_OPEN = re.compile(r'([\[,]\s*)"(\{)')
_QUOTED_CLOSE = re.compile(r'(\})"(\s*[\],])')


def _quoted_objects(text: str) -> str:
    """`["{"name": ...}", "{...}"]` → `[{"name": ...}, {...}]`: objects a model put in quotes without escaping."""
    return _QUOTED_CLOSE.sub(r"\1\2", _QUOTED_OPEN.sub(r"\1\2", text))


def _doubled_braces(text: str) -> str:
    """`{{"name": ..., "arguments": {...}}}` → `{"name": ..., "arguments": {...}}`: an object opened with `{{` (a
    template's escape, copied) loses its extra brace, and so does the `}` that closes it."""
    if "{{" not in text:
        return text
    outside = _outside_strings(text)
    drop: set[int] = set()
    opened: list[int | None] = []  # per open brace: the index of an extra brace to drop with it, or None
    for i, char in enumerate(text):
        if not outside[i]:
            continue
        if char == "{":
            extra = i + 1 < len(text) and text[i + 1] == "{" and outside[i + 1]
            opened.append(i if extra else None)
        elif char == "}" and opened:
            extra_at = opened.pop()
            if extra_at is not None:
                drop |= {extra_at, i}
    return "".join(c for i, c in enumerate(text) if i not in drop)


_PYTHON_CONSTANTS = {"True": "true", "False": "false", "None": "null"}
_CONSTANT = re.compile(r"\b(True|False|None)\b")


def _python_constants(text: str) -> str:
    """Python's `True`, `False`, `None` outside strings → JSON's `true`, `false`, `null`."""
    if not _CONSTANT.search(text):
        return text  # most replies: no scan of every character
    outside = _outside_strings(text)
    return _CONSTANT.sub(lambda m: _PYTHON_CONSTANTS[m.group(1)] if outside[m.start()] else m.group(1), text)


_REPAIRS = (_quoted_objects, _doubled_braces, _python_constants)


def repaired(text: str, declared: Collection[str]) -> Recovered | None:
    """Calls in one of the shapes above once their JSON is mended (`_REPAIRS`, each only where it changes
    something; the result must still be nothing but calls)."""
    if not (text.startswith(_CALL_OPENINGS) or _PYTHONIC_START.match(text)):
        return None  # no shape begins so, mended or not (a mend keeps the first character): prose stops here
    mended = text
    for repair in _REPAIRS:
        mended = repair(mended)
    if mended == text:
        return None
    found = _direct(mended, declared)
    return found[0] if found else None


PARSERS: tuple[Parser, ...] = (*_DIRECT, introduced, repaired)


def _content(text: str) -> str:
    return _THINK.sub("", text, count=1).strip()


def recover(text: str | None, declared: Collection[str], prose: bool = False) -> tuple[Recovered, str] | None:
    """The calls `text` consists of and the shape they were written in, or None when it is not only calls; with
    `prose`, also calls to declared functions written in blocks among prose (`among_prose`)."""
    if not text:
        return None
    content = _content(text)
    for parser in (*PARSERS, among_prose) if prose else PARSERS:
        found = parser(content, declared)
        if found:
            return found, parser.__name__
    return None


_OPENERS = (*_CALL_OPENINGS, "<think>", "<thinking>")
_NAME_SO_FAR = re.compile(r"\[?\s*[A-Za-z_][\w.]*(?:\s*\(.*)?", re.S)


def could_be_calls(prefix: str) -> bool:
    """Whether a reply that begins with `prefix` may still turn out to be nothing but calls: a streamed
    passthrough with recovery holds the reply back until this is False (then relays it as it came) or the reply
    ends (then it is calls, or relayed as it came)."""
    text = prefix.lstrip()
    if not text:
        return True
    if text.startswith(("<think>", "<thinking>")):
        closed = _THINK.match(text)
        return True if closed is None else could_be_calls(text[closed.end():])
    if any(text.startswith(o) or o.startswith(text) for o in _OPENERS):
        return True
    if _NAME_SO_FAR.fullmatch(text):  # `get_weather(city=...` so far
        return True
    line, newline, rest = text.partition("\n")  # a lead-in line ("Here is the call:"), then calls
    if not newline:
        return len(line) <= 200 and not re.search(r"[{}\[\]`<]", line)
    return bool(_LEAD_IN.match(text)) and could_be_calls(rest)


def looks_like_a_call(text: str | None, declared: Collection[str] = ()) -> bool:
    """Whether a reply begins the way a written call does, after one lead-in line at most ("Here's the JSON:"):
    a reply cut off by max_tokens that looks like this was probably writing a call, and its lack of one is no
    answer. A Python-style call counts when it names a `declared` function."""
    content = _content(text or "")
    if lead := _LEAD_IN.match(content):
        content = content[lead.end():].lstrip()
    if content.startswith(_CALL_OPENINGS):
        return True
    named = _PYTHONIC_START.match(content)
    return named is not None and named.group(1) in declared
