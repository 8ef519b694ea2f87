"""A test's policy in a few lines: the machine part every test needs (the CPU as its one GPU, cut into slots)
is written here once; a test names only the models and councils it is about."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def policy_yaml(models: dict[str, Any], councils: dict[str, Any], *, memory: str = "4GiB", slot: str = "256MiB",
           gpu: str = "cpu", **top: Any) -> str:
    """The policy's YAML: the `top` keys (`server`, `state`, ...), one GPU `gpu` of `memory` in slots of `slot`
    (no reserve), then `models` and `councils`. Values may be `Path`s."""
    doc = {**top, "gpus": [{"name": gpu, "memory": memory}], "slots": {"size": slot, "reserve": 0},
           "models": models, "councils": councils}
    return yaml.safe_dump(_plain(doc), sort_keys=False)


def member_entry(model: str, **settings: Any) -> dict[str, Any]:
    """A council member: `weight`, `samples`, `name` and `rate_limit` as given, every other keyword is sampling
    (`member_entry("syn", max_tokens=6)`)."""
    own = {k: settings.pop(k) for k in ("weight", "samples", "name", "rate_limit") if k in settings}
    return {"model": model, **own, **({"sampling": settings} if settings else {})}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
