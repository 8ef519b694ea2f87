"""The policy reference users find: `council policy-schema` (the JSON Schema an editor's YAML language server
reads), docs/policy.schema.json and docs/policy.md, generated from the pydantic models and kept current here;
the README's example list names every shipped policy (README: "Policies, `council check` and `council plan`")."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
import yaml

from council.policy.reference import REGENERATE, REGENERATE_SCHEMA, policy_json_schema, policy_markdown
from council.policy.schema import Policy

ROOT = Path(__file__).resolve().parents[2]
POLICIES = sorted((ROOT / "policies").glob("*.yaml"))


def _json_like(path: Path) -> Any:
    # What a YAML language server validates: the document as JSON data (mapping keys are strings).
    return json.loads(json.dumps(yaml.safe_load(path.read_text())))


@pytest.fixture(scope="module")
def printed_schema() -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "council", "policy-schema"], capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def validator(printed_schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(printed_schema)
    return jsonschema.Draft202012Validator(printed_schema)


def test_committed_schema_is_what_the_command_prints(printed_schema: dict[str, Any]) -> None:
    committed = (ROOT / "docs" / "policy.schema.json").read_text()
    assert json.loads(committed) == printed_schema, f"docs/policy.schema.json is stale: run `{REGENERATE_SCHEMA}`"
    assert committed == json.dumps(policy_json_schema(), indent=2, ensure_ascii=False) + "\n", REGENERATE_SCHEMA


def test_committed_reference_is_generated() -> None:
    committed = (ROOT / "docs" / "policy.md").read_text()
    assert committed == policy_markdown(), f"docs/policy.md is stale: run `{REGENERATE}`"


def test_markdown_flag_prints_the_reference() -> None:
    done = subprocess.run([sys.executable, "-m", "council", "policy-schema", "--markdown"], capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout == policy_markdown()


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [("", schema)] + [(name, model) for name, model in schema["$defs"].items()]
    out = []
    for where, model in found:
        # A model whose JSON Schema also takes a list form (`cascade`) has its object form inside anyOf.
        forms = [model, *model.get("anyOf", [])]
        properties = next(form["properties"] for form in forms if "properties" in form)
        out += [(f"{where}.{key}", prop) for key, prop in properties.items()]
    return out


def test_every_key_says_what_it_is(printed_schema: dict[str, Any]) -> None:
    undescribed = [key for key, prop in _properties(printed_schema) if len(prop.get("description", "")) < 10]
    assert undescribed == []


def test_reference_lists_every_key_with_type_default_and_example(printed_schema: dict[str, Any]) -> None:
    rows = {}
    for line in policy_markdown().splitlines():
        if m := re.match(r"^\| `([^`]+)` \| (.+?) \| (.*?) \| (.*?) \| (.+) \|$", line):
            rows[m[1]] = m.groups()[1:]
    keys = {key.rsplit(".", 1)[1] for key, _ in _properties(printed_schema)}
    assert keys == {path.rsplit(".", 1)[-1] for path in rows}
    for path in ("slots.size", "models.NAME.draft.auto.window", "councils.NAME.members[].sampling.seed",
                 "councils.NAME.vote.cascade.first", "server.api_keys[].scopes", "gpus[].memory"):
        assert path in rows
    for path, (kind, default, example, _) in rows.items():
        assert kind and default and example, path
    # Sizes and durations read as users write them, not as the bytes and seconds they become.
    assert rows["slots.size"][:2] == ("size", "`3GiB`")
    assert rows["councils.NAME.timeout"][:2] == ("duration", "`30s`")
    assert rows["gpus[].memory"][1] == "required"


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_shipped_policies_validate(validator: jsonschema.Draft202012Validator, path: Path) -> None:
    data = _json_like(path)
    assert list(validator.iter_errors(data)) == []
    Policy.model_validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(("path", "value"), [
    (("slots", "size"), "3 parsecs"),                     # not a size
    (("councils", "demo", "quorum"), "most"),             # not majority, all or a number
    (("councils", "demo", "members", 0, "wieght"), 2),    # a typo is an unknown key, not a default
    (("councils", "demo", "timeout"), "0s"),              # a duration is positive
    (("councils", "demo", "vote", "cascade"), [[0], []]),  # an empty stage
    (("version",), 2),
])
def test_broken_policy_fails_both(validator: jsonschema.Draft202012Validator, path: tuple[Any, ...],
                                  value: Any) -> None:
    data = _json_like(ROOT / "policies" / "demo.yaml")
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(validator.iter_errors(data)) != []
    with pytest.raises(pydantic.ValidationError):
        Policy.model_validate(data)


SIZES = ["3GiB", "512mib", "16GB", "1.5 TiB", "0", 0, 1024, 2.5, "-1GiB", "3 parsecs", "GiB", "", True, -1]
DURATIONS = ["30s", "500ms", "2m", "1h", "10", "0.5s", 5, 0.25, "0s", "0", 0, -3, "1 day", "s", True]


@pytest.mark.parametrize(("section", "key", "value"), [*(("slots", "reserve", v) for v in SIZES),
                                                       *(("server", "heartbeat", v) for v in DURATIONS)])
def test_sizes_and_durations_agree_with_the_parser(validator: jsonschema.Draft202012Validator, section: str,
                                                   key: str, value: Any) -> None:
    data = {section: {key: value}}
    accepted = True
    try:
        Policy.model_validate(data)
    except pydantic.ValidationError:
        accepted = False
    assert validator.is_valid(data) == accepted


def test_readme_example_list_names_every_policy() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Policies, `council check` and `council plan`", 1)[1].split("\n## ", 1)[0]
    missing = [p.name for p in POLICIES if f"`{p.name}`" not in section]
    assert missing == [], "README's `policies/` examples should name these"
    assert "yaml-language-server: $schema=" in readme
