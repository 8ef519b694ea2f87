"""Estimated vs measured memory of real llama-server processes (CPU build, `--load-mode none`).

For each case a llama-server starts with `--load-mode none --fit off -t 1 -np P -c N -ctk T -ctv T -ub U`
(plus `--spec-type draft-mtp --spec-draft-n-max N` for the synthetic MTP model), `/health` is polled until
200, VmRSS is read from /proc/PID/status (idle), one completion runs whose prompt fills a whole ubatch
(so the compute buffer is touched), and VmRSS is read again. The server's own buffer-size log lines
are parsed (regexes in LOG_PATTERNS) and compared one by one with `council.plan.estimate.estimate_parts`;
the estimate's total (device="cpu") is compared with the RSS after the request minus the context
checkpoints the server logged (host-side caches that grow with use, outside the estimate).

`--fit off`: with the default `--fit on` llama-server first builds the whole model and context without
allocating them to see what fits, then frees it all; glibc keeps that heap and raises its mmap
threshold, so the RSS of the real run lands 7..21 MiB higher depending on the exact arguments (same
config, `-lv 4` last or not: 90 vs 104 MiB for the synthetic MTP model). A planner needs `--fit off`
anyway: `--fit on` may shrink the context or the offloaded layers to whatever is free at launch.

With `--gpu` (a CUDA build of llama-server in $LLAMA_SERVER) every case also gets `-ngl 999`, the
measured memory is nvidia-smi's per-process used memory, only CUDA0 buffers are compared and the
estimate is device="gpu".

Usage: python -m bench.estimate [--quick] [--gpu] [--only SUBSTRING] [--reuse RESULTS.json] [--out PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from council.members.binary import find_llama_server
from council.plan.estimate import estimate_member_bytes, estimate_parts
from council.plan.gguf import read_gguf
from council.policy.schema import DraftConfig, ModelConfig
from council.setup.catalog import by_name
from council.setup.synthetic import Qwen35Shape, write_qwen35
from tests.servers import RunningServer, launch, wait_ready

MIB = 1 << 20
RESULTS = Path(__file__).parent / "results" / "estimate.json"
N_PREDICT = 8

# llama-server log lines with buffer sizes (b11434, `-lv 4`), e.g.
#   load_tensors:   CPU_REPACK model buffer size =    28.05 MiB
#   llama_context:        CPU  output buffer size =     0.58 MiB
#   llama_kv_cache:        CPU KV buffer size =    48.00 MiB
#   llama_memory_recurrent:        CPU RS buffer size =     0.02 MiB
#   sched_reserve:        CPU compute buffer size =    41.27 MiB
#   slot create_check: id  0 | task 0 | created context checkpoint 1 of 32 (... size = 7.008 MiB)
LOG_PATTERNS = {
    "model": re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB"),
    "output": re.compile(r"llama_context:\s+(\S+)\s+output buffer size =\s+([\d.]+) MiB"),
    "kv": re.compile(r"llama_kv_cache:\s+(\S+) KV buffer size =\s+([\d.]+) MiB"),
    "rs": re.compile(r"llama_memory_recurrent:\s+(\S+) RS buffer size =\s+([\d.]+) MiB"),
    "compute": re.compile(r"sched_reserve:\s+(\S+) compute buffer size =\s+([\d.]+) MiB"),
}
CHECKPOINT = re.compile(r"created context checkpoint \d+ of \d+ .*size = ([\d.]+) MiB")
# Everything the server logs after this line belongs to the MTP draft context.
MTP_CONTEXT = re.compile(r"creating MTP draft context")


@dataclass(frozen=True)
class Case:
    name: str
    model: Path
    ctx: int
    kv: str = "f16"
    n_max: int = 0  # >0: MTP speculative decoding with this draft length
    ubatch: int = 512
    parallel: int = 1
    unified: bool = False
    held_out: bool = False  # not among the cases the CPU overhead constants were fitted on

    def config(self) -> ModelConfig:
        draft = DraftConfig(type="mtp", n_max=self.n_max) if self.n_max else DraftConfig()
        return ModelConfig(path=self.model, ctx_size=self.ctx, cache_type_k=self.kv, cache_type_v=self.kv,
                           ubatch_size=self.ubatch, parallel=self.parallel, kv_unified=self.unified, draft=draft)

    def server_args(self) -> list[str]:
        """Extra arguments after tests.servers.launch's `-c N -t 1 -np 1 --metrics` (later ones win)."""
        args = ["--load-mode", "none", "--fit", "off", "-lv", "4", "-ctk", self.kv, "-ctv", self.kv,
                "-ub", str(self.ubatch), "-np", str(self.parallel)]
        if self.n_max:
            args += ["--spec-type", "draft-mtp", "--spec-draft-n-max", str(self.n_max)]
        args += ["--kv-unified"] if self.unified else ["--no-kv-unified"]
        return args


@dataclass
class Measurement:
    idle_rss: int  # with device "gpu": nvidia-smi's used memory of the process, not its RSS
    rss: int  # after one completion whose prompt fills an ubatch
    checkpoints: int  # context checkpoints the server created during that request (host memory)
    logged: dict[str, int]  # buffer sizes from the log, bytes (rounded to 0.01 MiB by the server)
    prompt_tokens: int
    seconds: float
    log_path: str
    device: str = "cpu"

    @property
    def target(self) -> int:
        """What the estimate should match: RSS after the request without the checkpoints' host copies
        (on a GPU: the process's GPU memory, where checkpoints never are)."""
        return self.rss - (self.checkpoints if self.device == "cpu" else 0)


def vm_rss(pid: int) -> int:
    """Resident set size in bytes from /proc/PID/status (VmRSS, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _on_device(buffer: str, device: str) -> bool:
    """Whether a buffer type (CPU, CPU_REPACK, CPU_Mapped, CUDA0, CUDA_Host) lives in `device` memory."""
    if device == "gpu":
        return buffer.startswith("CUDA") and buffer != "CUDA_Host"
    return True  # a CPU-only build: every buffer is host memory


def parse_buffers(log: str, device: str = "cpu") -> dict[str, int]:
    """Buffer sizes in bytes by kind; `mtp_*` for the MTP draft context, whose lines come after
    MTP_CONTEXT. A context reserves its compute buffer again when a backend sampler is attached: the
    last size wins (the earlier buffer is freed)."""
    split = MTP_CONTEXT.search(log)
    parts = {"": log[: split.start()] if split else log, "mtp_": log[split.start():] if split else ""}
    found: dict[str, int] = {}
    for prefix, text in parts.items():
        for kind, pattern in LOG_PATTERNS.items():
            sizes = [float(m.group(2)) for m in pattern.finditer(text) if _on_device(m.group(1), device)]
            if not sizes:
                continue
            value = sizes[-1] if kind == "compute" else sum(sizes)
            found[prefix + kind] = round(value * MIB)
    return found


def _prompt_tokens(server: RunningServer, n_tokens: int) -> list[int]:
    """`n_tokens` token ids of plain English via the server's tokenizer: one sentence tokenized and its
    ids repeated, so that tokenizing does not leave a large transient heap in the RSS we measure."""
    text = "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun. "
    resp = httpx.post(f"{server.url}/tokenize", json={"content": text}, headers=server.headers, timeout=60)
    resp.raise_for_status()
    ids = [t if isinstance(t, int) else t["id"] for t in resp.json()["tokens"]]
    return (ids * (n_tokens // len(ids) + 1))[:n_tokens]


def gpu_used(pid: int) -> int:
    """GPU memory nvidia-smi reports for one process, in bytes (0 if it holds none)."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid):
            return int(fields[1]) * MIB
    return 0


def measure(binary: Path, case: Case, log_dir: Path, *, settle_s: float = 0.5, device: str = "cpu") -> Measurement:
    """Start llama-server for `case`, read its memory idle and after one ubatch-filling completion:
    VmRSS on the CPU; with device "gpu" (a CUDA build, `-ngl 999`) nvidia-smi's used memory."""
    extra = ["-ngl", "999"] if device == "gpu" else []
    read = gpu_used if device == "gpu" else vm_rss
    server = launch(binary, case.model, log_dir, *case.server_args(), *extra, ctx=case.ctx)
    try:
        start = time.monotonic()
        wait_ready(server)
        time.sleep(settle_s)
        idle = read(server.proc.pid)
        # One full ubatch (plus a few tokens) makes the compute buffer resident, within the context.
        n_prompt = min(case.ubatch + 8, case.ctx // case.parallel - N_PREDICT - 8)
        tokens = _prompt_tokens(server, n_prompt)
        body = {"prompt": tokens, "n_predict": N_PREDICT, "temperature": 0.0}
        resp = httpx.post(f"{server.url}/completion", json=body, headers=server.headers, timeout=600)
        resp.raise_for_status()
        time.sleep(settle_s)
        after = read(server.proc.pid)
        seconds = time.monotonic() - start
        log = server.log()
    finally:
        server.stop()
    checkpoints = round(sum(float(m.group(1)) for m in CHECKPOINT.finditer(log)) * MIB)
    return Measurement(idle_rss=idle, rss=after, checkpoints=checkpoints, logged=parse_buffers(log, device),
                       prompt_tokens=len(tokens), seconds=round(seconds, 1), log_path=str(server.log_path),
                       device=device)


# Estimated parts that correspond to one logged buffer kind each.
LOGGED_AS = {
    "model": ("weights", "mtp_weights"),
    "kv": ("kv",),
    "rs": ("recurrent",),
    "compute": ("compute",),
    "output": ("output",),
    "mtp_kv": ("mtp_kv",),
    "mtp_compute": ("mtp_compute",),
}


@dataclass
class Result:
    case: Case
    measured: Measurement
    estimate: dict[str, int]  # components (MemoryEstimate.breakdown)
    parts: dict[str, int]  # estimate_parts
    per_buffer: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (estimated, logged)

    @property
    def total(self) -> int:
        return sum(self.estimate.values())

    @property
    def error(self) -> float:
        """Relative error of the total against the measured target, in percent."""
        return 100.0 * (self.total - self.measured.target) / self.measured.target

    @property
    def idle_error(self) -> float:
        return 100.0 * (self.total - self.measured.idle_rss) / self.measured.idle_rss


def evaluate(case: Case, measured: Measurement) -> Result:
    config = case.config()
    gguf = read_gguf(case.model)
    device = "gpu" if measured.device == "gpu" else "cpu"
    parts = estimate_parts(config, gguf, device=device)
    estimate = estimate_member_bytes(config, gguf, device=device).breakdown()
    assert sum(estimate.values()) == sum(parts.values())
    per_buffer = {}
    for kind, names in LOGGED_AS.items():
        if kind in measured.logged or any(parts.get(n) for n in names):
            per_buffer[kind] = (sum(parts.get(n, 0) for n in names), measured.logged.get(kind, 0))
    return Result(case=case, measured=measured, estimate=estimate, parts=parts, per_buffer=per_buffer)


def synthetic_models(root: Path) -> dict[str, Path]:
    """The synthetic Qwen3.5 MTP model, and a wider one whose recurrent state is MiB-sized so that its
    growth with n_max stands out of the server's 0.01 MiB log rounding and RSS noise."""
    wide = Qwen35Shape(n_embd=256, n_ff=512, ssm_state=64, ssm_group=2, ssm_time_step_rank=16, ssm_inner=1024)
    return {
        "syn": write_qwen35(root / "synthetic-qwen35-mtp.gguf", mtp=True, seed=0),
        "syn-wide": write_qwen35(root / "synthetic-qwen35-wide-mtp.gguf", mtp=True, seed=0, shape=wide),
    }


# Short case names -> council.setup.catalog names of the real models `council setup --models all` installs.
REAL_MODELS = {
    "smollm2-135m": "smollm2-135m",
    "qwen2.5-0.5b": "qwen2.5-coder-0.5b",
    "qwen2.5-1.5b": "qwen2.5-coder-1.5b",
    "gemma3-270m": "gemma3-270m",
}


def real_model(short: str) -> Path:
    source = by_name(REAL_MODELS[short])
    assert source is not None, f"{short} is not in council.setup.catalog"
    return source.path


def all_cases(synthetic: dict[str, Path], *, quick: bool = False) -> Iterator[Case]:
    """Every real model at two contexts and two KV types, the synthetic MTP model at n_max 1..3, and a
    few cases that exercise parallel sequences, q4_0 and a small ubatch."""
    for short in REAL_MODELS:
        path = real_model(short)
        if not path.is_file():
            continue
        for ctx in (512, 4096):
            for kv in ("f16",) if quick else ("f16", "q8_0"):
                yield Case(f"{short} c{ctx} {kv}", path, ctx, kv)
    for ctx in (512, 4096):
        for n_max in (1, 2, 3):
            yield Case(f"syn-mtp c{ctx} n{n_max}", synthetic["syn"], ctx, n_max=n_max)
    if quick:
        return
    yield Case("syn-mtp c4096 q8_0 n3", synthetic["syn"], 4096, "q8_0", n_max=3)
    yield Case("syn-mtp c4096 ub64 n3", synthetic["syn"], 4096, n_max=3, ubatch=64)
    yield Case("syn-nomtp c4096", synthetic["syn"], 4096)
    for n_max in (1, 2, 3, 4):
        yield Case(f"syn-wide c4096 n{n_max}", synthetic["syn-wide"], 4096, n_max=n_max)
    smol = real_model("smollm2-135m")
    yield Case("smollm2-135m c4096 q4_0", smol, 4096, "q4_0")
    yield Case("smollm2-135m c4096 np3", smol, 4096, parallel=3)
    yield Case("smollm2-135m c4096 ub128", smol, 4096, ubatch=128)
    gemma = real_model("gemma3-270m")
    yield Case("gemma3-270m c4096 np2", gemma, 4096, parallel=2)
    # Held out: measured after the constants were fitted, to check they generalise.
    qwen05 = real_model("qwen2.5-0.5b")
    qwen15 = real_model("qwen2.5-1.5b")
    yield Case("qwen2.5-0.5b c2048 q4_0 np2", qwen05, 2048, "q4_0", parallel=2, held_out=True)
    yield Case("qwen2.5-1.5b c3000 q8_0 ub256", qwen15, 3000, "q8_0", ubatch=256, held_out=True)
    yield Case("gemma3-270m c1000 ub256", gemma, 1000, ubatch=256, held_out=True)
    yield Case("smollm2-135m c3000 np2 unified", smol, 3000, parallel=2, unified=True, held_out=True)
    yield Case("syn-mtp c2048 np2 n2", synthetic["syn"], 2048, n_max=2, parallel=2, held_out=True)
    yield Case("syn-wide c1024 q4_0 n2", synthetic["syn-wide"], 1024, "q4_0", n_max=2, held_out=True)


def growth(results: list[Result], prefix: str) -> list[dict[str, float]]:
    """Per n_max step of one synthetic model: estimated vs measured growth (MiB)."""
    steps = sorted((r for r in results if r.case.name.startswith(prefix) and r.case.n_max), key=lambda r: r.case.n_max)
    rows = []
    for lo, hi in itertools.pairwise(steps):
        rows.append({
            "from": lo.case.n_max, "to": hi.case.n_max,
            "estimate_total": (hi.total - lo.total) / MIB,
            "estimate_recurrent": (hi.estimate["recurrent"] - lo.estimate["recurrent"]) / MIB,
            "logged_rs": (hi.measured.logged.get("rs", 0) - lo.measured.logged.get("rs", 0)) / MIB,
            "rss": (hi.measured.target - lo.measured.target) / MIB,
            "idle_rss": (hi.measured.idle_rss - lo.measured.idle_rss) / MIB,
        })
    return rows


def _mib(value: float) -> str:
    return f"{value / MIB:8.2f}"


def print_report(results: list[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    device = results[0].measured.device if results else "cpu"
    what = "GPU memory (nvidia-smi)" if device == "gpu" else "RSS"
    table = Table(title=f"estimate (device={device}) vs measured llama-server {what}, MiB", show_lines=False)
    for col in ("case", "weights", "kv", "rs", "compute", "mtp", "overhead", "estimate", "RSS idle", "RSS after",
                "ckpt", "target", "err %", "idle err %"):
        table.add_column(col, justify="right" if col != "case" else "left")
    for r in results:
        m = r.measured
        e = r.estimate
        table.add_row(r.case.name, _mib(e["weights"]), _mib(e["kv"]), _mib(e["recurrent"]), _mib(e["compute"]),
                      _mib(e["mtp"]), _mib(e["overhead"]), _mib(r.total), _mib(m.idle_rss), _mib(m.rss),
                      _mib(m.checkpoints), _mib(m.target), f"{r.error:+.1f}", f"{r.idle_error:+.1f}")
    console.print(table)

    buffers = Table(title="estimated / logged buffer sizes, MiB (logged values are rounded to 0.01 MiB)")
    buffers.add_column("case")
    kinds = list(LOGGED_AS)
    for kind in kinds:
        buffers.add_column(kind, justify="right")
    for r in results:
        cells = []
        for kind in kinds:
            est, logged = r.per_buffer.get(kind, (0, 0))
            cells.append("" if not est and not logged else f"{est / MIB:.2f} / {logged / MIB:.2f}")
        buffers.add_row(r.case.name, *cells)
    console.print(buffers)

    for prefix in ("syn-mtp c4096 n", "syn-mtp c512 n", "syn-wide c4096 n"):
        rows = growth(results, prefix)
        if not rows:
            continue
        grow = Table(title=f"growth with n_max: {prefix.strip()}*, MiB per step")
        for col in ("step", "est total", "est recurrent", "logged RS", "RSS after", "RSS idle"):
            grow.add_column(col, justify="right")
        for g in rows:
            grow.add_row(f"{g['from']}->{g['to']}", f"{g['estimate_total']:.3f}", f"{g['estimate_recurrent']:.3f}",
                         f"{g['logged_rs']:.3f}", f"{g['rss']:.3f}", f"{g['idle_rss']:.3f}")
        console.print(grow)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.estimate", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="f16 only, no extra cases")
    parser.add_argument("--only", action="append", default=[], help="run cases whose name contains this")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--reuse", type=Path, help="re-evaluate the measurements of an earlier results file")
    parser.add_argument("--gpu", action="store_true",
                        help="a CUDA llama-server ($LLAMA_SERVER): offload everything, compare GPU memory")
    args = parser.parse_args(argv)
    info = find_llama_server()
    if info is None:
        print("no llama-server with MTP support found: run `council setup` first", file=sys.stderr)
        return 1
    earlier = {}
    if args.reuse:
        earlier = {c["case"]["name"]: Measurement(**c["measured"], log_path="")
                   for c in json.loads(args.reuse.read_text())["cases"]}
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="council-bench-") as tmp:
        root = Path(tmp)
        synthetic = synthetic_models(root)
        for case in all_cases(synthetic, quick=args.quick):
            if args.only and not any(s in case.name for s in args.only):
                continue
            if args.reuse and case.name not in earlier:
                continue
            measured = earlier.get(case.name) or measure(info.path, case, root, device="gpu" if args.gpu else "cpu")
            result = evaluate(case, measured)
            results.append(result)
            print(f"{case.name:32s} estimate {result.total / MIB:8.2f} MiB  target {measured.target / MIB:8.2f} MiB"
                  f"  err {result.error:+5.1f}%  ({measured.seconds:.0f} s)", flush=True)
    print_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "llama_server": {"path": str(info.path), "build": info.build},
        "cases": [
            {"case": {**asdict(r.case), "model": r.case.model.name}, "estimate": r.estimate, "parts": r.parts,
             "estimate_total": r.total, "measured": {k: v for k, v in asdict(r.measured).items() if k != "log_path"},
             "target": r.measured.target, "error_pct": round(r.error, 2), "idle_error_pct": round(r.idle_error, 2),
             "per_buffer": {k: {"estimate": e, "logged": lg} for k, (e, lg) in r.per_buffer.items()}}
            for r in results
        ],
        "growth": {p.strip(): growth(results, p) for p in ("syn-mtp c4096 n", "syn-mtp c512 n", "syn-wide c4096 n")},
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    worst = max((abs(r.error) for r in results), default=0.0)
    return 0 if worst <= 5.0 else 2


if __name__ == "__main__":
    sys.exit(main())
