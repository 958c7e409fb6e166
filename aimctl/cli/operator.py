"""Operator commands that talk to the controller (through its local API) and ``controller run``."""

from __future__ import annotations

import faulthandler
import gc
import json
import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from aimctl.errors import OperatorError

app = typer.Typer()
controller_app = typer.Typer(no_args_is_help=True, help="The controller daemon.")
app.add_typer(controller_app, name="controller")
cluster_app = typer.Typer(no_args_is_help=True, help="Controllers on etcd: leader, members, fencing token.")
app.add_typer(cluster_app, name="cluster")
out = Console(soft_wrap=True)

StateOpt = Annotated[Path, typer.Option("--state", envvar="AIMCTL_STATE", help="Controller state dir (CTRLDIR).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
TERMINAL = ("done", "failed", "aborted")


def client(state: Path) -> Any:
    from aimctl.api.client import ApiClient

    return ApiClient(state)


def _t(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3] if ts else "-"


def cluster_config(config: Path | None, cluster: str | None, member: str | None,
                   key: Path | None) -> Any:
    """The cluster settings from the config file, with the command line's flags winning; None: embedded."""
    from aimctl.cluster.config import ClusterConfig, load_controller_config

    cfg = load_controller_config(config).cluster if config else None
    if cluster is None and cfg is None:
        if member or key:
            raise OperatorError("--member and --cluster-key need --cluster etcd://HOST:PORT[,...] (or a config file)")
        return None
    flags = {k: v for k, v in (("etcd", cluster), ("member", member), ("key_file", key)) if v is not None}
    try:
        if cfg is None:
            return ClusterConfig.model_validate(flags)
        # Flags win over the file; each is checked as the file's value would be.
        checked = ClusterConfig.model_validate({"etcd": cfg.etcd, **flags})
        return cfg.model_copy(update={k: getattr(checked, k) for k in flags})
    except ValueError as exc:
        raise OperatorError(f"cluster settings: {exc}") from None


@controller_app.command("run")
def run(definitions: Annotated[Path, typer.Option("--definitions", "-d")],
        state: StateOpt,
        overlay: Annotated[Path | None, typer.Option("--overlay", help="Endpoints overlay (lab).")] = None,
        config: Annotated[Path | None, typer.Option("--config", help="Controller config file (YAML; cluster:).")] = None,
        cluster: Annotated[str | None, typer.Option(
            "--cluster", help="etcd://HOST:PORT[,HOST:PORT...]: run as a member of a cluster.")] = None,
        member: Annotated[str | None, typer.Option("--member", help="This member's name (default: host name).")] = None,
        cluster_key: Annotated[Path | None, typer.Option(
            "--cluster-key", help="AES key file sealing secrets in etcd (same on every member).")] = None) -> None:
    """Run the controller: detector, workflow and the local API, until SIGTERM."""
    from aimctl.api.console import mount_console
    from aimctl.api.routes import build_api
    from aimctl.daemon import Controller, check_state_dir
    from aimctl.errors import ListenError
    from aimctl.loader import load
    from aimctl.overlay import Overlay, api_hostport, apply, load_overlay

    check_state_dir(state)  # the environment first: a wrong --state is said before anything is loaded
    cluster_cfg = cluster_config(config, cluster, member, cluster_key)
    defs = load(definitions)
    ov = load_overlay(overlay) if overlay else Overlay()
    if overlay:
        defs = apply(defs, ov, str(overlay))
    logging.getLogger().setLevel(os.environ.get("AIMCTL_LOG", "INFO"))
    handler = logging.FileHandler(state / "controller.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    from aimctl.secrets import MaskingFilter

    handler.addFilter(MaskingFilter())
    logging.getLogger().addHandler(handler)
    # The composition: the daemon wires the parts; the API (and console) is built on it here, where
    # it is started, so the daemon never imports the API.
    c = Controller(defs, ov.controller, state, cluster=cluster_cfg)  # binds the heartbeat and SNMP ports
    api = build_api(c)
    mount_console(api, c)
    # The definitions and drivers live as long as the process: keep them out of the collector's full
    # passes, which otherwise walk every persona's objects (hundreds of ms at 10,000 personas).
    gc.freeze()
    try:
        api.start()  # the last port to bind, before anything starts polling or acting
    except OSError as exc:
        c.stop()
        host, port = api_hostport(ov.controller.api)
        raise ListenError.from_oserror("the API", "TCP", host, port, exc) from None
    except BaseException:
        c.stop()
        raise
    c.start()
    c.resume()
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        c._stop.set()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # `kill -USR1 PID`: every thread's stack on stderr, to see where a step waits without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    role = f"; cluster member {c.cluster.member} on {cluster_cfg.etcd}" if c.cluster else ""
    out.print(f"controller running; API and console {api.url}; state {state}{role}")
    try:
        c.loop()
    finally:
        api.stop()
        c.stop()


@app.command()
def status(state: StateOpt, as_json: JsonOpt = False) -> None:
    """Per persona: its server, last heartbeat age, health, detector state."""
    st = client(state).get("/v1/status")
    if as_json:
        out.print_json(json.dumps(st))
        return
    t = Table(title="personas")
    for col in ("persona", "server", "heartbeat age", "health", "detector", "bmc", "operation"):
        t.add_column(col)
    for p, v in st["personas"].items():
        age = "-" if v["heartbeat_age_s"] is None else f"{v['heartbeat_age_s']:.1f}s"
        op = v["operation"] or "-"
        if v.get("operation_state"):
            op = f"{op} ({v['operation_state']})"
        t.add_row(p, v["server"] or "-", age, v["health"] or "-", v["detector"], v["bmc"] or "-", op)
    out.print(t)
    for v in st["personas"].values():
        out.print(f"  {v.get('why', '')}", highlight=False, markup=False)
        if v.get("waiting"):
            w = v["waiting"]
            out.print(f"  exits: {' | '.join(w['exits'])}", highlight=False, markup=False)
    for pool, why in {**st.get("paused_pools", {}), **st.get("operator_paused_pools", {})}.items():
        out.print(f"pool {pool} paused: {why}", highlight=False, markup=False)
    t = Table(title="spares (N+k from live state)")
    for col in ("pool", "k", "per persona", "usable standbys", "not counted"):
        t.add_column(col)
    for pool, sp in sorted(st.get("pools", {}).items()):
        t.add_row(pool, str(sp["k"]), ", ".join(f"{p}:{n}" for p, n in sorted(sp["per_persona"].items())) or "-",
                  ", ".join(sp["counted"]) or "-",
                  "; ".join(f"{s}: {why}" for s, why in sorted(sp["excluded"].items())) or "-")
    out.print(t)
    for s, q in st["quarantined"].items():
        out.print(f"quarantined: {s} ({q['reason']}, by {q['by']})")
    for _, v in sorted(st.get("suspects", {}).items()):
        out.print(f"suspect: {v['sentence']}", highlight=False, markup=False)
    if st.get("drift_open"):
        out.print(f"drift: {st['drift_open']} open finding(s) (aimctl drift)")


@app.command()
def drift(state: StateOpt, as_json: JsonOpt = False,
          now: Annotated[bool, typer.Option("--now", help="Run a drift pass first.")] = False) -> None:
    """What differs from the definitions: switch ports, storage ACL/CHAP, boot config, power, hardware."""
    c = client(state)
    if now:
        c.post("/v1/drift/check")
    d = c.get("/v1/drift")
    if as_json:
        out.print_json(json.dumps(d))
        return
    t = Table(title=f"drift findings ({d['passes']} passes, every {d['interval_s']:.0f}s)")
    for col in ("kind", "where", "what", "expected", "observed", "since", "repair"):
        t.add_column(col)
    for f in d["findings"]:
        where = ", ".join(x for x in (f["device"], f["persona"] or f["server"]) if x)
        t.add_row(f["kind"], where, f["what"], f["expected"], f["observed"], _t(f["since"]), f["repair_op"] or "-")
    out.print(t)
    last = d.get("last_pass")
    if last:
        unread = "; ".join(f"{dev}: {why}" for dev, why in last["unchecked"].items()) or "none"
        out.print(f"last pass: {last['checks']} checks in {last['duration_s']}s; devices not read: {unread}",
                  highlight=False, markup=False)


@app.command()
def failovers(state: StateOpt, as_json: JsonOpt = False) -> None:
    """Recent failovers and planned operations."""
    ops = client(state).get("/v1/failovers")
    if as_json:
        out.print_json(json.dumps(ops))
        return
    t = Table(title="operations")
    for col in ("id", "kind", "persona", "from", "to", "state", "result"):
        t.add_column(col)
    for o in ops:
        t.add_row(o["id"], o["kind"], o["persona"], o["from_server"] or "-", o["facts"].get("to") or "-",
                  o["state"], o["result"])
    out.print(t)


def print_timeline(op: dict[str, Any]) -> None:
    t = Table(title=f"{op['id']}: {op['kind']} of {op['persona']} {op['from_server']} -> {op['facts'].get('to')}"
                    f" [{op['state']}]")
    for col in ("step", "start", "end", "duration", "status", "why"):
        t.add_column(col)
    for s in op["timeline"]:
        dur = "-" if s["duration_s"] is None else f"{s['duration_s']:.3f}s"
        why = s.get("sentence") or s["detail"].get("reason") or s["detail"].get("summary") or ""
        t.add_row(s["step"], _t(s["started"]), _t(s["ended"]), dur, s["status"], why)
    out.print(t)
    out.print(op.get("sentence") or f"result: {op['state']}: {op['result']}", highlight=False, markup=False)


@app.command()
def timeline(op_id: str, state: StateOpt, as_json: JsonOpt = False) -> None:
    """Per-step start, end, duration and result of one operation."""
    op = client(state).get(f"/v1/failovers/{op_id}")
    if as_json:
        out.print_json(json.dumps({"id": op["id"], "persona": op["persona"], "from": op["from_server"],
                                   "to": op["facts"].get("to"), "state": op["state"], "result": op["result"],
                                   "steps": [{"name": s["step"], "started": s["started"], "ended": s["ended"],
                                              "duration_s": s["duration_s"], "result": s["status"]}
                                             for s in op["timeline"]]}))
        return
    print_timeline(op)


def watch(state: Path, op_id: str, timeout_s: float = 3600) -> dict[str, Any]:
    """Follow a running operation with a live progress line per step until it stops."""
    c = client(state)
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=out) as prog:
        task = prog.add_task(f"{op_id}: starting", total=None)
        while True:
            op = c.get(f"/v1/failovers/{op_id}")
            for i, s in enumerate(op["timeline"]):
                if s["ended"] is not None and i not in seen:
                    seen.add(i)
                    prog.console.print(f"  {s['step']:<10} {s['status']:<8} "
                                       f"{(s['duration_s'] or 0):7.3f}s")
            running = next((s["step"] for s in op["timeline"] if s["ended"] is None), None)
            prog.update(task, description=f"{op_id}: {op['state']}" + (f" ({running})" if running else ""))
            if op["state"] not in ("running",):
                return dict(op)
            if time.monotonic() > deadline:
                raise OperatorError(f"{op_id} still running after {timeout_s:.0f}s")
            time.sleep(0.2)


WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the operation until it stops.")]


def _started(state: Path, res: dict[str, Any], wait: bool) -> None:
    out.print(f"started {res['id']}")
    if wait:
        print_timeline(watch(state, res["id"]))


@app.command()
def approve(op_id: str, state: StateOpt, wait: WaitOpt = False) -> None:
    """Approve a failover waiting for approval (manual policy), or a change record (CHG...) gating a move."""
    op = client(state).post(f"/v1/failovers/{op_id}/approve")
    out.print(f"approved {op['id']}")
    if wait:
        print_timeline(watch(state, op_id))


@app.command()
def failover(persona: str, state: StateOpt, to: Annotated[str | None, typer.Option("--to")] = None,
             wait: WaitOpt = True) -> None:
    """Fail PERSONA over now, on an operator's word (also while its pool's storm brake is paused)."""
    _started(state, client(state).post("/v1/failover", {"persona": persona, "to": to}), wait)


ChangeOpt = Annotated[str | None, typer.Option("--change", help="Run only once this change record is approved.")]


@app.command()
def move(persona: str, state: StateOpt, to: Annotated[str, typer.Option("--to")], wait: WaitOpt = True,
         change: ChangeOpt = None) -> None:
    """Planned move of PERSONA to a server (fenced, journaled and recorded like a failover)."""
    _started(state, client(state).post("/v1/move", {"persona": persona, "to": to, "change": change}), wait)


@app.command()
def failback(persona: str, state: StateOpt, wait: WaitOpt = True, change: ChangeOpt = None) -> None:
    """Return PERSONA to its home server (its agent is stopped first, then it is fenced and moved)."""
    _started(state, client(state).post("/v1/failback", {"persona": persona, "change": change}), wait)


NoteOpt = Annotated[str, typer.Option("--note", help="Why (kept in the audit log and the change record).")]


@app.command()
def retry(op_id: str, state: StateOpt, note: NoteOpt = "", wait: WaitOpt = True) -> None:
    """Run a stopped (needs-operator) operation again from the step that stopped it, once you have
    fixed what its reason names (a switch, a BMC, the storage, a standby you cleared)."""
    client(state).post(f"/v1/failovers/{op_id}/retry", {"note": note})
    out.print(f"retrying {op_id}")
    if wait:
        print_timeline(watch(state, op_id))


@app.command("mark-fenced")
def mark_fenced(op_id: str, server: str, state: StateOpt, note: NoteOpt = "", wait: WaitOpt = True) -> None:
    """Record that SERVER is out (pulled from the rack, power cut at the PDU) so the fence that waits
    on it can proceed. Your word replaces the power-off and quarantine read-backs; the storage fence
    is still proven. Say it only after you have seen the body is out: it is audited under your name."""
    client(state).post(f"/v1/failovers/{op_id}/mark-fenced", {"server": server, "note": note})
    out.print(f"{server} recorded as out; {op_id} continues")
    if wait:
        print_timeline(watch(state, op_id))


@app.command()
def abandon(op_id: str, state: StateOpt,
            persona_on: Annotated[str, typer.Option(
                "--persona-on", help="Where the persona is now: its current server (default), 'none' (unassigned), "
                                     "or the operation's standby once the old body's fence was confirmed.")] = "keep",
            note: NoteOpt = "") -> None:
    """End a stopped or waiting operation without touching any device, and release its leases.

    By default the persona stays on its current server and is watched again: if that body is dead, a
    new failover starts. With --persona-on none nobody watches it until you fail it over yourself
    (aimctl failover PERSONA --to SERVER). A standby the operation had begun to configure is
    quarantined (check it, then aimctl clear SERVER); so is an old body it had fenced."""
    op = client(state).post(f"/v1/failovers/{op_id}/abandon", {"persona_on": persona_on, "note": note})
    out.print(f"{op['id']}: {op['state']}: {op['result']}")


@app.command()
def clear(server: str, state: StateOpt) -> None:
    """Clear a quarantined server so it can be a standby again (admin)."""
    client(state).post(f"/v1/servers/{server}/clear")
    out.print(f"cleared {server}")


@cluster_app.command("status")
def cluster_status(state: StateOpt, as_json: JsonOpt = False) -> None:
    """Members, leader, fencing token, lease time left, each member's last renewal (any member answers)."""
    st = client(state).get("/v1/cluster")
    if as_json:
        out.print_json(json.dumps(st))
        return
    if st.get("role") == "embedded":
        out.print("embedded controller (no cluster): it always leads; its journal is CTRLDIR/journal.db")
        return
    lead = st["leader"]
    left = "-" if st["lease_left_s"] is None else f"{st['lease_left_s']:.1f}s"
    out.print(f"leader: {lead['member'] or 'NONE'} (token {lead['token']}, since {_t(lead['since'])}), "
              f"api {lead['api'] or '-'}")
    out.print(f"this member: {st['member']} [{st['role']}{', acting' if st['acting'] else ''}]"
              f" lease left {left}; etcd {'reachable' if st['etcd_reachable'] else 'UNREACHABLE'}")
    if st["why_not_acting"]:
        out.print(f"not acting: {st['why_not_acting']}")
    t = Table(title="members")
    for col in ("member", "role", "api", "pid", "last renew"):
        t.add_column(col)
    for m in sorted(st["members"], key=lambda m: m["member"]):
        t.add_row(m["member"], m.get("role", "?"), m.get("api") or "-", str(m.get("pid", "-")), _t(m.get("last_renew")))
    out.print(t)
    t = Table(title="etcd endpoints")
    for col in ("endpoint", "ok", "version / error"):
        t.add_column(col)
    for e in st["etcd"]:
        t.add_row(e["endpoint"], "yes" if e["ok"] else "NO", e.get("version") or e.get("error", ""))
    out.print(t)
    out.print(f"elections {st['elections']}, demotions {st['demotions']}, leader changes seen "
              f"{st['leader_changes_seen']}, refused writes {st['refused_writes']}")


@cluster_app.command("keygen")
def cluster_keygen(path: Annotated[Path, typer.Argument(help="Where to write the key (0600; never overwritten).")]) -> None:
    """Make the AES-256 key that seals secrets (CHAP) in etcd; copy it to every member."""
    from aimctl.journal.secretbox import make_key_file

    try:
        make_key_file(path)
    except FileExistsError:
        raise OperatorError(f"{path} exists; a key is never overwritten (secrets sealed with it would be lost)") from None
    out.print(f"wrote {path} (0600)")
@app.command()
def pause(pool: str, state: StateOpt, reason: Annotated[str, typer.Option("--reason")] = "") -> None:
    """Hold automatic failover in POOL (deaths are queued; operator commands still act)."""
    p = client(state).post(f"/v1/pools/{pool}/pause", {"reason": reason})
    out.print(f"paused {pool} (by {p['by']})")


@app.command()
def resume(pool: str, state: StateOpt) -> None:
    """Resume automatic failover in POOL (queued deaths are acted on)."""
    client(state).post(f"/v1/pools/{pool}/resume")
    out.print(f"resumed {pool}")
