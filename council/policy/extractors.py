"""The extractor mini-language of `vote.extract` (`number`, `choice`, `json:PATH`, `regex:PATTERN`, ...).

The policy owns its language: a spec is parsed and checked here, so `council check` reports a bad one at
its line. `council.voting.extract` turns a parsed spec into the function that reads replies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from council.errors import CouncilError

KINDS = ("auto", "number", "choice", "text", "json:PATH", "regex:PATTERN")
SIMPLE_KINDS = ("auto", "number", "choice", "text")


class ExtractError(CouncilError, ValueError):
    """A bad extractor spec (unknown kind, bad regex, bad JSON path)."""


@dataclass(frozen=True)
class ExtractorSpec:
    """A parsed spec: its kind and, for `json`, the key path, for `regex`, the compiled pattern."""

    kind: str
    name: str
    path: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None


@lru_cache(maxsize=256)
def parse_extractor_spec(spec: str) -> ExtractorSpec:
    """Parse `auto`, `number`, `choice`, `text`, `json:PATH` or `regex:PATTERN`; ExtractError says what is wrong."""
    kind, sep, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind in SIMPLE_KINDS:
        if sep:
            raise ExtractError(f"extractor {kind!r} takes no argument: {spec!r}")
        return ExtractorSpec(kind, kind)
    if kind == "json":
        # Dot-separated keys and list indexes (negative counts from the end); an empty PATH is the root.
        path = arg.strip()
        keys = tuple(path.split(".")) if path else ()
        if any(not key for key in keys):
            raise ExtractError(f"empty key in JSON path {path!r}: write e.g. json:result.items.0.name")
        return ExtractorSpec("json", f"json:{path}", path=keys)
    if kind == "regex":
        # PATTERN is kept verbatim: it may contain colons and meaningful spaces.
        if not arg:
            raise ExtractError("empty regex: write e.g. regex:ANSWER: (\\w+)")
        try:
            pattern = re.compile(arg)
        except (re.error, OverflowError, RecursionError) as e:  # `a{4294967296}`: OverflowError, not re.error
            raise ExtractError(f"bad regex {arg!r}: {e}") from e
        return ExtractorSpec("regex", f"regex:{arg}", pattern=pattern)
    raise ExtractError(f"unknown extractor {spec!r}: use one of {', '.join(KINDS)}")
