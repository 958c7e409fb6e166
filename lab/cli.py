"""``aimctl lab ...``: start, inspect, break and stop the emulated data center."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aimctl.errors import OperatorError
from lab import control, faults

app = typer.Typer(no_args_is_help=True, help="The lab: real protocol servers on 127.0.0.1, built from the definitions.")
out = Console(soft_wrap=True)

StateOpt = Annotated[Path, typer.Option("--state", help="Lab state dir (LABDIR).")]


def start(state: Path, definitions: Path, power_delay: float = 1.0, boot: float = 2.0, heartbeat: float = 1.0,
          tcp_timeout: float = 120.0, resync: float = 3.0, timeout_s: float = 90.0) -> dict[str, Any]:
    """Start a lab process for ``definitions`` in ``state``; return once every home persona runs."""
    state = state.resolve()
    if (state / "ready").exists():
        raise OperatorError(f"{state}: a lab is already running here (aimctl lab down --state {state})")
    state.mkdir(parents=True, exist_ok=True)
    for stale in ("failed", "control.json"):
        (state / stale).unlink(missing_ok=True)
    log = open(state / "lab.out", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.daemon", "--state", str(state), "--definitions", str(Path(definitions).resolve()),
         "--power-delay", str(power_delay), "--boot", str(boot), "--heartbeat", str(heartbeat),
         "--tcp-timeout", str(tcp_timeout), "--resync", str(resync)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    (state / "pid").write_text(str(proc.pid))
    try:
        return control.wait_ready(state, lambda: proc.poll() is None, timeout_s)
    except BaseException:  # whatever went wrong (even ^C), leave no lab process behind
        stop(state)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child still answers kill(0): look at its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def stop(state: Path, remove: bool = True, timeout_s: float = 20.0) -> None:
    state = state.resolve()
    pid_file = state / "pid"
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    try:
        control.call(state, "shutdown", timeout_s=5)
    except OperatorError:
        pass
    deadline = time.monotonic() + timeout_s
    while pid and _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid and _pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # tgtd is the lab's child: make sure none survives (it holds the iSCSI port).
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
                env = (p / "environ").read_bytes()
            except OSError:
                continue
            # tgtd, etcd members and cluster controllers are the lab's: none may survive it (and this
            # process, `lab down --state` itself, is none of them).
            mine = str(state).encode() in env or any(str(state).encode() in c for c in cmd)
            controller = b"aimctl.cli" in cmd and b"controller" in cmd and b"run" in cmd
            if int(p.name) != os.getpid() and cmd and mine and (
                    cmd[0].endswith(b"tgtd") or cmd[0].endswith(b"etcd") or controller):
                try:
                    os.kill(int(p.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    if remove and state.exists():
        shutil.rmtree(state, ignore_errors=True)


@app.command()
def up(state: StateOpt,
       definitions: Annotated[Path, typer.Option("--definitions", "-d")] = Path("personas"),
       power_delay: Annotated[float, typer.Option(help="BMC power-change delay, seconds.")] = 1.0,
       boot: Annotated[float, typer.Option(help="Host boot time, seconds.")] = 2.0,
       heartbeat: Annotated[float, typer.Option(help="Agent heartbeat interval, seconds.")] = 1.0,
       etcd: Annotated[int, typer.Option(help="Also start this many etcd members (a controller cluster).")] = 0,
       controllers: Annotated[int, typer.Option(help="Controllers c1..cN on that etcd (with --etcd).")] = 3) -> None:
    """Start the lab; write LABDIR/endpoints.yaml (the controller's overlay)."""
    t = time.monotonic()
    ready = start(state, definitions, power_delay, boot, heartbeat)
    out.print(f"lab up in {time.monotonic() - t:.1f}s (pid {ready['pid']}); overlay: {state.resolve() / 'endpoints.yaml'}")
    if etcd:
        st = control.call(state, "cluster-up", {"etcd": etcd, "controllers": controllers}, timeout_s=120)
        out.print(f"etcd {st['etcd_url']}; controllers: "
                  + ", ".join(f"{c['name']} (pid {c['pid']}, --state {c['state']})" for c in st["controllers"]))


@app.command()
def down(state: StateOpt) -> None:
    """Stop every lab process and remove its sockets and state."""
    stop(state)
    out.print("lab down")


@app.command()
def reset(state: StateOpt) -> None:
    """Back to the definitions' homes (power, boot config, ports, CHAP, sessions)."""
    r = control.call(state, "reset")
    out.print(f"lab reset in {r['reset_s']}s")


def _fault_help() -> str:
    return "\n\n".join(f"{k.name} {k.target}: {k.help}" for k in faults.CATALOGUE)


@app.command(help="Inject (or --clear) a fault.\n\n" + _fault_help())
def fault(kind: Annotated[str, typer.Argument(help=", ".join(faults.NAMES))],
          target: Annotated[str, typer.Argument(help="server, switch, storage, controller, DAG member, or "
                                                     "SERVER:CHANNEL")],
          state: StateOpt, clear: Annotated[bool, typer.Option("--clear")] = False,
          after: Annotated[int | None, typer.Option(
              "--after", help="switch-hang: config lines each session still gets before the hang")] = None,
          delay: Annotated[float | None, typer.Option(
              "--delay", help="bmc-slow: seconds per request; controller-kill: seconds from now")] = None,
          percent: Annotated[float | None, typer.Option("--percent", help="scn-loss: share of packets lost")] = None,
          period: Annotated[float | None, typer.Option("--period", help="scn-flap: seconds per down+up")] = None,
          rate: Annotated[int | None, typer.Option("--rate", help="trap-storm: traps a second")] = None,
          seconds: Annotated[float | None, typer.Option("--seconds", help="controller-pause: how long (default: until --clear)")] = None,
          ) -> None:
    opts = {"after": after, "delay_s": delay, "percent": percent, "period_s": period, "rate": rate,
            "seconds": seconds}
    body: dict[str, Any] = {"kind": kind, "target": target, "clear": clear,
                            **{k: v for k, v in opts.items() if v is not None}}
    r = control.call(state, "fault", body)
    out.print(f"{kind} on {target}: {'active' if r['active'] else 'cleared' if clear else 'done'}")


@app.command()
def chaos(minutes: Annotated[float, typer.Option("--minutes", help="How long to run (a round in progress ends).")] = 2.0,
          seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed makes the same choices.")] = 1,
          state: Annotated[Path | None, typer.Option(
              "--state", help="A running lab to use (LABDIR); without it a lab is started for the soak.")] = None,
          definitions: Annotated[Path, typer.Option("--definitions", "-d")] = Path("personas"),
          out: Annotated[Path | None, typer.Option("--out", help="Write the figures as JSON here.")] = None,
          fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first violation.")] = False,
          plan: Annotated[str | None, typer.Option(
              "--plan", help="Replay one round with exactly these faults, as a violation reported them "
                             "('power-button r720-1; switch-hang sw2 after=6').")] = None,
          ) -> None:
    """The chaos soak: random faults on random bodies, a real controller acting, an operator answering
    through the real command line, invariants checked after every round."""
    from lab.chaos.soak import run

    if not 0 < minutes <= 24 * 60:
        raise OperatorError("--minutes must be more than 0 and at most a day")
    if plan is not None:
        from lab.chaos.rules import parse_plan

        try:
            parse_plan(plan)
        except ValueError as exc:
            raise OperatorError(f"--plan: {exc}") from None
    own = state is None
    lab_state = state or Path(tempfile.mkdtemp(prefix="aimctl-chaos-"))
    if own:
        out_print(f"starting a lab in {lab_state}")
        start(lab_state, definitions, power_delay=0.5, boot=1.0, heartbeat=0.5, resync=1.0)
    try:
        r = run(lab_state, definitions, minutes, seed, out=out, fail_fast=fail_fast, say=out_print, replay=plan)
    finally:
        if own:
            stop(lab_state)
    out_print(f"{r.rounds} rounds in {r.elapsed_s / 60:.1f} min; faults {dict(r.faults)}; "
              f"needs-operator {r.needs_operator}; violations {len(r.violations)}")
    if r.violations:
        raise typer.Exit(1)


def out_print(line: str) -> None:
    out.print(line, highlight=False, markup=False)


@app.command()
def status(state: StateOpt, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Per server power, booted persona, boot config, port VLANs; per target ACL and sessions; observer verdict."""
    st = control.call(state, "status")
    if as_json:
        out.print_json(json.dumps(st))
        return
    t = Table(title="servers")
    for c in ("server", "power", "persona", "state", "boot initiator", "channels"):
        t.add_column(c)
    for s, v in sorted(st["servers"].items()):
        chans = "; ".join(f"{c}:{x['switch']} {x['port']} {x['mode']} {','.join(map(str, x['vlans']))}"
                          for c, x in v["channels"].items())
        t.add_row(s, v["power"], v["booted"] or "-", f"{v['state']} {v['detail']}".strip(),
                  str(v["boot_config"].get("InitiatorName") or v["boot_config"].get("boot_device") or "-"), chans)
    out.print(t)
    t = Table(title="targets")
    for c in ("target", "acl", "chap", "sessions (initiator alias)"):
        t.add_column(c)
    for iqn, v in sorted(st["targets"].items()):
        t.add_row(iqn, ", ".join(v["acl"]), ", ".join(v["accounts"]),
                  ", ".join(f"{x['initiator']} {x['alias']}" for x in v["sessions"]) or "-")
    out.print(t)
    ob = st["observer"]
    verdict = "clean" if not ob["double_access"] else f"DOUBLE ACCESS x{ob['double_access']}: {ob['evidence'][:3]}"
    out.print(f"access observer: {verdict} ({ob['samples']} samples)")
    cl = st.get("cluster")
    if cl:
        out.print(f"cluster {cl['name']}: etcd " + ", ".join(f"{m['name']} {'up' if m['alive'] else 'DOWN'}" for m in cl["etcd"])
                  + "; controllers " + ", ".join(
                      f"{c['name']} {'paused' if c['paused'] else 'up' if c['pid'] else 'DOWN'}"
                      + (" (cut from etcd)" if c["etcd_cut"] else "") for c in cl["controllers"]))
