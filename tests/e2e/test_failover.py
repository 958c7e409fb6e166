"""Lab stories: one lab for the session, reset before each, a fresh controller per story.

Each story ends by asking the access observer: no two bodies ever held one persona's LUNs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from aimctl.errors import OperatorError
from lab.controller_proc import ControllerProcess
from lab.fixtures import LabHandle
from tests.e2e.stories import X1_TARGETS, op_of, overlay_for, port_vlans, wait_op

pytestmark = pytest.mark.lab

def test_power_button_failover(world: tuple[LabHandle, ControllerProcess]) -> None:
    lab, ctrl = world
    lab.fault("power-button", "r720-1")
    op = wait_op(ctrl, "exchange1", ("done", "failed", "needs-operator"))
    assert op["state"] == "done", op
    full = ctrl.api.get(f"/v1/failovers/{op['id']}")
    names = [s["step"] for s in full["timeline"]]
    assert names == ["confirm", "approve", "choose", "fence", "storage", "bootcfg", "switch", "power_on",
                     "heartbeat", "recovery", "done"]
    st = ctrl.api.get("/v1/status")
    assert st["personas"]["exchange1"]["server"] == "r720-3"
    assert "r720-1" in st["quarantined"]
    ls = lab.status()
    assert ls["servers"]["r720-3"]["booted"] == "exchange1"
    assert port_vlans(ls, "r720-3") == {"1": ("trunk", [4004]), "2": ("trunk", [4004]),
                                        "3": ("trunk", [100, 200]), "4": ("trunk", [100, 200])}
    assert all(v == ("access", [999]) for v in port_vlans(ls, "r720-1").values())
    for t in X1_TARGETS:
        assert ls["targets"][t]["acl"] == ["iqn.1991-05.com.microsoft:exchange1"]
        assert {s["alias"] for s in ls["targets"][t]["sessions"]} == {"r720-3"}
    # The DAG hook ran after the copies resynchronized: actives back on their preference-1 servers.
    rec = next(s for s in full["timeline"] if s["step"] == "recovery")
    assert rec["detail"]["recovery"] == "ok", rec
    dag = rec["detail"]["hooks"][0]["data"]
    assert dag["before"] != dag["after"]  # exchange1's databases were active on EXCH2 while it was away
    assert ls["dag"] == {"EXCH1": ["DB01", "DB03"], "EXCH2": ["DB02", "DB04"]}
    assert full["change"]["state"] == "closed"


def test_recovery_hook_timeout_is_done_recovery_failed(lab: LabHandle, tmp_path: Path) -> None:  # noqa: F811
    """A DAG management host that accepts TCP but never speaks SSH: the hook times out."""
    import socket

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    try:
        lab.reset()
        doc = yaml.safe_load(overlay_for(lab, tmp_path).read_text())
        doc["personas"]["exchange1"]["recovery"] = {0: {"via": f"ssh://admin@127.0.0.1:{hole.getsockname()[1]}",
                                                        "timeout": "2s", "retries": 0}}
        (tmp_path / "endpoints.yaml").write_text(yaml.safe_dump(doc))
        ctrl = ControllerProcess(lab.definitions, tmp_path / "endpoints.yaml", tmp_path / "ctrl").start()
        try:
            ctrl.wait(ctrl.all_alive, 20, "every persona heartbeating")
            lab.fault("power-button", "r720-1")
            op = wait_op(ctrl, "exchange1", ("done", "failed", "needs-operator"), timeout_s=90)
            assert op["state"] == "done" and op["result"].endswith("recovery failed"), op
            full = ctrl.api.get(f"/v1/failovers/{op['id']}")
            rec = next(s for s in full["timeline"] if s["step"] == "recovery")
            assert rec["detail"]["recovery"] == "failed"
            notes = " ".join(str(n) for n in full["change"]["work_notes"])
            assert "recovery" in notes and "fail" in notes
            assert "ALERT" in (tmp_path / "ctrl" / "controller.log").read_text()
        finally:
            ctrl.stop()
    finally:
        hole.close()


def test_scn_partition_is_not_death(world: tuple[LabHandle, ControllerProcess]) -> None:
    lab, ctrl = world
    lab.fault("scn-partition", "r720-2")
    ctrl.wait(lambda: ctrl.api.get("/v1/status")["personas"]["exchange2"]["detector"] == "unreachable", 20,
              "exchange2 unreachable")
    # Stay partitioned for as long again as it took to notice: still no failover.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert op_of(ctrl, "exchange2") is None
        time.sleep(0.2)
    assert lab.status()["servers"]["r720-2"]["booted"] == "exchange2"


def test_bmc_silent_presumed_dead_moves_through_fence(world: tuple[LabHandle, ControllerProcess]) -> None:
    lab, ctrl = world
    # The host is alive and holds its sessions; only its SCN and its BMC are gone.
    lab.fault("bmc-down", "r720-1")
    lab.fault("scn-partition", "r720-1")
    op = wait_op(ctrl, "exchange1", ("done", "needs-operator", "failed"), timeout_s=90)
    assert op["state"] == "done", op
    assert op["facts"]["trigger"] == "PersonaPresumedDead"
    assert op["facts"]["quarantined_in_fence"] is True
    ls = lab.status()
    for t in X1_TARGETS:
        assert {s["alias"] for s in ls["targets"][t]["sessions"]} == {"r720-3"}
    assert all(v == ("access", [999]) for v in port_vlans(ls, "r720-1").values())


def test_planned_move_and_failback(world: tuple[LabHandle, ControllerProcess]) -> None:
    lab, ctrl = world
    res = ctrl.api.post("/v1/move", {"persona": "exchange2", "to": "r720-3"})
    op = wait_op(ctrl, "exchange2", ("done", "needs-operator", "failed"))
    assert op["id"] == res["id"] and op["state"] == "done", op
    fence = next(s for s in ctrl.api.get(f"/v1/failovers/{op['id']}")["timeline"] if s["step"] == "fence")
    assert fence["detail"]["graceful"] and fence["detail"]["agent_stopped"], fence  # the agent stopped it first
    assert ctrl.api.get("/v1/status")["personas"]["exchange2"]["server"] == "r720-3"
    assert lab.status()["servers"]["r720-3"]["booted"] == "exchange2"
    res = ctrl.api.post("/v1/failback", {"persona": "exchange2"})

    def back() -> Any:
        o = ctrl.api.get(f"/v1/failovers/{res['id']}")
        return o if o["state"] != "running" else None

    op = ctrl.wait(back, 60, "failback")
    assert op["state"] == "done", op
    assert ctrl.api.get("/v1/status")["personas"]["exchange2"]["server"] == "r720-2"
    assert lab.status()["servers"]["r720-2"]["booted"] == "exchange2"


def test_manual_policy_waits_for_approval(world: tuple[LabHandle, ControllerProcess]) -> None:
    lab, ctrl = world
    lab.fault("power-button", "r620-1")  # web1: manual policy, IPMI bodies, iPXE boot
    op = wait_op(ctrl, "web1", ("waiting-approval", "done", "failed", "needs-operator"))
    assert op["state"] == "waiting-approval", op
    assert lab.status()["servers"]["r620-4"]["power"] == "off"
    ctrl.api.post(f"/v1/failovers/{op['id']}/approve")
    op = wait_op(ctrl, "web1", ("done", "failed", "needs-operator"))
    assert op["state"] == "done", op
    assert op["facts"]["to"] == "r620-4"  # standby preference #1
    assert lab.status()["servers"]["r620-4"]["booted"] == "web1"


def test_standby_fails_to_boot_retargets(world: tuple[LabHandle, ControllerProcess]) -> None:
    lab, ctrl = world
    lab.fault("boot-fail", "r620-4")
    lab.fault("power-button", "r620-2")  # web2: automatic
    op = wait_op(ctrl, "web2", ("done", "failed", "needs-operator"), timeout_s=120)
    assert op["state"] == "done", op
    assert op["facts"]["to"] == "r620-3"
    assert op["facts"]["failed_standbys"] == ["r620-4"]
    st = ctrl.api.get("/v1/status")
    assert "r620-4" in st["quarantined"] and "r620-2" in st["quarantined"]
    ls = lab.status()
    assert ls["servers"]["r620-3"]["booted"] == "web2"
    assert ls["servers"]["r620-4"]["power"] == "off"
    # The failed standby is fenced like a dead body: none of web2's VLANs stay on its ports.
    assert all(v == ("access", [998]) for v in port_vlans(ls, "r620-4").values()), port_vlans(ls, "r620-4")


def _final(lab: LabHandle, ctrl: ControllerProcess) -> dict[str, Any]:
    st = ctrl.api.get("/v1/status")
    ls = lab.status()
    return {"assignment": {p: v["server"] for p, v in st["personas"].items()},
            "quarantined": sorted(st["quarantined"]),
            "booted": {s: v["booted"] for s, v in ls["servers"].items()},
            "ports": {s: port_vlans(ls, s) for s in ("r720-1", "r720-3")},
            "acl": {t: ls["targets"][t]["acl"] for t in X1_TARGETS}}


@pytest.mark.timeout(1500)
@pytest.mark.skipif(os.environ.get("AIMCTL_SKIP_CRASH_LOOP") == "1", reason="crash loop disabled")
def test_controller_killed_at_every_record_resumes(lab: LabHandle, tmp_path: Path) -> None:  # noqa: F811
    """Kill the controller right after step record N (N = 1, 2, ...: each intent and each result),
    restart it, and require the same final state, until a run completes with no record left to crash
    at. (Every *commit*, change-record updates included, is walked by tests/unit/test_journal.py.)"""

    def run(n: int | None, where: Path) -> tuple[dict[str, Any], bool]:
        lab.reset()
        overlay = overlay_for(lab, tmp_path)
        # The body dies first; the controller finds it dead as it starts, so every commit it makes
        # from its very first one belongs to this failover.
        lab.fault("power-button", "r720-1")
        env = {"AIMCTL_CRASH_AFTER_STEP_RECORD": str(n)} if n else {}
        ctrl = ControllerProcess(lab.definitions, overlay, where, env=env)
        crashed = False
        try:
            try:
                ctrl.start()
            except Exception:
                assert ctrl.proc is not None and ctrl.proc.returncode == 97, "controller failed to start"
                crashed = True

            def settled() -> Any:
                if ctrl.proc is not None and ctrl.proc.poll() is not None:
                    return "crashed"
                try:
                    o = op_of(ctrl, "exchange1")
                except OperatorError:  # it may die between the two looks
                    return "crashed" if ctrl.proc is not None and ctrl.proc.poll() is not None else None
                return "done" if o and o["state"] in ("done", "failed", "needs-operator") else None

            if not crashed:
                crashed = ctrl.wait(settled, 90, f"crash at commit {n} or the end") == "crashed"
            if crashed:
                assert ctrl.proc is not None and ctrl.proc.returncode == 97
                ctrl = ControllerProcess(lab.definitions, overlay, where)
                ctrl.start()
            op = wait_op(ctrl, "exchange1", ("done", "failed", "needs-operator"), timeout_s=90)
            assert op["state"] == "done", (n, op)
            return _final(lab, ctrl), crashed
        finally:
            ctrl.stop()
            assert lab.status()["observer"]["double_access"] == 0

    reference, _ = run(None, tmp_path / "clean")
    n = 0
    while True:
        n += 1
        final, crashed = run(n, tmp_path / f"crash{n}")
        assert final == reference, f"crash at commit {n}"
        if not crashed:
            break
    assert n > 20, f"only {n - 1} step records in a failover?"
