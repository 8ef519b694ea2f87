"""The policy reference, generated from the pydantic models of `council.policy.schema` so it cannot drift:
the JSON Schema (`council policy-schema`, docs/policy.schema.json, for editors' YAML language servers) and
the markdown page listing every key (`council policy-schema --markdown`, docs/policy.md)."""

from __future__ import annotations

import copy
import math
from typing import Any

import yaml

from council.policy.schema import Policy
from council.units import DURATION_JSON_SCHEMA, SIZE_JSON_SCHEMA

REGENERATE = "council policy-schema --markdown > docs/policy.md"
REGENERATE_SCHEMA = "council policy-schema > docs/policy.schema.json"

# pydantic leaves a field's `gt`/`ge` on a nullable annotated type (`Size | None`) under its own names;
# JSON Schema spells them these.
_CONSTRAINTS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}
_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs")


def policy_json_schema() -> dict[str, Any]:
    """The policy's JSON Schema in validation mode: what users write (`3GiB`, `30s`, the cascade's list form)."""
    schema = copy.deepcopy(Policy.model_json_schema(mode="validation"))
    _spell_constraints(schema)
    schema["title"] = "council policy"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def _spell_constraints(node: Any) -> None:
    if not isinstance(node, dict):
        return
    for ours, theirs in _CONSTRAINTS.items():
        if ours in node:
            node[theirs] = node.pop(ours)
    for key in _SUBSCHEMA_LISTS:
        for child in node.get(key, []):
            _spell_constraints(child)
    for key in _SUBSCHEMA_MAPS:
        for child in node.get(key, {}).values():
            _spell_constraints(child)
    for key in ("items", "additionalProperties"):
        _spell_constraints(node.get(key))


class _Renderer:
    def __init__(self, schema: dict[str, Any]) -> None:
        self.defs: dict[str, Any] = schema.get("$defs", {})
        self.sections: list[str] = []

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        return self.defs[ref.rsplit("/", 1)[1]] if ref else node

    def model(self, node: dict[str, Any]) -> dict[str, Any] | None:
        """The object model this node holds (through a `$ref`, or beside `null` or a cascade's list form)."""
        node = self.resolve(node)
        if "properties" in node:
            return node
        for choice in node.get("anyOf", []):
            if (found := self.model(choice)) is not None:
                return found
        return None

    def type_of(self, node: dict[str, Any]) -> str:
        node = self.resolve(node)
        if node.get("anyOf") in (SIZE_JSON_SCHEMA["anyOf"], DURATION_JSON_SCHEMA["anyOf"]):
            return "size" if node["anyOf"] == SIZE_JSON_SCHEMA["anyOf"] else "duration"
        if "anyOf" in node:
            return " or ".join(self.type_of(choice) for choice in node["anyOf"])
        if "const" in node:
            return f"`{node['const']}`"
        if "enum" in node:
            return "one of " + ", ".join(f"`{value}`" for value in node["enum"])
        if "properties" in node:
            return "object"
        kind = node.get("type")
        if kind == "array":
            return f"list of {self.type_of(node.get('items', {}))}"
        if kind == "object":
            return f"map of {self.type_of(node.get('additionalProperties', {}))}"
        if kind == "null":
            return "null"
        words = {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean"}
        text = words.get(kind, "any") if isinstance(kind, str) else "any"
        return text + _bounds(node)

    def value(self, node: dict[str, Any], value: Any) -> str:
        """A value as a policy writes it: YAML flow style, sizes and durations with their units."""
        unit = self.type_of(node)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if unit.startswith("size"):
                return f"`{_size(int(value))}`"
            if unit.startswith("duration"):
                return f"`{_duration(float(value))}`"
        if isinstance(value, dict):
            # JSON made `step_cost`'s integer keys strings; a policy writes them as numbers.
            value = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in value.items()}
        text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False).strip()
        text = text.removesuffix("...").strip()
        return f"`{text}`"

    def section(self, model: dict[str, Any], path: str) -> None:
        title = f"`{path}`" if path else "Top level"
        lines = [f"## {title}", ""]
        if description := model.get("description"):
            lines += [_one_line(description), ""]
        lines += ["| key | type | default | example | what |", "|---|---|---|---|---|"]
        children: list[tuple[dict[str, Any], str]] = []
        required = set(model.get("required", []))
        for name, prop in model["properties"].items():
            key = f"{path}.{name}" if path else name
            child, child_path = self.child(prop, key)
            if "default" in prop:
                default = "see below" if child is not None and prop["default"] else self.value(prop, prop["default"])
            else:
                default = "required" if name in required else ""
            examples = prop.get("examples")
            if examples:
                example = self.value(prop, examples[0])
            elif isinstance(prop.get("default"), bool):
                example = self.value(prop, not prop["default"])
            else:
                example = self.value(prop, prop.get("default"))
            cells = [f"`{key}`", self.type_of(prop), default, example, _one_line(prop.get("description", ""))]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
            if child is not None:
                children.append((child, child_path))
        self.sections.append("\n".join(lines) + "\n")
        for child, child_path in children:
            self.section(child, child_path)

    def child(self, prop: dict[str, Any], key: str) -> tuple[dict[str, Any] | None, str]:
        """The object model a key holds, and the dotted path of its keys (`models.NAME`, `gpus[]`)."""
        if (model := self.model(prop)) is not None:
            return model, key
        if prop.get("type") == "array" and (model := self.model(prop.get("items", {}))) is not None:
            return model, f"{key}[]"
        extra = prop.get("additionalProperties")
        if prop.get("type") == "object" and isinstance(extra, dict) and (model := self.model(extra)) is not None:
            return model, f"{key}.NAME"
        return None, key


def _bounds(node: dict[str, Any]) -> str:
    parts = []
    for keyword, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if keyword in node:
            parts.append(f"{sign} {node[keyword]}")
    if "minLength" in node:
        parts.append("non-empty")
    if "pattern" in node:
        parts.append(f"matching `{node['pattern']}`")
    return f" ({', '.join(parts)})" if parts else ""


def _size(n: int) -> str:
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _duration(seconds: float) -> str:
    for unit, factor in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    return f"{round(seconds * 1000)}ms"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def policy_markdown() -> str:
    """docs/policy.md: every key of a policy (dotted path) with its type, default, an example and what it does."""
    schema = policy_json_schema()
    renderer = _Renderer(schema)
    renderer.section(schema, "")
    head = f"""# Policy reference

<!-- Generated from council/policy/schema.py: do not edit; `{REGENERATE}` writes it. -->

Every key of a council policy (YAML), generated from the pydantic models in `council/policy/schema.py`.
`council check POLICY` validates a file against them (and against the machine); unknown keys are errors.
The same schema as JSON Schema is [`policy.schema.json`](policy.schema.json) (`council policy-schema`): with
the line `# yaml-language-server: $schema=PATH/TO/policy.schema.json` at the top of a policy, an editor's YAML
language server completes and checks its keys.

- A `size` is bytes, or a number with a unit: `B, KiB, MiB, GiB, TiB`, or `KB, MB, GB, TB` (powers of 1000),
  e.g. `3GiB`, `512MiB`, `16GB`.
- A `duration` is seconds, or a number with a unit: `ms, s, m, h`, e.g. `30s`, `500ms`, `2m`.
- Paths expand `~` and `$VARS`; `$COUNCIL_HOME` defaults to the cache folder (`~/.cache/council`).
- `NAME` in a path is a name you choose (a model's, a council's); `[]` is any item of a list.
"""
    return head + "\n" + "\n".join(renderer.sections)
