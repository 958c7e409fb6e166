"""The switch step of a failover in the reference setup: batched sessions vs one session per port.

Two PowerConnect switches (lab: fake-switches dell_generic). Servers r720-1..3 have channels 1..4
cabled: channels 1 and 3 on sw1, channels 2 and 4 on sw2, at ports 1/g(2i-1) and 1/g(2i) for
server i. exchange1 fails over from r720-1 to the standby r720-3: the standby's four channels get
the persona's networks as trunks (SCN 4004 on channels 1/2, MAPI 100 on 3 + 4 as secondary,
Replication 200 on 4 + 3 as secondary) and r720-1's four channels go to quarantine VLAN 999, all
read back by the driver.

batched: one SSH session per switch, both switches in parallel (what the workflow does).
per-port: one SSH session per port change, one after another (the baseline), same driver code.
Goal: batched_s / per_port_s <= 0.25.

The lab switches run in a child process, as separate devices would: in this process their SSH
server work would compete with the driver threads for the interpreter and blur the comparison.

Run from the repo root: .venv/bin/python bench/switch.py
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from aimctl.drivers.protocols import PortIntent, PortMode
from aimctl.drivers.switch import NetmikoSwitch
from bench.common import write_result
from lab.network.switches import SwitchLab, SwitchSpec

RUNS = 5
GOAL = 0.25
USER, PASSWORD, ENABLE = "netops", "bench-pass-61c0", "bench-enable-2d9e"
SCN, MAPI, REPL, QUARANTINE = 4004, 100, 200, 999
NETWORKS = {1: (SCN,), 2: (SCN,), 3: (MAPI, REPL), 4: (MAPI, REPL)}  # channel -> VLANs (primary+secondary)


def cable(server: int, channel: int) -> tuple[str, str]:
    """(switch, port) of a server's channel: odd channels on sw1, even on sw2."""
    return ("sw1" if channel in (1, 3) else "sw2"), f"1/g{2 * server - 1 + (0 if channel in (1, 2) else 1)}"


def failover_intents(old: int, new: int) -> dict[str, list[PortIntent]]:
    out: dict[str, list[PortIntent]] = {"sw1": [], "sw2": []}
    for ch, vlans in NETWORKS.items():
        sw, port = cable(new, ch)
        out[sw].append(PortIntent(port, PortMode.TRUNK, vlans, description=f"aimctl exchange1 ch{ch}"))
    for ch in NETWORKS:
        sw, port = cable(old, ch)
        out[sw].append(PortIntent(port, PortMode.ACCESS, (QUARANTINE,), description=f"aimctl quarantine ch{ch}",
                                  quarantine=True))
    return out


def _serve_lab(conn: Connection, specs: list[SwitchSpec]) -> None:
    lab = SwitchLab(specs, USER, PASSWORD, ENABLE)
    conn.send(lab.start())
    while True:
        name, args = conn.recv()
        if name == "stop":
            lab.stop()
            conn.send(None)
            return
        conn.send(getattr(lab, name)(*args))


class RemoteLab:
    """A SwitchLab in a child process; methods are called over a pipe."""

    def __init__(self, specs: list[SwitchSpec]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_lab, args=(child, specs), daemon=True)
        self._proc.start()
        self.ports: dict[str, int] = self._conn.recv()

    def call(self, name: str, *args: Any) -> Any:
        self._conn.send((name, args))
        return self._conn.recv()

    def reset_port(self, *args: Any) -> None:
        self.call("reset_port", *args)

    def sessions(self, switch: str) -> int:
        return int(self.call("sessions", switch))

    def stop(self) -> None:
        self.call("stop")
        self._proc.join(timeout=10)


def reset(lab: RemoteLab) -> None:
    """Before each run: r720-1 carries exchange1, r720-3 is a parked standby (quarantine VLAN)."""
    for ch, vlans in NETWORKS.items():
        sw, port = cable(1, ch)
        lab.reset_port(sw, port, PortIntent(port, PortMode.TRUNK, vlans))
        sw, port = cable(3, ch)
        lab.reset_port(sw, port, PortIntent(port, PortMode.ACCESS, (QUARANTINE,)))


def main() -> None:
    ports = [f"1/g{i}" for i in range(1, 9)]
    lab = RemoteLab([SwitchSpec("sw1", "dell_powerconnect", ports), SwitchSpec("sw2", "dell_powerconnect", ports)])
    ssh = lab.ports
    try:
        switches = {n: NetmikoSwitch(n, "dell_powerconnect", "127.0.0.1", p, USER, PASSWORD, ENABLE)
                    for n, p in ssh.items()}
        plan = failover_intents(old=1, new=3)
        lines = {n: len(switches[n].render(plan[n])) for n in switches}
        batched, per_port, s_batched, s_per_port = [], [], [], []
        with ThreadPoolExecutor(max_workers=len(switches)) as pool:
            for _ in range(RUNS):
                reset(lab)
                before = sum(lab.sessions(n) for n in switches)
                t0 = time.perf_counter()
                list(pool.map(lambda n: switches[n].apply(plan[n]), switches))
                batched.append(time.perf_counter() - t0)
                s_batched.append(sum(lab.sessions(n) for n in switches) - before)
                check(lab, plan)

                reset(lab)
                before = sum(lab.sessions(n) for n in switches)
                t0 = time.perf_counter()
                for n, sw in switches.items():
                    sw.apply_per_port(plan[n])
                per_port.append(time.perf_counter() - t0)
                s_per_port.append(sum(lab.sessions(n) for n in switches) - before)
                check(lab, plan)
    finally:
        lab.stop()
    b, p = statistics.median(batched), statistics.median(per_port)
    result = {
        "batched_s": round(b, 3), "per_port_s": round(p, 3), "batched_over_per_port": round(b / p, 3),
        "goal_batched_over_per_port": GOAL, "goal_met": b / p <= GOAL,
        "sessions_batched": s_batched[0], "sessions_per_port": s_per_port[0],
        "runs": RUNS, "batched_runs_s": [round(x, 3) for x in batched],
        "per_port_runs_s": [round(x, 3) for x in per_port],
        "port_changes": sum(len(v) for v in plan.values()), "cli_lines_per_switch_batched": lines,
        "setup": "2 dell_powerconnect lab switches (fake-switches dell_generic over SSH, in a child "
                 "process), r720-1 -> r720-3, 4 trunks + 4 quarantine ports, read-back included",
    }
    path = write_result("switch", result)
    print(f"batched {b:.3f}s ({s_batched[0]} sessions), per-port {p:.3f}s ({s_per_port[0]} sessions), "
          f"ratio {b / p:.3f} (goal <= {GOAL}) -> {path}")


def check(lab: RemoteLab, plan: dict[str, list[PortIntent]]) -> None:
    """The bench only counts runs that did what was asked (read from the lab, not over SSH)."""
    for sw, intents in plan.items():
        for i in intents:
            st = lab.call("port_state", sw, i.port)
            if st.mode is not i.mode or set(st.vlans) != set(i.vlans):
                raise SystemExit(f"{sw} {i.port}: {st} is not {i}")


if __name__ == "__main__":
    main()
