"""Function-calling data from the Berkeley Function Calling Leaderboard (BFCL v4), and its AST grader.

The data comes from the `bfcl-eval` wheel (Apache-2.0), fetched with `pip download --no-deps bfcl-eval` into
`$COUNCIL_HOME/downloads/bfcl` and read from there by path (never copied into this repository): questions in
`bfcl_eval/data/BFCL_v4_<category>.json` (JSON lines: `id`, `question` as a list of turns, each a list of
messages, and `function`, tool definitions in BFCL's own type names: `dict`, `float`, `tuple`, `any`), and the
ground truth in `bfcl_eval/data/possible_answer/` (each parameter's allowed values; `""` among them marks the
parameter optional). `irrelevance` has no ground truth: the right answer is no call.

Tools go to the model as BFCL sends them to OpenAI models (its `convert_to_tool`): a dot in a function name
becomes `_` (OpenAI tool names are `^[a-zA-Z0-9_-]{1,64}$`), the types become JSON Schema (`dict` → `object`,
`float` → `number`, `tuple` → `array`, `any` → `string`, an unknown type → `string`, as BFCL does), and each
description ends with BFCL's " Note that the provided function is in Python 3 syntax.". The mapping of names is
the benchmark's, not the API's.

BFCL's own checker imports its model handlers (and their heavy dependencies), so `grade` is a port of the rules
of `bfcl_eval/eval_checker/ast_eval/ast_checker.py` for Python (Apache-2.0, Copyright the Gorilla LLM team):
one call for simple and multiple categories, the right name, every required parameter, no unexpected one, each
value among the allowed ones (an int is accepted for a float, strings compared without case, spaces and
`,./-_*^`, lists and dicts element by element); parallel categories match the expected calls in any order, one
to one, as BFCL matches them (greedily, each expected call with the first unmatched call that fits).
"""

from __future__ import annotations

import copy
import json
import random
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from council.evaluation.dataset import DatasetError
from council.paths import downloads_dir
from council.voting.request import last_user_text

CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance", "live_simple")
# The categories `grade` implements: BFCL's Python AST categories. Java and JavaScript are graded by other type rules
# (values as strings), and multi-turn, relevance, memory, web search and format sensitivity by other checkers.
SUPPORTED = (*CATEGORIES, "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance")
# Older wheels name the first category `simple`.
FILE_NAMES = {"simple_python": ("simple_python", "simple")}
PYTHON_HINT = " Note that the provided function is in Python 3 syntax."
DATA = "bfcl_eval/data"

# BFCL's GORILLA_TO_OPENAPI for the Python categories (anything else becomes a string, as there).
JSON_TYPES = {"integer": "integer", "number": "number", "float": "number", "string": "string", "boolean": "boolean",
              "bool": "boolean", "array": "array", "list": "array", "dict": "object", "object": "object",
              "tuple": "array", "any": "string"}
# Schema keywords kept as they are (BFCL's `optional` is not JSON Schema; `required` is kept where it is a list).
KEPT = ("description", "enum", "default", "minimum", "maximum", "minItems", "maxItems", "format", "pattern")


def bfcl_folder() -> Path:
    return downloads_dir() / "bfcl"


def find_wheel(folder: Path | None = None) -> Path | None:
    """The newest bfcl-eval wheel already downloaded, if any."""
    wheels = sorted((folder or bfcl_folder()).glob("bfcl_eval-*.whl"))
    return wheels[-1] if wheels else None


def download_wheel(folder: Path | None = None, timeout: float = 300) -> Path:
    """The bfcl-eval wheel, downloaded (`pip download --no-deps`) unless it is there already."""
    folder = folder or bfcl_folder()
    found = find_wheel(folder)
    if found is not None:
        return found
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "bfcl-eval",
                               "-d", str(folder)], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatasetError(f"cannot download bfcl-eval: {exc}") from None
    found = find_wheel(folder)
    if done.returncode != 0 or found is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise DatasetError(f"cannot download bfcl-eval: {tail[0]}")
    return found


# --- tools: BFCL's function documents as OpenAI tools -------------------------------------------------------------

def api_name(name: str) -> str:
    """The name an OpenAI client can send: BFCL's dots become `_` (and anything else outside the allowed set)."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64]


def json_schema(node: Mapping[str, Any]) -> dict[str, Any]:
    """One BFCL parameter (or parameters object) as JSON Schema, recursively."""
    raw = node.get("type")
    kind = JSON_TYPES.get(raw, "string") if isinstance(raw, str) else "string"
    out: dict[str, Any] = {"type": kind, **{k: copy.deepcopy(node[k]) for k in KEPT if k in node}}
    if raw == "float":  # as BFCL tells OpenAI models
        out["description"] = str(out.get("description", "")) + " This is a float type value."
        out["format"] = "float"
    if kind == "object" and isinstance(node.get("properties"), Mapping):
        out["properties"] = {k: json_schema(v) for k, v in node["properties"].items() if isinstance(v, Mapping)}
        if isinstance(node.get("required"), list):
            out["required"] = list(node["required"])
    if kind == "array" and isinstance(node.get("items"), Mapping):
        out["items"] = json_schema(node["items"])
    return out


def to_tool(function: Mapping[str, Any]) -> dict[str, Any]:
    """A BFCL function document as an OpenAI tool."""
    parameters = json_schema({**function.get("parameters", {}), "type": "dict"})
    parameters.pop("description", None)
    return {"type": "function", "function": {"name": api_name(function["name"]),
                                             "description": str(function.get("description", "")) + PYTHON_HINT,
                                             "parameters": parameters}}


# --- items --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BfclItem:
    """One BFCL question: its messages, the tools sent with it, and the calls that grade right."""

    index: int  # stable across loads: the category's place in SUPPORTED × 10⁵ + its line (records resume by it)
    line: int
    id: str
    category: str
    messages: list[dict[str, Any]]
    functions: list[dict[str, Any]]  # BFCL's own documents (the grader reads their types)
    ground_truth: list[dict[str, dict[str, list[Any]]]] | None  # None: irrelevance, the right answer is no call
    tools: list[dict[str, Any]] = field(default_factory=list)
    choices: tuple[str, ...] = ()  # what `dataset.Item` has (BFCL has none)

    @property
    def question(self) -> str:
        return last_user_text(self.messages)

    @property
    def reference(self) -> str:
        """The ground truth as one line of JSON (`[]` for irrelevance: no call)."""
        return json.dumps(self.ground_truth or [], separators=(",", ":"))


def _shown(value: object, size: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= size else text[:size - 3] + "..."


def _decoded(raw: bytes, where: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{where}:1: cannot read the file: {exc}") from None


def read_text(file: Path) -> str:
    """A data file's text; DatasetError `file:1: cannot read the file: ...` when it is not UTF-8 or unreadable (as the
    QA loader says it)."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{file}:1: cannot read the file: {exc}") from None
    return _decoded(raw, str(file))


class Source:
    """BFCL's data files, read from the wheel (a zip) or from an unpacked `bfcl_eval/data` folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() and zipfile.is_zipfile(path) else None
        if self.zip is None:
            folder = path / "bfcl_eval" / "data" if (path / "bfcl_eval" / "data").is_dir() else path
            self.folder = folder

    def read(self, relative: str) -> str | None:
        if self.zip is not None:
            try:
                raw = self.zip.read(f"{DATA}/{relative}")
            except KeyError:
                return None
            except (OSError, zipfile.BadZipFile) as exc:
                raise DatasetError(f"{self.path}:{relative}:1: cannot read the file: {exc}") from None
            return _decoded(raw, f"{self.path}:{relative}")
        file = self.folder / relative
        return read_text(file) if file.is_file() else None

    def category_file(self, category: str) -> tuple[str, str] | None:
        """(file name, its text) for a category's questions."""
        for stem in FILE_NAMES.get(category, (category,)):
            name = f"BFCL_v4_{stem}.json"
            text = self.read(name)
            if text is not None:
                return name, text
        return None


def _lines(text: str, where: str) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for number, line in enumerate(text.split("\n"), 1):  # not `splitlines`: JSON keeps U+2028 raw
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the decoder's stack
            raise DatasetError(f"{where}:{number}: not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            raise DatasetError(f"{where}:{number}: each line must be a JSON object with an `id`")
        out.append((number, doc))
    return out


def unsupported(categories: Iterable[str]) -> str | None:
    """Why these categories cannot be graded, naming the ones that can; None when every one can."""
    bad = [c for c in categories if c not in SUPPORTED]
    if not bad:
        return None
    return (f"{', '.join(bad)}: council grades only BFCL's Python AST categories ({', '.join(SUPPORTED)}); "
            "BFCL grades the others by rules council does not implement")


def category_of(item_id: str) -> str:
    """`live_simple_3-2-1` → `live_simple`, `simple_python_10` → `simple_python`, `simple_10` → `simple_python`."""
    stem = re.sub(r"_\d+(-\d+)*$", "", item_id)
    return "simple_python" if stem == "simple" else stem


def _parameters_problem(parameters: object) -> str | None:
    """Why a function document's `parameters` cannot be read (the tools are made from it, and the grader reads its
    `properties` and `required`), or None."""
    if not isinstance(parameters, dict):
        return f"`parameters` must be an object (a JSON Schema), not {_shown(parameters)}"
    properties = parameters.get("properties", {})
    if not (isinstance(properties, dict) and all(isinstance(p, dict) for p in properties.values())):
        return f"`parameters.properties` must be an object of parameter objects, not {_shown(properties)}"
    required = parameters.get("required", [])
    if not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
        return f"`parameters.required` must be a list of parameter names, not {_shown(required)}"
    return None


def _items(questions: str, answers: str | None, where: str, category: str | None) -> list[BfclItem]:
    truth = {doc["id"]: doc.get("ground_truth") for _, doc in _lines(answers, where + " (answers)")} if answers else {}
    items = []
    for number, doc in _lines(questions, where):
        at = f"{where}:{number}"
        turns, functions = doc.get("question"), doc.get("function")
        if not (isinstance(turns, list) and turns and isinstance(turns[0], list) and turns[0]):
            raise DatasetError(f"{at}: `question` must be a list of turns, each a list of messages")
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in turns[0]):
            raise DatasetError(f"{at}: `question` must hold chat messages with a `role`")
        if not (isinstance(functions, list) and all(isinstance(f, dict) and isinstance(f.get("name"), str)
                                                    for f in functions)):
            raise DatasetError(f"{at}: `function` must be a list of function documents with a `name`")
        for f in functions:
            if (why := _parameters_problem(f.get("parameters", {}))) is not None:
                raise DatasetError(f"{at}: {f['name']}: {why}")
        kind = category or category_of(doc["id"])
        if (why := unsupported([kind])) is not None:
            raise DatasetError(f"{at}: {doc['id']} is in {why}")
        expected = truth.get(doc["id"])
        if expected is None and "irrelevance" not in kind:
            raise DatasetError(f"{at}: no ground truth for {doc['id']} (possible_answer/ beside the file)")
        items.append(BfclItem(index=len(items), line=number, id=doc["id"], category=kind,
                              messages=[dict(m) for m in turns[0]], functions=functions, ground_truth=expected,
                              tools=[to_tool(f) for f in functions]))
    return items


def load_category(source: Source, category: str) -> list[BfclItem]:
    found = source.category_file(category)
    if found is None:
        raise DatasetError(f"{source.path}:1: no BFCL_v4_{category}.json in it")
    name, text = found
    answers = None if "irrelevance" in category else source.read(f"possible_answer/{name}")
    return _items(text, answers, f"{source.path}:{name}", category)


def load_bfcl(path: Path | str, categories: Sequence[str] = CATEGORIES) -> list[BfclItem]:
    """BFCL items from the wheel or an unpacked data folder (the given categories, in order), or from one question
    file (its answers from `possible_answer/` beside it). DatasetError names what is wrong."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}:1: no such file")
    if path.is_file() and not zipfile.is_zipfile(path):
        answers = path.parent / "possible_answer" / path.name
        # BFCL's file names give the category; another name, each item's id (refused item by item when unsupported).
        named = path.name.startswith("BFCL_v4_")
        category = category_of(path.stem.removeprefix("BFCL_v4_") + "_0") if named else None
        if category is not None and (why := unsupported([category])) is not None:
            raise DatasetError(f"{path}:1: {why}")
        text = read_text(path)
        return _items(text, read_text(answers) if answers.is_file() else None, str(path), category)
    if (why := unsupported(categories)) is not None:
        raise DatasetError(f"{path}:1: {why}")
    source = Source(path)
    items: list[BfclItem] = []
    # An item's index is its category's place among every supported one, whatever the `--categories` order (records
    # resume by it: ranked by the option's order, the same item was another index in another run, asked again).
    ranks = {c: i for i, c in enumerate(SUPPORTED)}
    for category in categories:
        for item in load_category(source, category):
            items.append(BfclItem(**{**item.__dict__, "index": ranks[category] * 100_000 + item.line}))
    return items


def is_bfcl(path: Path | str) -> bool:
    """Whether a data file is BFCL's: the wheel, a data folder, or JSON lines with `id`, `question` and
    `function`."""
    path = Path(path)
    try:
        if path.is_dir():
            return Source(path).category_file(CATEGORIES[0]) is not None
        if not path.is_file():
            return False
    except OSError:  # a name too long: reading it as another format says so
        return False
    if zipfile.is_zipfile(path):
        return True
    try:
        with path.open() as f:
            first = next((line for line in f if line.strip()), "")
        doc = json.loads(first)
    except (OSError, ValueError, RecursionError):  # not BFCL's: the QA loader says what is wrong with it
        return False
    return isinstance(doc, dict) and {"id", "question", "function"} <= doc.keys()


def sample_per_category(items: Sequence[BfclItem], n: int | None, seed: int | None) -> list[BfclItem]:
    """`n` items of each category (a seeded sample with `seed`, else the first `n`), in their order."""
    if n is None:
        return list(items)
    by: dict[str, list[BfclItem]] = {}
    for item in items:
        by.setdefault(item.category, []).append(item)
    keep: set[int] = set()
    for group in by.values():
        chosen = group[:n] if seed is None or n >= len(group) else random.Random(seed).sample(group, n)
        keep |= {i.index for i in chosen}
    return [i for i in items if i.index in keep]


# --- calls --------------------------------------------------------------------------------------------------------

def decode_calls(tool_calls: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """OpenAI tool calls as BFCL's model output, `[{name: {param: value}}]`; ValueError when arguments are not a
    JSON object (BFCL: a decoder failure, graded wrong)."""
    out = []
    for call in tool_calls or ():
        if not isinstance(call, Mapping) or not isinstance(call.get("function") or {}, Mapping):
            # A call of another shape is what BFCL's decoder fails on too: graded wrong, not a crash.
            raise ValueError(f"a tool call whose `function` is not an object: {_shown(call)}")
        fn = call.get("function") or {}
        raw = fn.get("arguments")
        # `""` is a decoder failure, as BFCL's own json.loads makes it (right on irrelevance, wrong elsewhere).
        try:
            args = raw if isinstance(raw, dict) else json.loads(raw) if isinstance(raw, str) else None
        except RecursionError:  # nested deeper than the decoder's stack: a degenerate reply, not a JSON object
            raise ValueError(f"arguments of {fn.get('name')!r} are nested too deeply") from None
        if not isinstance(args, dict):
            raise ValueError(f"arguments of {fn.get('name')!r} are not a JSON object")
        out.append({str(fn.get("name") or ""): args})
    return out


def _pick(allowed: list[Any], required: bool = False) -> tuple[bool, Any]:
    """(give it, the value) for a ground-truth entry: left out when optional (`""` allowed and not required),
    else the first allowed value, recursively (a dict's values are lists of allowed values)."""
    if "" in allowed and not required:
        return False, None
    value = next(v for v in allowed if v != "")
    if isinstance(value, dict):
        return True, _pick_all(value, ())
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return True, [_pick_all(v, ()) for v in value]
    return True, value


def _pick_all(params: dict[str, list[Any]], required: Sequence[str]) -> dict[str, Any]:
    out = {}
    for param, allowed in params.items():
        give, value = _pick(allowed, param in required) if isinstance(allowed, list) and allowed else (False, None)
        if give:
            out[param] = value
    return out


def reference_calls(item: BfclItem) -> list[dict[str, Any]]:
    """The ground truth as OpenAI tool calls: optional parameters left out, others at their first allowed
    value."""
    calls = []
    for i, expected in enumerate(item.ground_truth or []):
        name, params = next(iter(expected.items()))
        function = _find(item.functions, name) or {}
        args = _pick_all(params, function.get("parameters", {}).get("required", []))
        calls.append({"id": f"call_{i}", "type": "function",
                      "function": {"name": api_name(name), "arguments": json.dumps(args)}})
    return calls


def schema_problems(item: BfclItem, tool_calls: Iterable[Mapping[str, Any]] | None) -> list[str]:
    """Why each failing call fails the tools sent with the item: an undeclared name, arguments that are not a JSON
    object, or arguments its JSON Schema refuses (checked with `jsonschema`). Empty when every call is valid."""
    import jsonschema
    from referencing import Registry  # empty: nothing is fetched

    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in item.tools}
    problems = []
    for call in tool_calls or ():
        fn = (call.get("function") if isinstance(call, Mapping) else None) or {}
        if not isinstance(fn, Mapping):
            problems.append(f"{_shown(fn)}: not a declared tool")
            continue
        name = str(fn.get("name") or "")
        if name not in schemas:
            problems.append(f"{name}: not a declared tool")
            continue
        try:
            args = json.loads(fn.get("arguments") or "{}") if isinstance(fn.get("arguments"), str) else fn.get(
                "arguments")
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the decoder's stack
            problems.append(f"{name}: arguments are not JSON")
            continue
        validator = jsonschema.Draft202012Validator(schemas[name], registry=Registry())
        error = jsonschema.exceptions.best_match(validator.iter_errors(args))
        if error is not None:
            problems.append(f"{name}: {error.message}")
    return problems


# --- the grader: BFCL's AST checker rules (Python) -------------------------------------------------------------------

PYTHON_TYPES: dict[str, type] = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list,
                                 "tuple": list, "dict": dict, "any": str}
NESTED = ("array", "tuple")


@dataclass(frozen=True)
class Verdict:
    valid: bool
    error: str = ""
    error_type: str = ""


RIGHT = Verdict(True)


def _answer_type(possible: list[Any]) -> type | None:
    return next((type(a) for a in possible if a != ""), None)


def _type_check(param: str, value: Any, possible: list[Any], described: str, expected: type | None,
                nested: type | None) -> tuple[Verdict, bool]:
    """(verdict, is_variable): BFCL's type_checker (one level of nesting)."""
    answer_type = _answer_type(possible)
    is_variable = answer_type is not None and answer_type != expected
    if type(value) is expected:
        if nested is None:
            return RIGHT, is_variable
        for option in possible:
            ok = True
            if type(option) is list:
                for element in value:
                    if not _type_check(param, element, option, str(nested), nested, None)[0].valid:
                        ok = False
                        break
            if ok:
                return RIGHT, is_variable
        return Verdict(False, f"nested type check failed for {param!r}: {value!r}", "type_error:nested"), False
    if answer_type is not None and type(value) is answer_type:
        return RIGHT, True
    return Verdict(False, f"incorrect type for {param!r}: expected {described}, got {type(value).__name__}",
                   "type_error:simple"), False


def standardize(text: str) -> str:
    """BFCL's standardize_string: no spaces or `,./-_*^`, lower case, single quotes as double."""
    return re.sub(r"[ \,\.\/\-\_\*\^]", "", text).lower().replace("'", '"')


def _string_check(param: str, value: str, possible: list[Any]) -> Verdict:
    if standardize(value) not in [standardize(p) for p in possible if type(p) is str]:
        return Verdict(False, f"invalid value for {param!r}: {value!r}, expected one of {possible}",
                       "value_error:string")
    return RIGHT


def _list_check(param: str, value: list[Any], possible: list[Any]) -> Verdict:
    mine = [standardize(v) if type(v) is str else v for v in value]
    # BFCL standardises each option element by element: an optional `""` becomes the empty list.
    options = [[standardize(x) if type(x) is str else x for x in option] if isinstance(option, list) else []
               for option in possible if isinstance(option, list) or option == ""]
    if mine not in options:
        return Verdict(False, f"invalid value for {param!r}: {value!r}, expected one of {possible}",
                       "value_error:list/tuple")
    return RIGHT


def _dict_check(param: str, value: dict[str, Any], possible: list[Any]) -> Verdict:
    verdict = Verdict(False, f"no allowed value for {param!r}", "dict_checker:unclear")
    for option in possible:
        if option == "":
            continue
        ok = True
        for key, v in value.items():
            if key not in option:
                verdict, ok = Verdict(False, f"unexpected dict key {key!r}", "value_error:dict_key"), False
                break
            mine = standardize(v) if type(v) is str else v
            allowed = [standardize(x) if type(x) is str else x for x in option[key]]
            if mine not in allowed:
                verdict, ok = Verdict(False, f"invalid value for {key!r}: {v!r}", "value_error:dict_value"), False
                break
        if ok:  # BFCL checks missing keys only when every given key passed
            for key, allowed_values in option.items():
                if key not in value and "" not in allowed_values:
                    verdict, ok = Verdict(False, f"missing dict key {key!r}", "value_error:dict_key"), False
                    break
        if ok:
            return RIGHT
    return verdict


def _list_dict_check(param: str, value: list[Any], possible: list[Any]) -> Verdict:
    verdict = Verdict(False, f"no allowed value for {param!r}", "list_dict_checker:unclear")
    for option in possible:
        if len(value) != len(option):
            verdict = Verdict(False, "wrong number of dictionaries in the list", "value_error:list_dict_count")
            continue
        ok = True
        for mine, theirs in zip(value, option, strict=True):
            verdict = _dict_check(param, mine, [theirs])
            if not verdict.valid:
                ok = False
                break
        if ok:
            return RIGHT
    return verdict


def _find(functions: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    return next((f for f in functions if f["name"] == name), None)


def check_call(function: Mapping[str, Any] | None, output: Mapping[str, Any],
               expected: Mapping[str, Mapping[str, list[Any]]]) -> Verdict:
    """BFCL's simple_function_checker for Python: one model call (`{name: args}`) against one expected call."""
    expected_name, possible = next(iter(expected.items()))
    if function is None:
        return Verdict(False, f"no function document for {expected_name!r}", "simple_function_checker:no_doc")
    name = api_name(function["name"])
    if name not in output:
        return Verdict(False, f"function {name!r} not found in the output", "simple_function_checker:wrong_func_name")
    params = output[name]
    if not isinstance(params, dict):
        return Verdict(False, "arguments are not an object", "simple_function_checker:wrong_args")
    details = function.get("parameters", {}).get("properties", {})
    for required in function.get("parameters", {}).get("required", []):
        if required not in params:
            return Verdict(False, f"missing required parameter {required!r}",
                           "simple_function_checker:missing_required")
    for param, value in params.items():
        if param not in details or param not in possible:
            return Verdict(False, f"unexpected parameter {param!r}", "simple_function_checker:unexpected_param")
        described = details[param].get("type", "string")
        expected_type = PYTHON_TYPES.get(described)
        nested = None
        if described in NESTED:
            nested = PYTHON_TYPES.get((details[param].get("items") or {}).get("type", ""))
        if described == "tuple" and type(value) is tuple:
            value = list(value)
        if described == "float" and type(value) is int:  # Python's own int → float
            value = float(value)
        verdict, is_variable = _type_check(param, value, possible[param], described, expected_type, nested)
        if not verdict.valid:
            return verdict
        special = None if is_variable else (
            _dict_check if expected_type is dict else _list_dict_check if expected_type is list and nested is dict
            else _string_check if expected_type is str else _list_check if expected_type is list else None)
        if special is not None:
            verdict = special(param, value, possible[param])
            if not verdict.valid:
                return verdict
            continue
        if value not in possible[param]:
            return Verdict(False, f"invalid value for {param!r}: {value!r}, expected one of {possible[param]}",
                           "value_error:others")
    for param, allowed in possible.items():
        if param not in params and "" not in allowed:
            return Verdict(False, f"optional parameter {param!r} not given and not optional",
                           "simple_function_checker:missing_optional")
    return RIGHT


def grade(item: BfclItem, tool_calls: Iterable[Mapping[str, Any]] | None) -> Verdict:
    """Whether these tool calls answer the item right, by BFCL's AST rules (irrelevance: right when no call)."""
    try:
        output = decode_calls(tool_calls)
    except ValueError as exc:
        return Verdict("irrelevance" in item.category, str(exc), "ast_decoder:decoder_failed")
    if "irrelevance" in item.category:
        return Verdict(False, "a call was made", "irrelevance_error:decoder_success") if output else RIGHT
    expected = item.ground_truth or []
    if not output:
        return Verdict(False, "no call", "ast_decoder:decoder_wrong_output_format")
    if len(output) != len(expected):
        return Verdict(False, f"{len(output)} calls where {len(expected)} are due", "wrong_count")
    if "parallel" in item.category:
        matched: list[int] = []
        for want in expected:
            function = _find(item.functions, next(iter(want)))
            verdict = Verdict(False, "no call left to match", "parallel:cannot_find_match")
            for index, call in enumerate(output):
                if index in matched:
                    continue
                verdict = check_call(function, call, want)
                if verdict.valid:
                    matched.append(index)
                    break
            if not verdict.valid:
                return Verdict(False, f"no call matches {next(iter(want))!r}: {verdict.error}",
                               "parallel:cannot_find_match")
        return RIGHT
    if "multiple" in item.category:
        return check_call(_find(item.functions, next(iter(expected[0]))), output[0], expected[0])
    return check_call(item.functions[0], output[0], expected[0])
