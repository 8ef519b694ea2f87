"""A tool schema's regular expressions, matched with `regex` under a time limit.

A request's tool schemas come from the client and a call's arguments from a member, and both are checked on the
event loop. jsonschema matches `pattern` and `patternProperties` (and the property names `additionalProperties`
and `unevaluatedProperties` leave to them) with Python's `re`, which backtracks without limit: `^(\\w+\\s?)*$` on
a 27-character argument held the router for seconds. The validators here match `pattern`, `patternProperties`
and `additionalProperties` with `regex` (whose engine avoids most of that backtracking, and takes a timeout),
each call's searches together within `PATTERN_TIMEOUT` (`deadline`); a search past it raises `PatternUnchecked`,
and the call is invalid. What jsonschema would still match with `re` (`unevaluatedProperties` beside
`patternProperties`, or a nested `$schema`, which switches to jsonschema's own validators) is refused where the
schema uses patterns (`pattern_problem`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import referencing
import referencing.exceptions
import referencing.jsonschema
import regex
from jsonschema import validators
from jsonschema.exceptions import ValidationError

PATTERN_TIMEOUT = 0.02  # s: what one call's pattern searches may take together (ordinary ones take microseconds)
PATTERN_BUDGET = 0.1  # s: what one request's (every seat's calls') may take together
# When the searches under way must end (monotonic); None: each search gets PATTERN_TIMEOUT. Set per checked call
# by its caller (a ContextVar, not the validator: jsonschema makes a new validator for every subschema).
deadline: ContextVar[float | None] = ContextVar("council_pattern_deadline", default=None)
_PATTERN_KEYWORDS = ("pattern", "patternProperties")
REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")  # what jsonschema follows to another schema


class PatternUnchecked(Exception):
    """A pattern could not be matched: it ran out of time, or `regex` cannot compile it."""


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> regex.Pattern[str]:
    return regex.compile(pattern)


def _compiles(pattern: object) -> bool:
    if isinstance(pattern, str):
        _compiled(pattern)  # a regex.error says why not
    return True


# A schema's own check (its `pattern`s are `format: regex` in the metaschema): compiled as they are matched, with
# `regex`, not jsonschema's `re`, which refuses what JSON Schema allows (`\p{L}`, `(?<n>...)\k<n>`).
FORMATS = validators.Draft202012Validator.FORMAT_CHECKER.__class__()
FORMATS.checks("regex", raises=regex.error)(_compiles)


def search(pattern: str, text: str) -> bool:
    """Whether `pattern` matches somewhere in `text` (JSON Schema's rule), within what `deadline` leaves."""
    until = deadline.get()
    left = PATTERN_TIMEOUT if until is None else until - time.monotonic()
    try:
        if left <= 0:
            raise TimeoutError
        return _compiled(pattern).search(text, timeout=left) is not None
    except TimeoutError:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise PatternUnchecked(f"pattern {pattern!r} ran out of time on {shown!r}") from None
    except regex.error as exc:
        raise PatternUnchecked(f"pattern {pattern!r} cannot be compiled: {exc}") from None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")  # jsonschema's message


def _pattern_properties(validator: Any, patterns: Mapping[str, Any], instance: Any,
                        schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


_ADDITIONAL = validators.Draft202012Validator.VALIDATORS["additionalProperties"]  # every draft's


def _additional_properties(validator: Any, additional: Any, instance: Any,
                           schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    """jsonschema's `additionalProperties`, the property names matched here where `patternProperties` has some
    (jsonschema's own matches them with `re`; without patterns it matches nothing)."""
    if "patternProperties" not in schema:
        yield from _ADDITIONAL(validator, additional, instance, schema)
        return
    if not validator.is_type(instance, "object"):
        return
    properties, patterns = schema.get("properties", {}), schema["patternProperties"]
    extras = [k for k in instance if k not in properties and not any(search(p, k) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        verb = "does" if len(extras) == 1 else "do"
        joined = ", ".join(repr(each) for each in sorted(extras))
        yield ValidationError(f"{joined} {verb} not match any of the regexes: "
                              f"{', '.join(repr(each) for each in sorted(patterns))}")


_KEYWORDS = {"pattern": _pattern, "patternProperties": _pattern_properties,
             "additionalProperties": _additional_properties}
_TIMED = {base: validators.extend(base, _KEYWORDS) for base in (
    validators.Draft3Validator, validators.Draft4Validator, validators.Draft6Validator, validators.Draft7Validator,
    validators.Draft201909Validator, validators.Draft202012Validator)}


def validator_class(schema: Any) -> Any:
    """The validator for a tool's schema (its `$schema`'s draft, else 2020-12), patterns matched here."""
    kind = validators.validator_for(schema, default=validators.Draft202012Validator)
    return _TIMED.get(kind, _TIMED[validators.Draft202012Validator])


def pattern_problem(schema: Any) -> tuple[bool, str | None]:
    """Whether a (valid) tool schema uses patterns, and why those could not be matched under the time limit, if
    so: jsonschema matches `unevaluatedProperties`' property names against `patternProperties` with `re` itself,
    and a nested `$schema` naming a draft switches to jsonschema's own validators. Its `$ref`s are followed (each
    once), not only its keywords' subschemas: one can lead to a schema beside them, under a key no keyword reads,
    which jsonschema checks all the same."""
    dialect = str(schema.get("$schema", "")) if isinstance(schema, Mapping) else ""
    spec = referencing.jsonschema.specification_with(dialect, default=referencing.jsonschema.DRAFT202012)
    found: set[str] = set()
    nested_schema = False
    root = spec.create_resource(schema)
    todo = [(root, referencing.Registry().resolver_with_root(root))]  # empty: nothing remote is fetched
    seen: set[int] = set()
    while todo:
        resource, resolver = todo.pop()
        contents = resource.contents
        if isinstance(contents, Mapping):
            if id(contents) in seen:
                continue
            seen.add(id(contents))
            found.update(k for k in (*_PATTERN_KEYWORDS, "unevaluatedProperties") if k in contents)
            nested_schema = nested_schema or (contents is not schema and "$schema" in contents)
            for keyword in REF_KEYWORDS:
                if isinstance(ref := contents.get(keyword), str):
                    try:
                        resolved = resolver.lookup(ref)
                    except referencing.exceptions.Unresolvable:
                        continue  # the call's check says so
                    if isinstance(resolved.contents, Mapping):
                        todo.append((spec.create_resource(resolved.contents), resolved.resolver))
        todo.extend((sub, resolver.in_subresource(sub)) for sub in resource.subresources())
    patterned = any(k in found for k in _PATTERN_KEYWORDS)
    if "patternProperties" in found and "unevaluatedProperties" in found:
        return True, ("`unevaluatedProperties` beside `patternProperties` is not supported: its property names would "
                      "be matched without a time limit")
    if patterned and nested_schema:
        return True, ("a `$schema` inside a schema that uses patterns is not supported: its patterns would be matched "
                      "without a time limit")
    return patterned, None
