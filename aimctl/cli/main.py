"""The operator's commands. Operator mistakes print one clear message and exit 2, never a traceback."""

from __future__ import annotations

import json
import logging
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aimctl.agent import cli as agent_cli
from aimctl.cli.lifecycle import app as lifecycle_app
from aimctl.cli.operator import app as operator_app
from aimctl.errors import DefinitionError, OperatorError
from aimctl.secrets import install_log_masking, mask

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="aimctl: re-provision SAN-booted personas onto standby bodies when hardware dies.")
plan_app = typer.Typer(no_args_is_help=True, help="Dry runs: what a failover would do, touching nothing.")
app.add_typer(plan_app, name="plan")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DefsOpt = Annotated[Path, typer.Option("--definitions", "-d", help="Definitions directory.")]
StateOpt = Annotated[Path | None, typer.Option("--state", help="Controller state dir (current assignment).",
                                                  envvar="AIMCTL_STATE")]


def _default_defs() -> Path:
    return Path(os.environ.get("AIMCTL_DEFINITIONS", "personas"))


def current_state(defs: Any, state: Path | None) -> tuple[dict[str, str], set[str]]:
    """The assignment and the quarantined servers: the journal's when a state dir is given, else homes."""
    if state is None:
        return defs.homes(), set()
    db = state / "journal.db"
    if not db.exists():
        raise OperatorError(f"{state}: no controller state here (no journal.db)")
    from aimctl.journal import Journal

    j = Journal(db)
    try:
        assignment = {p: s for p, s in j.assignment().items() if s} or defs.homes()
        return dict(assignment), set(j.quarantined())
    finally:
        close = getattr(j, "close", None)
        if close:
            close()


@app.command()
def validate(directory: Annotated[Path | None, typer.Argument(help="Definitions directory.")] = None,
             state: StateOpt = None) -> None:
    """Check every definition; print the problems, or a summary per pool (actives, standbys, N+k)."""
    from aimctl.failover.planner import capacity, standbys
    from aimctl.loader import load

    defs = load(directory or _default_defs())
    assignment, quarantined = current_state(defs, state)
    table = Table(title=f"definitions in {defs.root}")
    for col in ("pool", "servers", "actives", "standbys", "personas", "N+k", "per persona", "warnings"):
        table.add_column(col)
    for name, pool in sorted(defs.pools.items()):
        k, per = capacity(defs, name, assignment, quarantined)
        sb = standbys(defs, name, assignment, quarantined)
        actives = sorted(s for p, s in assignment.items() if defs.personas.get(p) and defs.personas[p].pool == name)
        warn = [w.split(": ", 1)[1] for w in defs.warnings if f"pool {name} " in w]
        table.add_row(name, str(len(pool.members)), ", ".join(actives) or "-", ", ".join(sb) or "-",
                      str(len(per)), f"N+{k}", ", ".join(f"{p}:{n}" for p, n in sorted(per.items())),
                      "; ".join(warn) or "-")
    out.print(table)
    for w in defs.warnings:
        err.print(f"[yellow]warning:[/] {w}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of definition files (for editors)."""
    from pydantic import TypeAdapter

    from aimctl.model import InventoryFile, PoolFile

    doc = TypeAdapter(PoolFile | InventoryFile).json_schema()
    doc["title"] = "aimctl definition file (a pool file or an inventory file)"
    out.print_json(json.dumps(doc))


def switch_renderer(defs: Any) -> Any:
    """Exact CLI lines per switch, from the same templates the driver sends."""
    try:
        from aimctl.drivers.registry import render_switch_lines
    except ImportError:  # pragma: no cover - switch driver not installed
        return None

    def render(sw: str, intents: Any) -> list[str]:
        return render_switch_lines(defs.switches[sw].os, intents)

    return render


@plan_app.command("failover")
def plan_failover_cmd(persona: str,
                      to: Annotated[str | None, typer.Option("--to", help="Target server.")] = None,
                      definitions: Annotated[Path | None, typer.Option("--definitions", "-d")] = None,
                      state: StateOpt = None,
                      as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """The ordered steps a failover of PERSONA would take: standby and why, fence, storage, boot, switch lines."""
    from aimctl.failover.dryrun import plan_failover
    from aimctl.loader import load_for_persona

    # Only the persona's pool is needed; a tree that validated before is served from the cache.
    defs = load_for_persona(definitions or _default_defs(), persona)
    assignment, quarantined = current_state(defs, state)
    plan = plan_failover(defs, persona, assignment, quarantined, to=to, render=switch_renderer(defs))
    if as_json:
        out.print_json(json.dumps(plan))
        return
    out.print(f"[bold]failover {plan['persona']}[/]: {plan['from']} -> {plan['to'] or 'NOWHERE'}")
    for w in plan["why"]:
        out.print(f"  why: {w}")
    for i, s in enumerate(plan["steps"], 1):
        out.print(f"[bold]{i:2}. {s['name']}[/]")
        for a in s["actions"]:
            out.print(f"      {a}", highlight=False, markup=False)
    if plan["to"] is None:
        raise OperatorError(f"no standby can take {persona}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def agent(ctx: typer.Context) -> None:
    """The persona agent (installed alone as aimctl-agent): aimctl agent run --help."""
    # The agent parses its own arguments (standard library only, so persona hosts need none of ours).
    raise typer.Exit(agent_cli.main(ctx.args, prog="aimctl agent"))


def _mount_plugins() -> None:
    """Sub-apps: the operator and lifecycle commands (imported normally: a broken import is a crash,
    never a silently missing command), and plugins found by entry point (the lab, a separate package)."""
    for sub in (operator_app, lifecycle_app):
        for cmd in sub.registered_commands:
            app.registered_commands.append(cmd)
        for grp in sub.registered_groups:
            app.registered_groups.append(grp)
    for ep in entry_points(group="aimctl.plugins"):
        try:
            app.add_typer(ep.load(), name=ep.name)
        except ImportError as exc:
            # An optional package that is installed but cannot import: say so, keep the rest usable.
            err.print(f"warning: plugin {ep.name!r} not loaded: {exc}", highlight=False, markup=False)


def main() -> None:
    logging.basicConfig(level=os.environ.get("AIMCTL_LOG", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_masking()
    _mount_plugins()
    try:
        app()
    except DefinitionError as exc:
        for p in exc.problems:
            err.print(mask(p), highlight=False, markup=False)
        err.print(f"{len(exc.problems)} problem(s) found; nothing was changed.", highlight=False)
        sys.exit(2)
    except OperatorError as exc:
        err.print(f"error: {mask(str(exc))}", highlight=False, markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
