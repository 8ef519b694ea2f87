"""Each recovery parser on the texts small models write (README "Agents" / "Tool calls"), and prose that merely
mentions JSON or code left alone."""

from __future__ import annotations

from typing import Any

import pytest

from council.voting.recovery import could_be_calls, looks_like_a_call, recover

DECLARED = {"get_weather", "get_time"}
PARIS = [("get_weather", {"city": "Paris"})]
BOTH = [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]


@pytest.mark.parametrize(("text", "shape", "calls"), [
    # Qwen2.5-Coder-0.5B's own replies through llama-server (sampled at T=0.8), verbatim
    ('```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n  }\n}\n```', "fenced", PARIS),
    ('{"name": "get_weather", "arguments": {"city": "Paris"}}', "bare_json", PARIS),
    ('Here\'s the corresponding JSON response:\n\n{"name": "get_weather", "arguments": {"city": "Paris"}}',
     "introduced", PARIS),
    # "parameters" instead of "arguments"; a list; objects one per line; two fenced blocks; a bare fence
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', "bare_json", PARIS),
    ('[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_weather", "arguments": '
     '{"city": "Rome"}}]', "bare_json", BOTH),
    ('{"name": "get_weather", "arguments": {"city": "Paris"}}\n{"name": "get_weather", "arguments": '
     '{"city": "Rome"}}', "bare_json", BOTH),
    ('```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\n\n```json\n{"name": "get_weather", '
     '"arguments": {"city": "Rome"}}\n```', "fenced", BOTH),
    ('```\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]\n```', "fenced", PARIS),
    # arguments double-encoded as a JSON string; OpenAI's own wrapper; a declared tool without arguments
    ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', "bare_json", PARIS),
    ('{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}', "bare_json", PARIS),
    ('{"tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}', "bare_json", PARIS),
    ('{"name": "get_time"}', "bare_json", [("get_time", {})]),
    # Hermes tags the server did not parse (the last left open), after a think block
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n'
     '{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>', "tool_call_tags", BOTH),
    ('<think>\nThe user wants the weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": '
     '{"city": "Paris"}}', "tool_call_tags", PARIS),
    # Qwen2.5-Coder-1.5B's sampled replies on BFCL (bench/records/agents-brief-sc-qwen1.5b.jsonl), city swapped in:
    # the template's <tools> tags, its escaped braces copied, objects quoted without escaping, [name, arguments]
    ('<tools>\n{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}\n</tools>',
     "other_tags", PARIS),
    ('<json>\n    {\n        "name": "get_weather",\n        "arguments": {"city": "Paris"}\n    }\n</json>',
     "other_tags", PARIS),
    ('{{"name": "get_weather", "arguments": {"city": "Paris"}}}', "repaired", PARIS),
    ('<tools>\n{{"name": "get_weather", "arguments": {"city": "Paris"}}}\n</tools>', "repaired", PARIS),
    ('["{"name": "get_weather", "arguments": {"city": "Paris"}}", "{"name": "get_weather", "arguments": '
     '{"city": "Rome"}}"]', "repaired", BOTH),
    ('["{{"name": "get_weather", "arguments": {"city": "Paris"}}}"]', "repaired", PARIS),
    ('{"name": "get_time", "arguments": {"exact": True, "zone": "None", "note": "True love"}}', "repaired",
     [("get_time", {"exact": True, "zone": "None", "note": "True love"})]),
    ('["get_weather", {"city": "Paris"}], ["get_weather", {"city": "Rome"}]', "bare_json", BOTH),
    # BFCL's prompt format (Python calls), tuples become lists
    ('[get_weather(city="Paris"), get_weather(city=\'Rome\')]', "pythonic", BOTH),
    ('get_time(zones=("UTC", "CET"), exact=True)', "pythonic", [("get_time", {"zones": ["UTC", "CET"],
                                                                             "exact": True})]),
])
def test_each_shape_is_recovered(text: str, shape: str, calls: list[tuple[str, Any]]) -> None:
    assert recover(text, DECLARED) == (calls, shape)


@pytest.mark.parametrize("text", [
    'You can call get_weather with {"city": "Paris"} to get the weather.',
    'Here is an example:\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\n'
    "This calls the function with Paris.",  # an example, then an explanation: not only calls
    'The JSON would be {"name": "get_weather", "arguments": {"city": "Paris"}} but I cannot run it.',
    '{"name": "Bob", "age": 3}',  # data with a `name`
    '{"name": "Bob"}',  # a name alone, not a declared tool: data
    '[{"name": "get_weather", "arguments": {"city": "Paris"}}, 3]',  # a list with something else in it
    '{"name": "get_weather", "arguments": ["Paris"]}',  # arguments that are no object
    '{"name": "get_weather", "arguments": {"city": "Paris"}, "comment": "sunny"}',  # extra keys: data
    '```python\nget_weather(city="Paris")\n```',  # code
    'print(get_weather(city="Paris"))',  # code: print is not a declared tool
    "get_weather('Paris')",  # positional arguments: code, not a call
    "Sure!\nHere it is:\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",  # two lines of prose
    "The weather in Paris is sunny, 21 °C.",
    '{"name": "get_weather", "arguments": {"city": NaN}}',  # not JSON
    # a tool's definition echoed back (description and parameters): not a call; tags with nothing in them
    '<tools>\n{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": '
    '{"type": "object"}}}\n</tools>',
    "<tools></tools>",
    '["print", {"city": "Paris"}]',  # a pair naming no declared tool: data
    '["get_weather"]',
    '{{"name": "get_weather", "arguments": {"city": "Paris"}}}}',  # a brace too many: mangled beyond mending
    '{{"city": "Paris"}}',  # doubled braces around data
    "",
])
def test_prose_and_code_are_not_calls(text: str) -> None:
    assert recover(text, DECLARED) is None


def test_a_reply_that_began_a_call_is_told_apart() -> None:
    assert looks_like_a_call('```json\n{"name": "get_wea')
    assert looks_like_a_call('<think>x</think>{"name"')
    assert looks_like_a_call('<tools>\n{"name": "get_wea')
    assert not looks_like_a_call("The weather in Paris is")
    # after one lead-in line, as Qwen2.5-Coder writes it; a Python-style call only to a declared function
    assert looks_like_a_call('Here\'s the corresponding JSON response:\n```json\n{"name": "get_weather", "argu')
    assert looks_like_a_call('get_weather(city="Par', ["get_weather"])
    assert not looks_like_a_call('print(city="Par', ["get_weather"])
    assert not looks_like_a_call("To find the weather:\nFirst, open a browser and")


@pytest.mark.parametrize(("prefix", "held"), [
    ("", True), ("\n ", True), ("``", True), ('```json\n{"na', True), ('{"name"', True), ("[", True),
    ("<tool_", True), ("get_weather(city=", True), ("Here is the call:", True), ('Here is the call:\n\n{"n', True),
    ("<think>The user wants", True), ("<too", True), ('<tools>\n{{"name', True),
    ("The weather in Paris is nice.\nBut", False), ("Here: x\n", False), ("Paris is `sunny`", False),
    ("<think>x</think>\nThe answer is 4.\n", False),
])
def test_a_stream_is_held_back_only_while_it_may_still_be_calls(prefix: str, held: bool) -> None:
    assert could_be_calls(prefix) is held


def test_calls_among_prose_are_read_only_when_asked_and_only_to_declared_functions() -> None:
    """The shape the benchmark measured and councils leave off (it cost irrelevance items their "no call")."""
    text = ("Here is the request in plain text:\n\n```plaintext\nWeather in Paris?\n```\n\nTwo calls:\n\n"
            "1. Paris\n   ```json\n   {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n   ```\n"
            "2. An example, not a call:\n```json\n{\"name\": \"make_coffee\", \"arguments\": {}}\n```\n"
            "3. Rome\n```json\n[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}]\n```\nDone.")
    assert recover(text, DECLARED) is None
    assert recover(text, DECLARED, prose=True) == (BOTH, "among_prose")
    assert recover("Use get_weather with the city. ```json\nnot json\n```", DECLARED, prose=True) is None
