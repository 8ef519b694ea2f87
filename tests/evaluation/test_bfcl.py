"""BFCL data and grader on the real bfcl-eval wheel (downloaded once into the cache): items load with their
tools as JSON Schema under names an OpenAI client can send, and the grader follows BFCL's AST rules — each ground
truth made into calls grades right, and a missing parameter, a wrong value, an extra or a missing call wrong."""

from __future__ import annotations

import json
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from council.evaluation.bfcl import (
    CATEGORIES,
    BfclItem,
    api_name,
    download_wheel,
    grade,
    is_bfcl,
    load_bfcl,
    reference_calls,
    sample_per_category,
    schema_problems,
    to_tool,
)
from council.evaluation.dataset import DatasetError

# Ground truths BFCL itself cannot grade right: a parameter the document requires is missing from the possible
# answers, so giving it is "unexpected" and leaving it out is "missing".
UNANSWERABLE = {"live_simple_106-63-0", "live_simple_112-68-0"}
BFCL_TYPES = {"dict", "float", "tuple", "any"}


@pytest.fixture(scope="session")
def wheel() -> Path:
    try:
        return download_wheel()
    except DatasetError as exc:
        pytest.skip(f"the bfcl-eval wheel cannot be downloaded: {exc}")


@pytest.fixture(scope="session")
def items(wheel: Path) -> list[BfclItem]:
    return load_bfcl(wheel)


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def by_id(items: list[BfclItem], item_id: str) -> BfclItem:
    return next(i for i in items if i.id == item_id)


def types_in(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        own = {schema["type"]} if isinstance(schema.get("type"), str) else set()
        return own.union(*(types_in(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(types_in(v) for v in schema))
    return set()


def test_every_category_loads_with_tools_an_openai_client_can_send(items: list[BfclItem]) -> None:
    counts = {c: sum(i.category == c for i in items) for c in CATEGORIES}
    assert all(n >= 20 for n in counts.values()), counts  # simple_python read from BFCL_v4_simple_python.json
    dotted = 0
    for item in items:
        assert item.messages and item.messages[-1]["role"] == "user" and item.question
        assert (item.ground_truth is None) == (item.category == "irrelevance")
        for tool, function in zip(item.tools, item.functions, strict=True):
            name = tool["function"]["name"]
            assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name) and name == function["name"].replace(".", "_")
            dotted += "." in function["name"]
            parameters = tool["function"]["parameters"]
            jsonschema.Draft202012Validator.check_schema(parameters)
            assert parameters["type"] == "object" and not types_in(parameters) & BFCL_TYPES
    assert dotted > 100  # BFCL's dotted names (math.factorial) are common: the mapping matters


def test_bfcl_types_become_json_schema() -> None:
    tool = to_tool({"name": "geo.distance", "description": "d", "parameters": {"type": "dict", "required": ["a"],
                    "properties": {"a": {"type": "float", "description": "x"},
                                   "b": {"type": "tuple", "items": {"type": "integer"}},
                                   "c": {"type": "any"}, "d": {"type": "dict", "properties": {
                                       "e": {"type": "array", "items": {"type": "float"}}}},
                                   "f": {"type": "string", "enum": ["x", "y"], "optional": True}}}})
    fn = tool["function"]
    assert fn["name"] == "geo_distance" and fn["description"].endswith("Python 3 syntax.")
    props = fn["parameters"]["properties"]
    assert fn["parameters"]["required"] == ["a"]
    assert props["a"]["type"] == "number" and props["b"] == {"type": "array", "items": {"type": "integer"}}
    assert props["c"] == {"type": "string"}  # BFCL's `any` is a string to OpenAI models and to its checker
    assert props["d"]["properties"]["e"] == {"type": "array", "items": {"type": "number", "format": "float",
                                                                         "description": " This is a float type value."}}
    assert props["f"] == {"type": "string", "enum": ["x", "y"]} and api_name("a.b.c") == "a_b_c"


def test_ground_truth_as_calls_grades_right_on_a_sample(items: list[BfclItem]) -> None:
    sample = sample_per_category(items, 40, seed=3)
    assert len(sample) == 40 * len(CATEGORIES)
    for item in sample:
        calls = reference_calls(item)
        assert grade(item, calls).valid == (item.id not in UNANSWERABLE), (item.id, grade(item, calls))
    # All of them, too: only the two BFCL cannot grade right fail.
    assert {i.id for i in items if not grade(i, reference_calls(i)).valid} == UNANSWERABLE


def perturbations(item: BfclItem, rng: random.Random) -> list[tuple[str, list[dict[str, Any]]]]:
    """Wrong answers made from the right one."""
    calls = reference_calls(item)
    out: list[tuple[str, list[dict[str, Any]]]] = [("no call", []), ("extra call", calls + calls[:1])]
    first = json.loads(calls[0]["function"]["arguments"])
    function = next(f for f in item.functions if f["name"].replace(".", "_") == calls[0]["function"]["name"])
    required = [p for p in function["parameters"].get("required", []) if p in first]
    if required:
        dropped = rng.choice(required)
        out.append(("missing param", [{**calls[0], "function": {**calls[0]["function"], "arguments": json.dumps(
            {k: v for k, v in first.items() if k != dropped})}}, *calls[1:]]))
    wrong = {k: ("zzz nothing" if isinstance(v, str) else [] if isinstance(v, list) else {"no": 1}
                 if isinstance(v, dict) else not v if isinstance(v, bool) else v + 987654) for k, v in first.items()}
    if wrong:
        key = rng.choice(sorted(wrong))
        out.append(("wrong value", [{**calls[0], "function": {**calls[0]["function"], "arguments": json.dumps(
            {**first, key: wrong[key]})}}, *calls[1:]]))
    out.append(("unexpected param", [{**calls[0], "function": {**calls[0]["function"], "arguments": json.dumps(
        {**first, "no_such_parameter": 1})}}, *calls[1:]]))
    out.append(("wrong name", [{**calls[0], "function": {**calls[0]["function"], "name": "no_such_function"}},
                               *calls[1:]]))
    return out


def test_perturbed_ground_truth_grades_wrong(items: list[BfclItem]) -> None:
    rng = random.Random(5)
    seen = set()
    for item in sample_per_category([i for i in items if i.ground_truth and i.id not in UNANSWERABLE], 30, seed=4):
        for what, calls in perturbations(item, rng):
            assert not grade(item, calls).valid, (item.id, what, calls)
            seen.add(what)
    assert seen == {"no call", "extra call", "missing param", "wrong value", "unexpected param", "wrong name"}


def test_parallel_calls_match_in_any_order_one_to_one(items: list[BfclItem]) -> None:
    item = by_id(items, "parallel_0")  # spotify.play for Taylor Swift (20 min) and Maroon 5 (15 min)
    calls = reference_calls(item)
    assert len(calls) == 2 and grade(item, calls).valid and grade(item, calls[::-1]).valid
    assert not grade(item, [calls[0], calls[0]]).valid  # one call cannot match two expected ones
    assert not grade(item, calls[:1]).valid


def test_bfcl_value_rules(items: list[BfclItem]) -> None:
    item = by_id(items, "simple_python_0")  # calculate_triangle_area(base=10, height=5, unit optional)
    assert grade(item, [call("calculate_triangle_area", base=10, height=5)]).valid
    assert grade(item, [call("calculate_triangle_area", base=10, height=5, unit="  UNITS")]).valid  # case, spaces
    assert not grade(item, [call("calculate_triangle_area", base=10.0, height=5)]).valid  # float for an int
    assert not grade(item, [call("calculate_triangle_area", base="10", height=5)]).valid
    assert not grade(item, [{"type": "function", "function": {"name": "calculate_triangle_area",
                                                              "arguments": "{not json"}}]).valid
    floats = by_id(items, "parallel_multiple_1")  # area_rectangle.calculate(length=7.0, breadth=3.0), circle r=5.0
    assert grade(floats, [call("area_circle_calculate", radius=5), call("area_rectangle_calculate", length=7,
                                                                        breadth=3)]).valid  # an int for a float
    assert not grade(floats, [call("area_circle_calculate", radius=5),
                              call("area_rectangle_calculate", length=7, breadth=True)]).valid  # a bool is not


def test_irrelevance_is_right_with_no_call(items: list[BfclItem]) -> None:
    item = next(i for i in items if i.category == "irrelevance")
    name = item.tools[0]["function"]["name"]
    assert grade(item, []).valid and grade(item, None).valid
    assert not grade(item, [call(name)]).valid


def test_empty_arguments_are_a_decoder_failure_as_in_bfcl(items: list[BfclItem]) -> None:
    # BFCL decodes `arguments` with json.loads, which fails on "": right on irrelevance (no call decoded), wrong on
    # an item whose right call takes no argument. The port read "" as {} and graded both the other way.
    empty = {"type": "function", "function": {"name": "", "arguments": ""}}
    irrelevant = next(i for i in items if i.category == "irrelevance")
    name = irrelevant.tools[0]["function"]["name"]
    assert grade(irrelevant, [{**empty, "function": {"name": name, "arguments": ""}}]).valid
    no_arguments = by_id(items, "live_simple_247-129-0")
    name = no_arguments.tools[0]["function"]["name"]
    assert grade(no_arguments, [{**empty, "function": {"name": name, "arguments": "{}"}}]).valid
    verdict = grade(no_arguments, [{**empty, "function": {"name": name, "arguments": ""}}])
    assert not verdict.valid and verdict.error_type == "ast_decoder:decoder_failed"


def test_schema_problems_name_the_failing_call(items: list[BfclItem]) -> None:
    item = by_id(items, "simple_python_0")
    assert schema_problems(item, reference_calls(item)) == []
    problems = schema_problems(item, [call("calculate_triangle_area", base="ten", height=5), call("nope", x=1),
                                      {"type": "function", "function": {"name": "calculate_triangle_area",
                                                                        "arguments": "{bad"}}])
    assert problems == ["calculate_triangle_area: 'ten' is not of type 'integer'", "nope: not a declared tool",
                        "calculate_triangle_area: arguments are not JSON"]


def test_one_question_file_and_its_answers_beside_it(wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        (tmp_path / "possible_answer").mkdir()
        for name in ("BFCL_v4_parallel.json", "possible_answer/BFCL_v4_parallel.json"):
            (tmp_path / name).write_bytes(z.read(f"bfcl_eval/data/{name}"))
    question = tmp_path / "BFCL_v4_parallel.json"
    assert is_bfcl(question) and is_bfcl(wheel)
    loaded = load_bfcl(question)
    assert len(loaded) >= 200 and {i.category for i in loaded} == {"parallel"}
    assert all(grade(i, reference_calls(i)).valid for i in loaded)
    (tmp_path / "possible_answer" / "BFCL_v4_parallel.json").unlink()
    with pytest.raises(DatasetError, match=r"BFCL_v4_parallel.json:1: no ground truth for parallel_0"):
        load_bfcl(question)
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text('{"question": "q", "answer": "1"}\n')
    assert not is_bfcl(gsm)


def test_categories_the_grader_does_not_implement_are_refused(wheel: Path, tmp_path: Path) -> None:
    # simple_java and simple_javascript were graded by the Python rules (BFCL wants their values as strings).
    with pytest.raises(DatasetError, match=r":1: simple_java, live_relevance: council grades only BFCL's Python AST "
                                           r"categories \(simple_python, .*live_irrelevance\)"):
        load_bfcl(wheel, ("simple_python", "simple_java", "live_relevance"))
    with zipfile.ZipFile(wheel) as z:
        java = z.read("bfcl_eval/data/BFCL_v4_simple_java.json")
    (tmp_path / "BFCL_v4_simple_java.json").write_bytes(java)
    with pytest.raises(DatasetError, match=r"BFCL_v4_simple_java.json:1: simple_java: council grades only"):
        load_bfcl(tmp_path / "BFCL_v4_simple_java.json")
    (tmp_path / "mine.json").write_bytes(java)  # another name: each item's id gives its category
    with pytest.raises(DatasetError, match=r"mine.json:1: simple_java_0 is in simple_java: council grades only"):
        load_bfcl(tmp_path / "mine.json")
    assert {i.category for i in load_bfcl(wheel, ("live_multiple", "live_irrelevance"))} == {
        "live_multiple", "live_irrelevance"}


def test_an_items_index_does_not_depend_on_the_categories_order(wheel: Path) -> None:
    """Records resume by index: a category outside the default six was ranked by its place in `--categories`, so
    `live_multiple_0-0-0` was 600001 asked alone and 700001 after `live_parallel` (which then took 600001), and a
    second run asked every recorded item again."""
    alone = {i.id: i.index for i in load_bfcl(wheel, ("live_multiple",))}
    after = {i.id: i.index for i in load_bfcl(wheel, ("live_parallel", "simple_python", "live_multiple"))}
    assert all(after[k] == v for k, v in alone.items())
    assert len(set(after.values())) == len(after)  # no two items share one
    assert {i.id: i.index for i in load_bfcl(wheel, ("simple_python",))}["simple_python_0"] == 1  # as recorded


def test_calls_of_another_shape_or_nested_too_deep_are_a_decoder_failure(items: list[BfclItem]) -> None:
    # A `function` that is a string raised AttributeError, and arguments nested deeper than the decoder's stack
    # RecursionError, out of the grader: `council eval` died with a traceback instead of grading the answer wrong.
    item = by_id(items, "simple_python_0")
    deep = {"type": "function", "function": {"name": "calculate_triangle_area", "arguments": "[" * 3000 + "]" * 3000}}
    for calls in ([{"type": "function", "function": "calculate_triangle_area"}], ["calculate_triangle_area"], [deep]):
        verdict = grade(item, calls)  # type: ignore[arg-type]
        assert not verdict.valid and verdict.error_type == "ast_decoder:decoder_failed", calls
    assert schema_problems(item, [deep]) == ["calculate_triangle_area: arguments are not JSON"]
    assert grade(by_id(items, "irrelevance_0"), [deep]).valid  # no call decoded: right where no call is due
