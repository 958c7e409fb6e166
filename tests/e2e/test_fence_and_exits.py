"""Lab stories for the one fence, all-or-nothing switch steps and the operator's exits.

Every story ends (in the ``world`` fixture) by asking the access observer: no two bodies ever held
one persona's LUNs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from aimctl.api.client import ApiCallError
from lab.controller_proc import ControllerProcess
from lab.fixtures import LabHandle
from tests.conftest import REPO
from tests.e2e.stories import ENDED, op_of, port_vlans, wait_op

pytestmark = pytest.mark.lab

World = tuple[LabHandle, ControllerProcess]


def timeline(ctrl: ControllerProcess, op_id: str) -> list[dict[str, Any]]:
    return ctrl.api.get(f"/v1/failovers/{op_id}")["timeline"]  # type: ignore[no-any-return]


def reason_matches_lab(reason: str, ls: dict[str, Any], server: str) -> None:
    """The needs-operator sentence names each of the body's ports with the state the switch holds."""
    for ch in ls["servers"][server]["channels"].values():
        mode, vlans = ch["mode"], ",".join(map(str, ch["vlans"])) or "none"
        assert f"{ch['switch']} {ch['port']}: {mode} {vlans} (" in reason, (ch, reason)


def audit_actions(ctrl: ControllerProcess) -> list[str]:
    lines = (ctrl.state / "audit.log").read_text().splitlines()
    return [json.loads(x)["action"] for x in lines if x.strip()]


def test_failed_standby_is_fenced_like_a_dead_body(world: World) -> None:
    """web2's first standby never boots it, and once it is on its BMC lies (reads On after Off):
    the power-off cannot be read back, so the standby's ports go to quarantine and are read back
    before the operation may go on to the next standby."""
    lab, ctrl = world
    lab.fault("boot-fail", "r620-4")
    lab.fault("power-button", "r620-2")
    ctrl.wait(lambda: lab.status()["servers"]["r620-4"]["power"] == "on", 30, "r620-4 powered on")
    lab.fault("bmc-lies", "r620-4")
    op = wait_op(ctrl, "web2", ENDED, timeout_s=90)
    assert op["state"] == "done", op
    assert op["facts"]["to"] == "r620-3" and op["facts"]["failed_standbys"] == ["r620-4"]
    fenced = op["facts"]["fenced_standbys"]["r620-4"]
    assert fenced["power"].startswith("not read back"), fenced
    assert "r620-4 fenced: storage fence proven, ports read back in quarantine" in fenced["verdict"]
    assert "r620-4" in op["facts"]["ports_quarantined"]
    # The next standby was touched only after that confirmed fence.
    steps = [(s["step"], s["status"]) for s in timeline(ctrl, op["id"])]
    retarget = steps.index(("heartbeat", "retarget"))
    assert ("bootcfg", "ok") in steps[retarget:]
    ls = lab.status()
    assert all(v == ("access", [998]) for v in port_vlans(ls, "r620-4").values()), port_vlans(ls, "r620-4")
    assert ls["servers"]["r620-3"]["booted"] == "web2"
    assert "r620-4" in ctrl.api.get("/v1/status")["quarantined"]


def test_switch_step_hang_is_undone_then_retried(world: World) -> None:
    """sw2 hangs during the switch step: sw1's changes are put back and read back, the operation
    waits for an operator with every port's state, and `retry` finishes it once sw2 answers."""
    lab, ctrl = world
    before = {s: port_vlans(lab.status(), s) for s in ("r720-1", "r720-3")}
    lab.fault("switch-hang", "sw2")
    lab.fault("power-button", "r720-1")
    op = wait_op(ctrl, "exchange1", ENDED, timeout_s=90)
    assert op["state"] == "needs-operator", op
    reason = op["result"]
    assert reason.startswith("switch: switch step not done: sw2 failed ("), reason
    assert "Every touched port is back as captured (read back)" in reason
    ls = lab.status()
    assert {s: port_vlans(ls, s) for s in before} == before  # neither switch left half-done
    for s in before:
        reason_matches_lab(reason, ls, s)
    assert ls["servers"]["r720-3"]["power"] == "off"
    # While it waits, the persona is still watched and status says what it waits for.
    st = ctrl.wait(lambda: (x := ctrl.api.get("/v1/status"))["personas"]["exchange1"]["detector"] == "dead" and x,
                   20, "exchange1 seen dead while its operation waits")
    waiting = st["personas"]["exchange1"]["waiting"]
    assert waiting["state"] == "needs-operator" and waiting["reason"] == reason
    assert f"aimctl retry {op['id']}" in waiting["exits"]
    lab.fault("switch-hang", "sw2", clear=True)
    ctrl.api.post(f"/v1/failovers/{op['id']}/retry", {"note": "sw2 rebooted"})
    op = wait_op(ctrl, "exchange1", ENDED, timeout_s=60)
    assert op["state"] == "done", op
    ls = lab.status()
    assert ls["servers"]["r720-3"]["booted"] == "exchange1"
    assert all(v == ("access", [999]) for v in port_vlans(ls, "r720-1").values())
    full = ctrl.api.get(f"/v1/failovers/{op['id']}")
    resolve = [s for s in full["timeline"] if s["step"] == "resolve"]
    assert resolve and resolve[0]["detail"]["action"] == "retry"
    assert any("retry by" in n["text"] and "sw2 rebooted" in n["text"] for n in full["change"]["work_notes"])
    assert "operation.retry" in audit_actions(ctrl)
    # Each intent record says what its step was about to do.
    switch = next(s for s in full["timeline"] if s["step"] == "switch")
    assert any("sw2> interface ethernet 1/g5" in a for a in switch["intent"]["actions"])


def test_stuck_operations_have_exits_and_bad_requests_open_none(world: World) -> None:
    """The hole as reported: a failover to a server that does not exist used to open an operation
    that blocked exchange2 for good. Now it is refused; an operation that does wait (no standby,
    or an approval) can be abandoned, and then a real death fails exchange2 over."""
    lab, ctrl = world
    for body, words in (({"persona": "exchange2", "to": "no-such-server"}, "unknown server 'no-such-server'"),
                        ({"persona": "exchange2", "to": "r620-4"}, "not a member of pool exchange"),
                        ({"persona": "exchange2", "to": "r720-1"}, "runs persona exchange1"),
                        ({"persona": "nobody"}, "unknown persona 'nobody'")):
        with pytest.raises(ApiCallError) as ei:
            ctrl.api.post("/v1/failover", body)
        assert ei.value.status == 400 and words in str(ei.value)
    assert ctrl.api.get("/v1/failovers") == []
    # An approval that never comes: abandoned, web1 stays where it runs.
    res = ctrl.api.post("/v1/failover", {"persona": "web1"})
    wait_op(ctrl, "web1", ("waiting-approval",), timeout_s=20)
    ctrl.api.post(f"/v1/failovers/{res['id']}/abandon", {"note": "false alarm"})
    op = ctrl.api.get(f"/v1/failovers/{res['id']}")
    assert op["state"] == "aborted" and op["change"]["state"] == "closed", op
    # No standby for exchange2 (its BMC is gone): the operation stops before touching anything.
    lab.fault("bmc-down", "r720-3")
    ctrl.wait(lambda: ctrl.api.get("/v1/status")["bmcs"]["r720-3"] == "no-answer", 20, "r720-3's BMC silent")
    res = ctrl.api.post("/v1/failover", {"persona": "exchange2"})
    op = wait_op(ctrl, "exchange2", ENDED, timeout_s=30)
    assert op["state"] == "needs-operator" and "r720-3: BMC no-answer" in op["result"], op
    assert lab.status()["servers"]["r720-2"]["booted"] == "exchange2"
    with pytest.raises(ApiCallError, match="already has an operation in progress"):
        ctrl.api.post("/v1/failover", {"persona": "exchange2"})
    # The operator's exit, from the CLI as at 3 a.m.
    cli = subprocess.run([sys.executable, "-m", "aimctl.cli", "abandon", res["id"], "--state", str(ctrl.state),
                          "--note", "standby BMC down"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert f"{res['id']}: aborted: abandoned by" in cli.stdout and "exchange2 stays on r720-2" in cli.stdout
    assert [a for a in audit_actions(ctrl) if a == "operation.abandon"] == ["operation.abandon"] * 2
    lab.fault("bmc-down", "r720-3", clear=True)
    ctrl.wait(lambda: ctrl.api.get("/v1/status")["bmcs"]["r720-3"] != "no-answer", 20, "r720-3's BMC back")
    lab.fault("power-button", "r720-2")

    def new_op() -> Any:
        o = op_of(ctrl, "exchange2")
        return o if o and o["id"] != res["id"] and o["state"] in ("done", "failed", "needs-operator") else None

    op = ctrl.wait(new_op, 60, "a new failover of exchange2")
    assert op["state"] == "done", op
    assert lab.status()["servers"]["r720-3"]["booted"] == "exchange2"


def test_fence_quarantine_hang_then_operator_marks_the_body_out(world: World) -> None:
    """r720-1's BMC lies and sw2 hangs half-way through its quarantine: the fence is not confirmed,
    every port of r720-1 is reported as it stands, nothing moves. The operator, who has seen the
    body is off, clears the switch and records it as out: the failover finishes."""
    lab, ctrl = world
    lab.fault("bmc-lies", "r720-1")
    lab.fault("switch-hang", "sw2", after=6)  # the VLAN lines, then into r720-1's first sw2 port
    lab.fault("power-button", "r720-1")
    op = wait_op(ctrl, "exchange1", ENDED, timeout_s=90)
    assert op["state"] == "needs-operator", op
    reason = op["result"]
    assert reason.startswith("fence: fence of r720-1 not confirmed: power-off not read back"), reason
    assert "ports not quarantined (quarantine of r720-1 not done: sw2 failed (" in reason
    ls = lab.status()
    reason_matches_lab(reason, ls, "r720-1")
    assert {c: v for c, v in port_vlans(ls, "r720-1").items() if c in ("1", "3")} == \
        {"1": ("trunk", [4004]), "3": ("trunk", [100, 200])}  # sw1 put back
    assert ls["servers"]["r720-3"]["power"] == "off"
    assert not ls["servers"]["r720-3"]["boot_config"].get("InitiatorName")
    assert ctrl.api.get("/v1/status")["personas"]["exchange1"]["server"] == "r720-1"
    with pytest.raises(ApiCallError, match="not a body .* fences"):
        ctrl.api.post(f"/v1/failovers/{op['id']}/mark-fenced", {"server": "r720-2"})
    lab.fault("switch-hang", "sw2", clear=True)
    ctrl.api.post(f"/v1/failovers/{op['id']}/mark-fenced", {"server": "r720-1", "note": "pulled from rack 4"})
    op = wait_op(ctrl, "exchange1", ENDED, timeout_s=60)
    assert op["state"] == "done", op
    fence = [s for s in timeline(ctrl, op["id"]) if s["step"] == "fence"][-1]
    assert "recorded the body is out" in fence["detail"]["verdict"]
    assert any("recorded as out by" in a for a in fence["intent"]["actions"])
    ls = lab.status()
    assert all(v == ("access", [999]) for v in port_vlans(ls, "r720-1").values())
    assert ls["servers"]["r720-3"]["booted"] == "exchange1"
    assert "operation.mark-fenced" in audit_actions(ctrl)
