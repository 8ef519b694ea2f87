"""`council check` and `council plan`: a policy validated, then packed into slots."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from council.cli.console import app, err, fail, llama_server_or_exit, load_or_exit, out


@app.command()
def check(policy: Annotated[str, typer.Argument(help="The policy file (YAML).")]) -> None:
    """Validate a policy: exit 0 when valid, 2 with one `file:line: path: message` per problem."""
    from council.plan.estimate import read_model_header
    from council.policy.checks import environment_problems

    loaded = load_or_exit(policy)
    server = llama_server_or_exit(required=False)
    problems = environment_problems(loaded, server, read_model_header)
    for problem in problems:
        err.print(problem.format(loaded.file), highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)
    if server is None:
        out.print("[yellow]note:[/yellow] no llama-server installed, so draft types were not checked")
    p = loaded.policy
    out.print(f"{policy}: valid ({len(p.models)} models, {len(p.councils)} councils)")


@app.command()
def plan(
    policy: Annotated[str, typer.Argument(help="The policy file (YAML).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Estimate each llama-server process's memory and pack councils into slots; exit 3 if some council does not
    fit."""
    from council.plan.estimate import EstimateError
    from council.plan.gguf import GgufError
    from council.plan.planner import plan_policy
    from council.policy.checks import file_problems

    loaded = load_or_exit(policy)
    problems = file_problems(loaded)
    for problem in problems:
        err.print(problem.format(loaded.file), highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)
    try:
        result = plan_policy(loaded.policy)
    except (GgufError, EstimateError, FileNotFoundError) as exc:
        raise fail(str(exc), 2) from None
    if json_out:
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
    else:
        _print_plan(result.to_json())
    for why in result.ignored:
        err.print(f"{loaded.file}: {why}", highlight=False, soft_wrap=True)
    raise typer.Exit(0 if result.all_admitted else 3)


def _print_plan(doc: dict[str, Any]) -> None:
    from council.units import format_size

    gpus = Table("GPU", "id", "memory", "reserve", "slots used", "source",
                 title=f"slots of {format_size(doc['slot_bytes'])}")
    for g in doc["gpus"]:
        gpus.add_row(g["name"], g["id"], format_size(g["memory_bytes"]), format_size(g["reserve_bytes"]),
                     f"{g['slots_used']}/{g['slots']}", g["source"])
    out.print(gpus if doc["gpus"] else "[red]no GPUs: NVML sees none and the policy declares no gpus:[/red]")
    # One row per llama-server process (the plan lists each seat, with its process's whole estimate: a row per
    # seat counted a shared process once per seat). A process's GPU by id: identical cards share a name.
    processes = Table("process", "seats", "model", "estimate", "weights", "kv", "recurrent", "mtp", "compute",
                      "overhead", "slots", "GPU id", title=f"processes (estimates for {doc['device']} memory)")
    seats: dict[str, list[dict[str, Any]]] = {}
    for m in doc["members"]:
        seats.setdefault(m["process"], []).append(m)
    for key, served in seats.items():
        m, b = served[0], served[0]["breakdown"]
        source = " (policy)" if m["estimate_source"] == "policy" else ""
        processes.add_row(key, ", ".join(s["name"] for s in served), m["model"],
                          format_size(m["estimate_bytes"]) + source,
                          *(format_size(b[k]) for k in ("weights", "kv", "recurrent", "mtp", "compute", "overhead")),
                          str(m["slots"]), m["gpu"] or "[red]—[/red]")
    out.print(processes)
    for c in doc["councils"]:
        if c["fits"]:
            out.print(f"[green]✓[/green] council {c['name']} fits")
        elif c["fallback"]:
            out.print(f"[yellow]~[/yellow] council {c['name']} runs its fallback: {c['reason']}")
        else:
            out.print(f"[red]✗[/red] council {c['name']} does not fit: {c['reason']}")


@app.command("policy-schema")
def policy_schema(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the reference page (docs/policy.md) instead.")]
    = False,
) -> None:
    """Print the policy's JSON Schema (for an editor's YAML language server), or with --markdown every key with
    its type, default and an example."""
    from council.policy.reference import policy_json_schema, policy_markdown

    if markdown:
        sys.stdout.write(policy_markdown())
    else:
        sys.stdout.write(json.dumps(policy_json_schema(), indent=2, ensure_ascii=False) + "\n")
