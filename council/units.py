"""Sizes (`3GiB`, `512MiB`, `16GB`) and durations (`30s`, `500ms`, `2m`) as policies write them."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema

_SIZE_UNITS = {
    "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER_UNIT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def _number_and_unit(value: object, default_unit: str, what: str, examples: str) -> tuple[float, str]:
    """`3GiB` -> (3.0, "gib"); a bare number takes `default_unit`. Booleans are not numbers here."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number, unit = float(value), default_unit
    elif isinstance(value, str) and (m := _NUMBER_UNIT.match(value)):
        number, unit = float(m.group(1)), (m.group(2) or default_unit).lower()
    else:
        raise ValueError(f"{value!r} is not a {what}: write e.g. {examples}")
    # YAML's `.inf` and `.nan` are floats, and so is a 400-digit number (inf): none is a size or a duration.
    if not math.isfinite(number):
        raise ValueError(f"a {what} must be a finite number, not {value!r}")
    return number, unit


def parse_size(value: object) -> int:
    """Bytes from an int or a string with a unit (`B, KiB, MiB, GiB, TiB`; `KB, MB, GB, TB` are powers of 1000)."""
    number, unit = _number_and_unit(value, "b", "size", "3GiB, 512MiB or 16GB")
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown size unit {unit!r} in {value!r}: use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB")
    if number < 0:
        raise ValueError(f"a size cannot be negative: {value!r}")
    size = number * _SIZE_UNITS[unit]
    if not math.isfinite(size):
        raise ValueError(f"a size must be a finite number, not {value!r}")
    return round(size)


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string with a unit (`ms, s, m, h`)."""
    number, unit = _number_and_unit(value, "s", "duration", "30s, 500ms or 2m")
    if unit not in _DURATION_UNITS:
        raise ValueError(f"unknown duration unit {unit!r} in {value!r}: use ms, s, m or h")
    if number <= 0:
        raise ValueError(f"a duration must be positive: {value!r}")
    seconds = number * _DURATION_UNITS[unit]
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number, not {value!r}")
    return seconds


def format_size(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number readable (`2.70 GiB`)."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{int(n)} B"


# The policy's JSON Schema (`council policy-schema`) shows what users write: a number or a string with a unit.
SIZE_JSON_SCHEMA = {
    "anyOf": [{"type": "number", "minimum": 0},
              {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([bB]|[kKmMgGtT][iI]?[bB])?\s*$"}],
}
DURATION_JSON_SCHEMA = {
    "anyOf": [{"type": "number", "exclusiveMinimum": 0},
              {"type": "string",
               "pattern": r"^\s*(0*[1-9]\d*(\.\d+)?|0+\.\d*[1-9]\d*)\s*([mM][sS]|[sSmMhH])?\s*$"}],
}

Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(SIZE_JSON_SCHEMA, mode="validation")]
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(DURATION_JSON_SCHEMA, mode="validation")]
