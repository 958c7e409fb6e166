"""``make demo``: the reference failover in the lab, live, with its timeline and the final state.

Starts the lab with the reference definitions and the controller, pulls the power button on
exchange1's server, follows the failover, prints the timeline and the state an operator checks
afterwards (assignment, quarantine, ACLs, VLANs, DAG distribution, access observer), and cleans up.
``DEMO_OUT=FILE`` also writes the failover record as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from aimctl.cli.operator import print_timeline, watch
from lab import cli as labcli
from lab.controller_proc import ControllerProcess
from lab.fixtures import LabHandle

REPO = Path(__file__).resolve().parent.parent
out = Console(soft_wrap=True)


def main() -> int:
    defs = REPO / "personas"
    tmp = Path(tempfile.mkdtemp(prefix="aimctl-demo-"))
    lab = LabHandle(tmp / "lab", defs)
    ctrl = ControllerProcess(defs, lab.endpoints, tmp / "ctrl")
    t0 = time.monotonic()
    try:
        out.rule("aimctl demo: the reference Exchange failover")
        labcli.start(lab.state, defs, power_delay=1.0, boot=3.0, heartbeat=1.0, resync=3.0)
        out.print(f"lab up in {time.monotonic() - t0:.1f}s: 3 Redfish BMCs, 2 PowerConnect switches, tgtd, "
                  "DAG simulator (plus the IPMI pool)")
        ctrl.start()
        ctrl.wait(ctrl.all_alive, 30, "every persona heartbeating")
        before = lab.status()
        out.print(f"all personas heartbeating; DAG actives before: {before['dag'] or '-'}")
        out.print("[bold red]pulling the power button on r720-1 (exchange1)[/]")
        pressed = time.time()
        lab.fault("power-button", "r720-1")
        op_id = ctrl.wait(lambda: next((o["id"] for o in ctrl.api.get("/v1/failovers")
                                        if o["persona"] == "exchange1"), None), 30, "the failover to start")
        out.print(f"detected and started {op_id} after {time.time() - pressed:.1f}s")
        op = watch(ctrl.state, op_id, timeout_s=600)
        print_timeline(op)
        st = lab.status()
        out.rule("final state")
        cur = ctrl.api.get("/v1/status")
        for p, v in cur["personas"].items():
            out.print(f"  {p:<10} on {v['server']:<7} heartbeat {v['heartbeat_age_s']}s ({v['detector']})")
        for s, q in cur["quarantined"].items():
            out.print(f"  quarantined: {s} ({q['reason']})")
        for s in ("r720-1", "r720-3"):
            v = st["servers"][s]
            chans = ", ".join(f"ch{c} {x['port']} {x['mode']} {x['vlans']}" for c, x in v["channels"].items())
            out.print(f"  {s}: power {v['power']}, persona {v['booted']}; {chans}")
        for t in ("iqn.2026-01.lab.storage:exchange1-boot", "iqn.2026-01.lab.storage:exchange1-db"):
            v = st["targets"][t]
            out.print(f"  {t}: ACL {v['acl']}, CHAP {v['accounts']}, sessions "
                      f"{[x['alias'] for x in v['sessions']]}")
        rec = next((x for x in op["timeline"] if x["step"] == "recovery"), None)
        for h in (rec or {}).get("detail", {}).get("hooks", []):
            data = h.get("data") or {}
            out.print(f"  {h['name']}: {'ok' if h['ok'] else 'FAILED ' + str(h.get('error'))}; actives when it started "
                      f"{data.get('before')}, after redistribution {data.get('after')}; actions {data.get('actions')}")
        if st["dag"]:
            out.print(f"  DAG actives now: {st['dag']}")
        ob = st["observer"]
        out.print(f"  access observer: {ob['double_access']} double access in {ob['samples']} samples")
        record = {"persona": "exchange1", "from": op["from_server"], "to": op["facts"].get("to"),
                  "result": op["state"] + (": " + op["result"] if op["result"] else ""),
                  "steps": [{"name": s["step"], "started": s["started"], "ended": s["ended"], "result": s["status"]}
                            for s in op["timeline"]],
                  "observer": {"double_access": ob["double_access"]}}
        if os.environ.get("DEMO_OUT"):
            Path(os.environ["DEMO_OUT"]).write_text(json.dumps(record, indent=2))
            out.print(f"failover record written to {os.environ['DEMO_OUT']}")
        ok = op["state"] == "done" and record["to"] == "r720-3" and ob["double_access"] == 0
        out.rule(f"{'OK' if ok else 'FAILED'}: demo took {time.monotonic() - t0:.1f}s")
        return 0 if ok else 1
    finally:
        ctrl.stop()
        labcli.stop(lab.state)


if __name__ == "__main__":
    sys.exit(main())
