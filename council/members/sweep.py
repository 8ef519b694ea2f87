"""`council tune`'s measurement: one llama-server per draft length, the same prompts, one row per setting.

Each setting is launched exactly as a member would be (`build_launch`, the same `MemberProcess` life: our own
/health and /props, a warm-up), so what is measured is what the policy runs. A row holds the decode speed
(tokens ÷ decode time summed over the prompts' `timings`), the acceptance (accepted ÷ drafted), the decode
steps (tokens − accepted: a step yields one token plus its accepted draft) and the time of one step, the
per-position accepted counts from `/metrics`, the plan's memory estimate and the process's measured RSS.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from council.members.binary import LlamaServerInfo
from council.members.draft_tuning import StepCost, default_cost_per_token, recommend
from council.members.launch import build_launch
from council.members.metrics import MemberStats, parse_member_metrics
from council.members.process import LifeConfig, ProcessRecipe
from council.members.states import State
from council.members.supervisor import Supervisor
from council.plan.gguf import read_gguf
from council.plan.gpus import device_of, resolve_gpus
from council.plan.planner import estimate_process
from council.policy.schema import Policy

# The built-in workload: prose, code and math, as the card's numbers move with each (0.87 code, 0.40 prose).
PROMPTS: tuple[str, ...] = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in plain words why the sky is blue and sunsets are red.",
    "Write a Python function that parses a CSV file into a list of dicts, with type hints and a docstring.",
    "Write a JavaScript function that debounces another function, then show how to use it.",
    "A train travels 120 km in 1.5 hours and then 80 km in 1 hour. What is its average speed? Show the steps.",
    "Solve for x: 3x + 7 = 2x - 5. Then check the answer by substituting it back.",
)


@dataclass
class SweepRow:
    n: int
    tokens: int = 0  # decoded tokens over all prompts
    decode_seconds: float = 0.0
    drafted: int = 0
    accepted: int = 0
    draft_steps: int = 0  # from /metrics (`num_drafts_total`)
    per_pos: list[int] = field(default_factory=list)  # accepted tokens per draft position, from /metrics
    estimate_bytes: int | None = None
    rss_bytes: int | None = None  # VmRSS after the prompts
    peak_rss_bytes: int | None = None  # VmHWM
    error: str | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def steps(self) -> int:
        """Decode steps: each yields one token plus the draft tokens it accepted."""
        return max(1, self.tokens - self.accepted)

    @property
    def tokens_per_step(self) -> float:
        return self.tokens / self.steps

    @property
    def step_seconds(self) -> float:
        return self.decode_seconds / self.steps

    @property
    def position_acceptance(self) -> list[float]:
        """Share of draft steps that accepted each position (the design's per-position pattern)."""
        return [c / self.draft_steps for c in self.per_pos] if self.draft_steps else []

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.update(tokens_per_second=self.tokens_per_second, acceptance=self.acceptance, steps=self.steps,
                   tokens_per_step=self.tokens_per_step, step_seconds=self.step_seconds,
                   position_acceptance=self.position_acceptance)
        return doc


@dataclass
class SweepResult:
    model: str
    draft_type: str
    rows: list[SweepRow]
    # The lengths the policy can be set to (None: every one measured); others, such as n = 0 below `auto.floor`,
    # are measured only as the baseline of the speed-up and the step costs.
    candidates: frozenset[int] | None = None

    @property
    def ok_rows(self) -> list[SweepRow]:
        return [r for r in self.rows if r.error is None and r.tokens > 0]

    @property
    def baseline(self) -> SweepRow | None:
        return next((r for r in self.ok_rows if r.n == 0), None)

    def speedup(self, row: SweepRow) -> float | None:
        base = self.baseline
        return row.tokens_per_second / base.tokens_per_second if base and base.tokens_per_second else None

    @property
    def recommended(self) -> int | None:
        rows = [r for r in self.ok_rows if self.candidates is None or r.n in self.candidates]
        return recommend([{"n": r.n, "tokens_per_second": r.tokens_per_second} for r in rows]) if rows else None

    def step_cost(self) -> StepCost:
        """The cost model the live tuner uses: each measured n's step time relative to a plain step."""
        return StepCost.from_seconds({r.n: r.step_seconds for r in self.ok_rows},
                                     default_cost_per_token(self.draft_type))

    def to_json(self) -> dict[str, Any]:
        cost = self.step_cost()
        return {"model": self.model, "draft_type": self.draft_type, "recommended": self.recommended,
                "step_cost": {str(n): round(v, 4) for n, v in cost.measured.items()},
                "rows": [{**r.to_json(), "speedup": self.speedup(r)} for r in self.rows]}


def _rss(pid: int | None) -> tuple[int | None, int | None]:
    if pid is None:
        return None, None
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(rest.split()[0]) * 1024
    return found.get("VmRSS"), found.get("VmHWM")


async def _ask(client: httpx.AsyncClient, url: str, key: str, prompt: str, tokens: int, chat: bool) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    if chat:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
                                "temperature": 0, "seed": 0}
        reply = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
    else:
        body = {"prompt": prompt, "n_predict": tokens, "temperature": 0, "seed": 0}
        reply = await client.post(f"{url}/completion", json=body, headers=headers)
    reply.raise_for_status()
    timings = reply.json().get("timings")
    if not isinstance(timings, dict):
        raise RuntimeError("the reply has no `timings`")
    return timings


async def measure(policy: Policy, model: str, n: int, server: LlamaServerInfo, prompts: Sequence[str], tokens: int,
                  run_dir: Path, *, chat: bool = True, threads: int | None = None,
                  load_timeout: float = 180.0) -> SweepRow:
    """One setting: launch the model at draft length n, send every prompt, read timings, /metrics and RSS."""
    at_n = policy.with_draft_n(model, n)
    row = SweepRow(n)
    with contextlib.suppress(Exception):
        gpus = resolve_gpus(at_n)
        row.estimate_bytes = estimate_process(at_n, model, 1, device_of(gpus) if gpus else "cpu").total
    recipe = ProcessRecipe(f"tune-{model}-n{n}", lambda port: build_launch(
        key=f"tune:{model}:n{n}", model_name=model, policy=at_n, server=server, port=port, chat=chat,
        threads=threads), (f"tune/{model}",), at_n.models[model].parallel)
    life = LifeConfig(run_dir=run_dir, instance=f"tune-n{n}", load_timeout=load_timeout, max_failures=1,
                      metrics_interval=3600.0)
    supervisor = Supervisor(life, [recipe])
    process = supervisor.processes[recipe.name]
    try:
        await supervisor.start()
        await supervisor.wait_settled(load_timeout + 60)
        if process.state is not State.READY:
            row.error = process.reason or f"state {process.state}"
            return row
        spec = process.spec
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=5.0)) as client:
            for prompt in prompts:
                t = await _ask(client, spec.url, spec.api_key, prompt, tokens, chat)
                row.tokens += int(t.get("predicted_n", 0))
                row.decode_seconds += float(t.get("predicted_ms", 0.0)) / 1000
                row.drafted += int(t.get("draft_n", 0) or 0)
                row.accepted += int(t.get("draft_n_accepted", 0) or 0)
            metrics = await client.get(f"{spec.url}/metrics", headers={"Authorization": f"Bearer {spec.api_key}"})
        stats = parse_member_metrics(metrics.text, MemberStats()) if metrics.status_code == 200 else MemberStats()
        # The warm-up completion drafted too: per-position counts are shares of all draft steps, so keep both.
        row.draft_steps, row.per_pos = stats.draft_steps, list(stats.draft_per_pos)
        row.rss_bytes, row.peak_rss_bytes = _rss(process.pid)
    except (httpx.HTTPError, RuntimeError, ValueError) as exc:
        row.error = f"{type(exc).__name__}: {exc}"
    finally:
        await supervisor.stop()
    return row


async def sweep(policy: Policy, model: str, ns: Sequence[int], server: LlamaServerInfo, *,
                prompts: Sequence[str] = PROMPTS, tokens: int = 200, run_dir: Path | None = None,
                threads: int | None = None, on_row: Callable[[SweepRow], None] | None = None) -> SweepResult:
    """Every setting in turn (one process at a time, so they never compete for the machine)."""
    config = policy.models[model]
    if config.path is None:
        raise ValueError(f"model {model!r} is remote: there is no llama-server to tune")
    if config.draft.type == "none":
        raise ValueError(f"model {model!r} has no draft (`draft: {{type: mtp|model|ngram-mod, ...}}`)")
    chat = read_gguf(config.path).has_chat_template
    rows = []
    with tempfile.TemporaryDirectory(prefix="council-tune-") as tmp:
        for n in ns:
            row = await measure(policy, model, n, server, prompts, tokens, Path(run_dir or tmp), chat=chat,
                                threads=threads)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return SweepResult(model, config.draft.type, rows, frozenset(n for n in ns if config.draft.accepts_n(n)))
