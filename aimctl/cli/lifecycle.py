"""The persona lifecycle's commands: archives and restore, gold-image personas, spare rehearsals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from aimctl.cli.operator import JsonOpt, StateOpt, WaitOpt, _started, client, out, print_timeline, watch
from aimctl.errors import OperatorError

app = typer.Typer()
persona_app = typer.Typer(no_args_is_help=True, help="Personas: make one from a gold image, start it.")
app.add_typer(persona_app, name="persona")


@app.command()
def archives(persona: str, state: StateOpt, as_json: JsonOpt = False) -> None:
    """PERSONA's archives: snapshot sets of its boot and data LUNs, oldest first."""
    sets = client(state).get(f"/v1/archives/{persona}")
    if as_json:
        out.print_json(json.dumps(sets))
        return
    t = Table(title=f"archives of {persona}")
    for col in ("id", "taken (UTC)", "LUNs", "MB", "complete"):
        t.add_column(col)
    for s in sets:
        t.add_row(s["id"], s["taken"], "\n".join(s["luns"]), f"{s['bytes'] / 2**20:.0f}", "yes" if s["complete"] else "no")
    out.print(t)
    if not sets:
        out.print(f"{persona} has no archive yet (aimctl archive {persona})")


@app.command()
def archive(persona: str, state: StateOpt, wait: WaitOpt = True) -> None:
    """Archive PERSONA now (its LUNs frozen together for the copy)."""
    _started(state, client(state).post("/v1/archives", {"persona": persona}), wait)


@app.command()
def restore(persona: str, state: StateOpt,
            at: Annotated[str, typer.Option("--at", help="An archive id, or a time: the newest archive at or before it.")],
            wait: WaitOpt = True,
            change: Annotated[str | None, typer.Option("--change", help="Run only once this change is approved.")] = None,
            ) -> None:
    """Stop and fence PERSONA, restore its LUNs to an archive, boot it and run its recovery hooks."""
    _started(state, client(state).post("/v1/restore", {"persona": persona, "at": at, "change": change}), wait)


@app.command()
def rehearse(persona: str, state: StateOpt,
             on: Annotated[str | None, typer.Option("--on", help="The standby to rehearse on.")] = None,
             wait: WaitOpt = True) -> None:
    """Boot a copy of PERSONA's latest archive on a standby, isolated, check it, and tear it down."""
    _started(state, client(state).post("/v1/rehearse", {"persona": persona, "on": on}), wait)


@app.command()
def rehearsals(state: StateOpt, as_json: JsonOpt = False) -> None:
    """The last rehearsal of each persona, its last good one, and whether the proof is stale."""
    got = client(state).get("/v1/rehearsals")
    if as_json:
        out.print_json(json.dumps(got))
        return
    t = Table(title="rehearsals")
    for col in ("persona", "last", "on", "result", "last good", "stale", "marks"):
        t.add_column(col)
    for p, v in got.items():
        last = v["last"] or {}
        t.add_row(p, f"{last.get('id', '-')} {last.get('state', '')}".strip(), last.get("on") or "-",
                  last.get("result") or "-", v["last_good"] or "never", v["stale"] or "no",
                  "; ".join(f"{s}: {r}" for s, r in v["marks"].items()) or "-")
    out.print(t)


@persona_app.command("new")
def persona_new(name: str, state: StateOpt,
                pool: Annotated[str, typer.Option("--pool")],
                gold: Annotated[str, typer.Option("--from-gold", help="The gold image to clone the boot LUN from.")],
                initiator: Annotated[str | None, typer.Option("--initiator")] = None,
                target: Annotated[str | None, typer.Option("--target", help="The new boot target's IQN.")] = None,
                home: Annotated[str | None, typer.Option("--home")] = None,
                write: Annotated[Path | None, typer.Option("--write", help="Also write the stanza to this file.")] = None,
                wait: WaitOpt = True) -> None:
    """Clone a gold image into NAME's own boot target (its own initiator, ACL and CHAP account) and print
    the persona stanza to review and commit."""
    if write is not None and write.exists():
        raise OperatorError(f"--write {write}: the file exists; nothing was done")
    res: dict[str, Any] = client(state).post("/v1/personas", {"name": name, "pool": pool, "gold": gold,
                                                             "initiator": initiator, "target": target, "home": home})
    out.print(res["stanza"], highlight=False, markup=False)
    if write is not None:
        write.write_text(res["stanza"])
        out.print(f"stanza written to {write}")
    out.print(f"started {res['id']}")
    if wait:
        op = watch(state, res["id"])
        print_timeline(op)
        if op["state"] != "done":
            raise OperatorError(f"{res['id']} {op['state']}: {op['result']}")


@persona_app.command("start")
def persona_start(name: str, state: StateOpt,
                  on: Annotated[str | None, typer.Option("--on", help="Default: its home server.")] = None,
                  wait: WaitOpt = True) -> None:
    """Start NAME, which runs nowhere yet, on a standby (journaled and recorded like a planned move)."""
    _started(state, client(state).post(f"/v1/personas/{name}/start", {"on": on}), wait)
