"""One full drift pass: the reference lab, and a generated pool of 200 bodies on lab switches.

reference: the whole lab (``aimctl lab up`` of personas/), read back by a reconciler in this
process: wall time of a pass (first, with SSH/HTTP connects, and a second one), SSH sessions per
switch in one pass (goal: 1 each), checks and findings.

generated: 200 Redfish bodies (160 personas, 40 standbys) cabled 4 channels each to 4 PowerConnect
lab switches (200 ports each), 160 iSCSI targets on a private tgtd, all set up as defined; the
switches and BMCs run in a child process, as separate devices would. Measured: wall time of a pass,
sessions per switch *as the switches counted them*, and the CPU time this process spent in the
pass (drivers, parsing and the verdict) per 1,000 personas; the pure part (expectations and
verdict) is measured apart. A pass must find nothing (the world is as defined) or the run fails.

Run from the repo root: .venv/bin/python bench/drift.py
"""

from __future__ import annotations

import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from aimctl.drivers.protocols import IscsiBoot, PortIntent, PortMode
from aimctl.drivers.registry import Drivers
from aimctl.journal import Journal
from aimctl.loader import Definitions, load
from aimctl.overlay import apply, load_overlay
from aimctl.reconcile.expect import expected
from aimctl.reconcile.loop import Reconciler
from aimctl.reconcile.verdict import findings
from bench.common import ROOT, write_result

BODIES, PERSONAS, SWITCHES = 200, 160, 4
USER, PASSWORD, ENABLE = "admin", "bench-drift-pw-3a9c", "bench-drift-en-77e1"
SCN, DATA, QUARANTINE = 4004, 100, 999


def port_name(i: int) -> str:
    """The i-th port (0-based) of a PowerConnect stack: 48 copper ports a unit (1/g1..1/g48, 2/g1...),
    as its ifIndex rule counts them (each unit adds 64)."""
    return f"{i // 48 + 1}/g{i % 48 + 1}"


def cabling(body: int) -> dict[int, tuple[str, str]]:
    """Bodies 0-99 on sw-a/sw-b, 100-199 on sw-c/sw-d; channels 1,3 on the first switch, 2,4 on the second."""
    half = body // 100
    first, second = ("sw-a", "sw-b") if half == 0 else ("sw-c", "sw-d")
    n = body % 100
    return {1: (first, port_name(2 * n)), 2: (second, port_name(2 * n)), 3: (first, port_name(2 * n + 1)),
            4: (second, port_name(2 * n + 1))}


def generate(root: Path) -> None:
    servers = {}
    for b in range(BODIES):
        servers[f"gen-{b:03d}"] = {
            "bmc": {"kind": "redfish", "address": "10.9.0.1", "credentials": {"username": USER,
                                                                               "password": "env:BENCH_BMC"}},
            "model": "PowerEdge R720", "cores": 16, "memory_gb": 192, "boot_nic": "NIC.Integrated.1-1",
            "rack": f"r{b // 20:02d}",
            "channels": {ch: {"switch": sw, "port": p} for ch, (sw, p) in cabling(b).items()}}
    inv = {"servers": servers,
           "switches": {sw: {"os": "dell_powerconnect", "address": "10.9.1.1",
                             "credentials": {"username": USER, "password": "env:BENCH_SW", "enable": "env:BENCH_EN"}}
                        for sw in ("sw-a", "sw-b", "sw-c", "sw-d")},
           "storage": {"array": {"kind": "tgt", "portal": "10.9.2.1"}}}
    personas = {}
    for p in range(PERSONAS):
        personas[f"gen{p:03d}"] = {
            "home": f"gen-{p:03d}", "storage": "array", "initiator": f"iqn.2026-01.bench.gen:gen{p:03d}",
            "boot": {"target": f"iqn.2026-01.bench.storage:gen{p:03d}-boot", "lun": 1},
            "addresses": {"scn": f"10.50.{p // 250}.{p % 250 + 1}"}, "heartbeat_key": "env:BENCH_KEY"}
    pool = {"pool": "gen", "members": list(servers), "quarantine_vlan": QUARANTINE,
            "networks": {"scn": {"vlan": SCN, "subnet": "10.50.0.0/16", "primary": 1, "secondary": 2},
                         "data": {"vlan": DATA, "subnet": "10.60.0.0/16", "primary": 3, "secondary": 4}},
            "personas": personas}
    root.mkdir(parents=True)
    (root / "inventory.yaml").write_text(yaml.safe_dump(inv))
    (root / "pool.yaml").write_text(yaml.safe_dump(pool))


def _world(conn: Connection, state: str, defs_dir: str) -> None:
    """Child process: switches, BMCs and tgtd for the generated pool, set up as defined."""
    from aimctl.drivers.tgt import LocalRunner, TgtStorage
    from aimctl.failover.planner import port_intents
    from lab.bmc.redfish import RedfishLab, RedfishSystemSpec
    from lab.network.switches import SwitchLab, SwitchSpec
    from lab.storage.tgt import LunSpec, TgtLab

    defs = load(Path(defs_dir), use_cache=False)
    ports: dict[str, list[str]] = {}
    for srv in defs.servers.values():
        for c in srv.channels.values():
            ports.setdefault(c.switch, []).append(c.port)
    switches = SwitchLab([SwitchSpec(n, "dell_powerconnect", sorted(p)) for n, p in ports.items()], USER, PASSWORD,
                         ENABLE)
    sw_ports = switches.start()
    homes = {p.spec.home: n for n, p in defs.personas.items()}
    for s, srv in defs.servers.items():
        if s in homes:
            for sw, intents in port_intents(defs, homes[s], s).items():
                for i in intents:
                    switches.reset_port(sw, i.port, i)
        else:
            for c in srv.channels.values():
                switches.reset_port(c.switch, c.port, PortIntent(c.port, PortMode.ACCESS, (1,)))
    redfish = RedfishLab([RedfishSystemSpec(s, power_on=s in homes) for s in defs.servers], Path(state) / "redfish",
                         {USER: PASSWORD}, power_delay_s=0.1)
    rf_port = redfish.start()
    tgt = TgtLab(Path(state) / "tgt")
    tgt_port = tgt.start()
    storage = TgtStorage("127.0.0.1", tgt_port, LocalRunner(env=tgt.admin_env))
    for name, p in defs.personas.items():
        tgt.add_lun(LunSpec(p.spec.boot.target, 1, 8, name))
        storage.set_chap(p.spec.boot.target, f"aimctl-{name}", "benchsecret1234")
        storage.bind(p.spec.boot.target, p.spec.initiator)
        redfish.set_iscsi_boot(p.spec.home, IscsiBoot(p.spec.initiator, p.spec.boot.target, 1, "127.0.0.1", tgt_port,
                                                      f"aimctl-{name}", "benchsecret1234"))
    conn.send({"switches": sw_ports, "redfish": rf_port, "tgt": tgt_port, "socket": tgt.env["TGT_IPC_SOCKET"],
               "system_ids": {s: redfish.system_path(s).rsplit("/", 1)[-1] for s in defs.servers}})
    while True:
        cmd = conn.recv()
        if cmd == "sessions":
            conn.send({sw: switches.sessions(sw) for sw in sw_ports})
        elif cmd == "stop":
            for part in (switches, redfish, tgt):
                try:
                    part.stop()
                except Exception as exc:  # noqa: BLE001 - stopping the rest anyway
                    print(f"stopping {type(part).__name__}: {exc}", file=sys.stderr)
            conn.send(None)
            return


def _secret(state: Path, name: str, value: str) -> str:
    path = state / "secrets" / name
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(value)
    path.chmod(0o600)
    return f"file:{path}"


def _overlay(state: Path, defs: Definitions, w: dict[str, Any]) -> Path:
    bmc = {"username": USER, "password": _secret(state, "bmc", PASSWORD)}
    sw = {"username": USER, "password": _secret(state, "sw", PASSWORD), "enable": _secret(state, "en", ENABLE)}
    doc = {"servers": {s: {"bmc": {"address": "127.0.0.1", "port": w["redfish"], "tls": False,
                                   "system_id": w["system_ids"][s], "credentials": bmc}} for s in defs.servers},
           "switches": {n: {"address": "127.0.0.1", "port": p, "credentials": sw} for n, p in w["switches"].items()},
           "storage": {"array": {"portal": "127.0.0.1", "port": w["tgt"], "management": "local",
                                 "control_socket": w["socket"]}},
           "personas": {n: {"heartbeat_key": _secret(state, "key", "x" * 32)} for n in defs.personas}}
    path = state / "endpoints.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _cpu() -> tuple[float, float]:
    """(this process's CPU seconds, its finished children's: tgtadm and friends)."""
    return time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime + \
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime


def one_pass(rec: Reconciler) -> dict[str, Any]:
    cpu0, kids0 = _cpu()
    res = rec.run_pass()
    cpu1, kids1 = _cpu()
    return {"wall_s": round(res.duration_s, 3), "cpu_s": round(cpu1 - cpu0, 3), "children_cpu_s": round(kids1 - kids0, 3),
            "checks": res.checks, "findings": [f.what for f in res.found], "unchecked": res.unchecked,
            "sessions_driver": res.sessions}


def reference(state: Path) -> dict[str, Any]:
    from lab import cli

    lab_state = state / "lab"
    cli.start(lab_state, ROOT / "personas", power_delay=1.0, boot=1.0, heartbeat=1.0)
    try:
        defs = apply(load(ROOT / "personas", use_cache=False), load_overlay(lab_state / "endpoints.yaml"))
        j = Journal(state / "ref-journal.db")
        j.seed_assignment(defs.homes())
        rec = Reconciler(defs, j, Drivers(defs, state / "boot"))
        first, second = one_pass(rec), one_pass(rec)
        # The lab's IPMI home bodies boot from the lab's own iPXE files, which this controller does not
        # hold (see README: a real finding, repairable as `bootcfg`): those two are expected.
        return {"first": first, "second": second}
    finally:
        cli.stop(lab_state)


def generated(state: Path) -> dict[str, Any]:
    defs_dir = state / "gen-defs"
    generate(defs_dir)
    ctx = multiprocessing.get_context("spawn")
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_world, args=(child, str(state / "gen-world"), str(defs_dir)), daemon=True)
    proc.start()
    t0 = time.monotonic()
    # The child builds the world; if it dies (a generated definition refused...), say so, never hang.
    while not conn.poll(1.0):
        if not proc.is_alive():
            raise SystemExit(f"the generated world's process exited ({proc.exitcode}) before it was ready")
    w = conn.recv()
    setup_s = time.monotonic() - t0
    try:
        defs = apply(load(defs_dir, use_cache=False), load_overlay(_overlay(state, load(defs_dir, use_cache=False), w)))
        j = Journal(state / "gen-journal.db")
        j.seed_assignment(defs.homes())
        rec = Reconciler(defs, j, Drivers(defs, state / "gen-boot"), workers=16)
        conn.send("sessions")
        before = conn.recv()
        first = one_pass(rec)
        conn.send("sessions")
        mid = conn.recv()
        second = one_pass(rec)
        conn.send("sessions")
        after = conn.recv()
        for p in (first, second):
            if p["findings"] or p["unchecked"]:
                raise SystemExit(f"the generated world is as defined, yet the pass found {p['findings'][:3]} "
                                 f"(unchecked {p['unchecked']})")
        # The pure part alone: expectations and verdict over the observations of a real pass.
        from aimctl.reconcile.read import read_world

        ex = expected(defs, defs.homes(), set())
        ob = read_world(rec.drivers, ex, rec._pool)  # type: ignore[arg-type]
        c0 = time.process_time()
        for _ in range(5):
            findings(expected(defs, defs.homes(), set()), ob)
        pure = (time.process_time() - c0) / 5
        return {"setup_s": round(setup_s, 1), "first": first, "second": second,
                "sessions_per_switch": {sw: after[sw] - mid[sw] for sw in after},
                "sessions_per_switch_first": {sw: mid[sw] - before[sw] for sw in after},
                "pure_cpu_s": round(pure, 4)}
    finally:
        conn.send("stop")
        conn.recv()
        proc.join(20)


def main() -> None:
    state = Path(tempfile.mkdtemp(prefix="aimctl-bench-drift-"))
    try:
        ref = reference(state)
        gen = generated(state)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    per_k = 1000 / PERSONAS
    result = {
        "reference_pass_s": ref["second"]["wall_s"], "reference_first_pass_s": ref["first"]["wall_s"],
        "reference_sessions_per_switch": ref["second"]["sessions_driver"],
        "reference_checks": ref["second"]["checks"], "reference_findings": ref["second"]["findings"],
        "generated_pass_s": gen["second"]["wall_s"], "generated_first_pass_s": gen["first"]["wall_s"],
        "sessions_per_switch": gen["sessions_per_switch"],
        "sessions_per_switch_first_pass": gen["sessions_per_switch_first"],
        "generated_checks": gen["second"]["checks"],
        "cpu_s_per_1000_personas": round(gen["second"]["cpu_s"] * per_k, 2),
        "children_cpu_s_per_1000_personas": round(gen["second"]["children_cpu_s"] * per_k, 2),
        "verdict_cpu_s_per_1000_personas": round(gen["pure_cpu_s"] * per_k, 3),
        "generated_setup_s": gen["setup_s"],
        "goal_sessions_per_switch": 1,
        "goal_met": set(gen["sessions_per_switch"].values()) == {1}
        and set(ref["second"]["sessions_driver"].values()) == {1},
        "setup": (f"reference: personas/ lab (7 bodies, 5 switches, 4 personas); generated: {BODIES} Redfish bodies "
                  f"({PERSONAS} personas), 4 channels each on {SWITCHES} PowerConnect lab switches, {PERSONAS} tgt "
                  "targets; switches/BMCs in a child process; second pass reported (first includes connects)"),
    }
    path = write_result("drift", result)
    print(yaml.safe_dump(result, sort_keys=False))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
