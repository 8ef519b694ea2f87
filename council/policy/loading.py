"""Read a policy file: YAML with positions, schema errors and broken references as `file:line: path: message`."""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from council.errors import CouncilError
from council.policy.schema import MAX_FLAG_INT, Policy

Loc = tuple[str | int, ...]
# PyYAML composes nested lists and mappings recursively, and so do the walks over the document here and in
# validation: a few hundred levels exhaust Python's stack. A policy needs a handful, so that is a problem to report.
TOO_DEEP = "nested too deeply: more levels of lists and mappings than a policy can be read with (it needs a handful)"


@dataclass(frozen=True)
class Problem:
    path: Loc
    message: str
    line: int | None = None

    def format(self, file: str) -> str:
        dotted = ".".join(str(p) for p in self.path) or "(top)"
        return f"{file}:{self.line or 1}: {dotted}: {self.message}"


class PolicyError(CouncilError):
    """A policy that cannot be used; `problems` holds every reason, each with a location."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        super().__init__("\n".join(p.format(file) for p in problems))
        self.file = file
        self.problems = problems

    def lines(self) -> list[str]:
        return [p.format(self.file) for p in self.problems]


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    file: str
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, path: Loc) -> int | None:
        return _line_of(self.lines, path)

    def problem(self, path: Loc, message: str) -> Problem:
        return Problem(path, message, self.line_of(path))


def _line_of(lines: dict[Loc, int], path: Loc) -> int | None:
    """The line of the longest prefix of `path` that the file spells out."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _walk(node: yaml.Node, path: Loc, lines: dict[Loc, int], dupes: list[Problem]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark)
            if name in seen:
                dupes.append(Problem((*path, name), "duplicate key: each name may appear once",
                                     key.start_mark.line + 1))
            seen.add(name)
            lines[(*path, name)] = key.start_mark.line + 1
            _walk(value, (*path, name), lines, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines, dupes)


# What a policy may expand to through its aliases: real ones hold hundreds of values. An alias is one node however
# often it is used, but the walk below, the schema's validation and every later reading expand it at each use, so
# a few hundred bytes of nested aliases ("billion laughs") took gigabytes and minutes, or never ended.
MAX_VALUES = 100_000


def _expanded(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values `node` stands for once every alias in it is expanded (each node counted once: linear)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise _AliasLoop(node.start_mark.line + 1)
    open_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded(k, sizes, open_nodes) + _expanded(v, sizes, open_nodes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded(item, sizes, open_nodes) for item in node.value)
    else:
        size = 1
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


class _AliasLoop(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def parse_yaml(text: str, file: str) -> tuple[Any, dict[Loc, int]]:
    """The document and the line of every key and list item; duplicate keys are errors, not overwrites."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise PolicyError(file, [Problem((), "the file is empty", 1)])
        try:
            if (size := _expanded(node, {}, set())) > MAX_VALUES:
                raise PolicyError(file, [Problem((), f"it holds {size:,} values (its aliases expanded), more than "
                                                     f"the {MAX_VALUES:,} a policy may hold (one needs hundreds)", 1)])
        except _AliasLoop as loop:
            raise PolicyError(file, [Problem((), "an alias is used inside the node it names: a policy cannot "
                                                 "hold itself", loop.line)]) from None
        lines: dict[Loc, int] = {}
        dupes: list[Problem] = []
        _walk(node, (), lines, dupes)
        if dupes:
            raise PolicyError(file, dupes)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(file, [Problem((), f"not valid YAML: {reason}", mark.line + 1 if mark else 1)]) from None
    except RecursionError:  # the stack is unwound here: where the reader had got to is where it was too deep
        raise PolicyError(file, [Problem((), TOO_DEEP, loader.line + 1)]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise PolicyError(file, [Problem((), "a policy is a mapping of keys (version, models, councils, ...)", 1)])
    return data, lines


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types inside Optional/Union/Annotated."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _model_at(path: Loc) -> type[BaseModel] | None:
    """The schema class that the mapping at `path` must match, for naming the keys it allows."""
    current: list[Any] = [Policy]
    for element in path:
        following: list[Any] = []
        for ann in current:
            origin = typing.get_origin(ann)
            if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(element, str):
                if element in ann.model_fields:
                    following += _unwrap(ann.model_fields[element].annotation)
            elif origin is dict:
                following += _unwrap(typing.get_args(ann)[1])
            elif origin is list and isinstance(element, int):
                following += _unwrap(typing.get_args(ann)[0])
        current = following
    return next((t for t in current if isinstance(t, type) and issubclass(t, BaseModel)), None)


def _clean_loc(data: Any, loc: tuple[Any, ...], kind: str) -> Loc:
    """Drop pydantic's union-branch tags so the path names only keys and indexes of the file."""
    cleaned: list[str | int] = []
    cur = data
    for i, element in enumerate(loc):
        in_dict = isinstance(cur, dict) and element in cur
        in_list = isinstance(cur, list) and isinstance(element, int) and 0 <= element < len(cur)
        if in_dict or in_list:
            cleaned.append(element)
            cur = cur[element]
        elif kind == "missing" and i == len(loc) - 1:
            cleaned.append(element)
    return tuple(cleaned)


def _message(error: Any, path: Loc) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _model_at(path[:-1])
        allowed = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; allowed: {', '.join(allowed)}" if allowed else "")
        return f"unknown key{hint}"
    if kind == "missing":
        return "required key is missing"
    if kind == "finite_number":
        # The same words as a size's or a duration's (council.units); pydantic's names no value.
        return f"must be a finite number, not {error['input']!r}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def schema_problems(data: Any, exc: ValidationError, lines: dict[Loc, int]) -> list[Problem]:
    merged: dict[Loc, list[str]] = {}
    for error in exc.errors():
        path = _clean_loc(data, error["loc"], error["type"])
        text = _message(error, path)
        if text not in merged.setdefault(path, []):
            merged[path].append(text)
    problems = [Problem(path, " or ".join(msgs), _line_of(lines, path)) for path, msgs in merged.items()]
    return sorted(problems, key=lambda p: p.line or 0)


def _seat_widths(loaded: LoadedPolicy, cname: str) -> list[Problem]:
    """A process serving several seats (`samples: K`, or a `share: true` model's seats) runs with their context and
    slots multiplied, and llama-server reads both flags with std::stoi: past 2^31-1 the process cannot start, after
    `check` and `plan` had passed it (128 seats at the largest `ctx_size`)."""
    policy = loaded.policy
    council = policy.councils[cname]
    seats: dict[str, tuple[int, int]] = {}  # process -> (its seats, its first member entry)
    for i, member in enumerate(council.members):
        model = policy.models.get(member.model)
        if model is None or model.remote is not None:
            continue
        key = member.model if model.share else f"#{i}"
        count, first = seats.get(key, (0, i))
        seats[key] = (count + member.samples, first)
    problems = []
    for count, first in seats.values():
        name = council.members[first].model
        model = policy.models[name]
        if count > 1 and max(model.ctx_size, model.parallel) * count > MAX_FLAG_INT:
            problems.append(loaded.problem(("councils", cname, "members", first), (
                f"{count} seats of {name} in one process need --ctx-size {model.ctx_size * count} (and --parallel "
                f"{model.parallel * count}), past llama-server's largest, {MAX_FLAG_INT}: fewer seats or a smaller "
                "ctx_size")))
    return problems


def reference_problems(loaded: LoadedPolicy) -> list[Problem]:
    """Names that must point somewhere: council members, draft models, fallbacks, judges, quorums; and member
    names, which must differ within a council and across councils."""
    policy = loaded.policy
    problems: list[Problem] = []
    known = sorted(policy.models)

    def unknown_model(name: str, path: Loc) -> None:
        if name not in policy.models:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known models: {', '.join(known) or 'none'}"
            problems.append(loaded.problem(path, f"unknown model {name!r}; {hint}"))

    for name, model in policy.models.items():
        if model.draft.type == "model" and model.draft.model:
            unknown_model(model.draft.model, ("models", name, "draft", "model"))
            if model.draft.model == name:
                problems.append(loaded.problem(("models", name, "draft", "model"), "a model cannot draft for itself"))
    gpu_names: set[str] = set()
    for i, gpu in enumerate(policy.gpus):
        if gpu.name in gpu_names:
            problems.append(loaded.problem(("gpus", i, "name"), f"duplicate GPU name {gpu.name!r}"))
        gpu_names.add(gpu.name)
    for cname, council in policy.councils.items():
        base: Loc = ("councils", cname)
        for i, member in enumerate(council.members):
            unknown_model(member.model, (*base, "members", i, "model"))
        problems += _seat_widths(loaded, cname)
        entries = council.entry_names(cname)
        for i, entry in enumerate(entries):
            if entries.index(entry) != i:
                problems.append(loaded.problem((*base, "members", i, "name"), f"duplicate member name {entry!r}"))
        names = council.member_names(cname)
        size = council.size
        if isinstance(council.quorum, int) and council.quorum > size:
            problems.append(loaded.problem((*base, "quorum"), f"quorum {council.quorum} is more than {size} seats"))
        judge = council.vote.judge
        if judge is not None:
            if isinstance(judge, int) and not 0 <= judge < size:
                problems.append(loaded.problem((*base, "vote", "judge"),
                                               f"judge index {judge} is not a member (0..{size - 1})"))
            elif isinstance(judge, str) and judge not in names:
                problems.append(loaded.problem((*base, "vote", "judge"), f"judge {judge!r} is not a member name"))
        if council.vote.cascade is not None:
            staged = [i for stage in council.stages() for i in stage]
            where = (*base, "vote", "cascade")
            if any(i >= size for i in staged):
                problems.append(loaded.problem(where, f"a cascade stage names a member past the last (0..{size - 1})"))
            elif len(set(staged)) != len(staged) or len(staged) != size:
                problems.append(loaded.problem(where, f"the stages must hold every member (0..{size - 1}) exactly "
                                                      "once"))
            elif len(council.stages()) < 2:
                problems.append(loaded.problem(where, "a cascade needs at least two stages"))
            if council.vote.strategy in ("similarity", "judge"):
                problems.append(loaded.problem(where, f"strategy {council.vote.strategy} cannot cascade: it cannot "
                                                      "tell whether a stage agrees"))
        if council.fallback is not None:
            if council.fallback.model is not None:
                unknown_model(council.fallback.model, (*base, "fallback", "model"))
            if council.fallback.members is not None and council.fallback.members >= len(council.members):
                problems.append(loaded.problem((*base, "fallback", "members"),
                                               "a fallback must keep fewer members than the council has"))
            elif council.fallback.members is not None and council.vote.cascade is not None:
                # The fallback runs the same cascade on fewer seats (`samples` expand into seats): listed stages
                # must not name the seats it drops.
                seats = sum(m.samples for m in council.members[:council.fallback.members])
                named = max((i for stage in council.vote.cascade.stages for i in stage), default=-1)
                if named >= seats:
                    problems.append(loaded.problem(
                        (*base, "fallback", "members"),
                        f"the fallback keeps {seats} seats (0..{seats - 1}) but the cascade's stages name seat "
                        f"{named}; write the cascade as `{{first: N}}` (it fits any council) or keep more members"))
    return problems + _names_across_councils(loaded)


def _names_across_councils(loaded: LoadedPolicy) -> list[Problem]:
    """A member's name is router-wide: its process is keyed by it and its seats are found by it (`samples` add
    `#K`, a `share: true` model's process is `COUNCIL:MODEL`). Two councils naming one member alike planned two
    processes, ran one, and answered both councils' seat with it: one council got another model's answers."""
    problems: list[Problem] = []
    owner: dict[str, str] = {}  # each name -> the first council that takes it
    for cname, council in loaded.policy.councils.items():
        entries = council.entry_names(cname)
        claims: dict[str, int] = {}  # each name this council takes -> its first member entry
        for seat, member, entry in council.seats(cname):
            i = entries.index(entry)
            names = [entry, seat]
            model = loaded.policy.models.get(member.model)
            if model is not None and model.share:
                names.append(f"{cname}:{member.model}")
            for name in names:
                claims.setdefault(name, i)
        reported: set[int] = set()
        for name, i in claims.items():
            first = owner.setdefault(name, cname)
            if first != cname and i not in reported:
                reported.add(i)
                where: Loc = ("councils", cname, "members", i)
                if council.members[i].name is not None:
                    where = (*where, "name")
                problems.append(loaded.problem(where, f"member name {name!r} is used in councils {first} and "
                                                      f"{cname}: names must differ across councils (a name "
                                                      "names its process and its seats)"))
    return problems


def load_policy(path: Path | str) -> LoadedPolicy:
    """Parse and validate a policy file; raise PolicyError listing every problem found."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise PolicyError(file, [Problem((), "no such file", 1)]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(file, [Problem((), f"cannot read the file: {exc}", 1)]) from None
    return load_policy_text(text, file)


def load_policy_text(text: str, file: str) -> LoadedPolicy:
    """Parse and validate a policy's text, its problems named as in `file` (an edit checked before it is saved)."""
    data, lines = parse_yaml(text, file)
    try:
        return _validated(data, lines, file)
    except RecursionError:  # a document parsed, but deeper than validation or its error reporting can walk
        raise PolicyError(file, [Problem((), TOO_DEEP, 1)]) from None


def _validated(data: Any, lines: dict[Loc, int], file: str) -> LoadedPolicy:
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(file, schema_problems(data, exc, lines)) from None
    loaded = LoadedPolicy(policy, file, lines)
    problems = reference_problems(loaded)
    if problems:
        raise PolicyError(file, sorted(problems, key=lambda p: p.line or 0))
    return loaded
