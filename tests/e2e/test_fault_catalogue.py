"""Lab stories for the fault catalogue (``lab.faults``): each fault, injected into the real lab with a
real controller, ends in DESIGN.md's end state (each persona on one body, heartbeating) or in
needs-operator with a reason — and the access observer, asked by the ``world`` fixture at the end of
every story, saw no LUN used by two bodies.

Where two faults are independent (different pools), one story runs both at once to stay short.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from lab.controller_proc import ControllerProcess
from lab.fixtures import LabHandle, lab  # noqa: F401 - the session lab, for stories with their own controller
from tests.e2e.stories import ENDED, X1_TARGETS, aimctl, controller_for, op_of, port_vlans, restarted, wait_op

pytestmark = pytest.mark.lab

World = tuple[LabHandle, ControllerProcess]
SEED = int(os.environ.get("AIMCTL_STORY_SEED", "11"))


def timeline(ctrl: ControllerProcess, op_id: str) -> list[dict[str, Any]]:
    return ctrl.api.get(f"/v1/failovers/{op_id}")["timeline"]  # type: ignore[no-any-return]


def ops(ctrl: ControllerProcess) -> list[tuple[str, str]]:
    return [(o["persona"], o["state"]) for o in ctrl.api.get("/v1/failovers")]


def on_standby(lab: LabHandle, ctrl: ControllerProcess, persona: str, server: str) -> None:
    """DESIGN.md's end state for one persona: assigned to ``server``, booted there, heartbeating,
    and holding its LUNs from there only."""
    st = ctrl.wait(lambda: (x := ctrl.api.get("/v1/status"))["personas"][persona]["heartbeat_age_s"] is not None
                   and x["personas"][persona]["heartbeat_age_s"] < 2.0 and x, 10, f"{persona} heartbeating")
    assert st["personas"][persona]["server"] == server
    ls = lab.status()
    assert [s for s, v in ls["servers"].items() if v["booted"] == persona] == [server]


def test_controller_killed_at_a_random_moment_resumes(world: World) -> None:
    """SIGKILL to the controller's process group at a random moment of a failover (seeded: the
    moment is printed), then a restart on the same state: the failover ends as it would have."""
    lab, ctrl = world
    delay = round(random.Random(SEED).uniform(0.5, 4.0), 2)
    lab.fault("power-button", "r720-1")
    r = lab.fault("controller-kill", "controller", delay_s=delay)
    assert ctrl.proc is not None and r["pid"] == ctrl.proc.pid
    again = restarted(ctrl, timeout_s=delay + 10)
    try:
        op = wait_op(again, "exchange1", ENDED, timeout_s=90)
        assert op["state"] == "done", (f"killed {delay}s after the power button (seed {SEED})", op)
        on_standby(lab, again, "exchange1", "r720-3")
        assert [o for o in ops(again) if o[0] != "exchange1"] == []
    finally:
        again.stop()


def test_controller_paused_in_the_middle_of_a_failover(world: World) -> None:
    """The controller stops (SIGSTOP, 3 s) while it fails exchange1 over, between two steps or inside
    one: when it runs again the failover goes on to its end, and the backlog of heartbeats and
    traps it finds makes no other failover. (A stall *before* a death: tests/e2e/test_detection.py.)"""
    lab, ctrl = world
    lab.fault("power-button", "r720-1")
    ctrl.wait(lambda: (o := op_of(ctrl, "exchange1")) and any(
        s["step"] == "fence" for s in timeline(ctrl, o["id"])), 30, "exchange1's failover at its fence")
    lab.fault("controller-pause", "controller", seconds=3)
    op = wait_op(ctrl, "exchange1", ENDED, timeout_s=60)
    assert op["state"] == "done", op
    on_standby(lab, ctrl, "exchange1", "r720-3")
    assert [o for o in ops(ctrl) if o[0] != "exchange1"] == []


def test_storage_error_in_the_storage_step_waits_then_retry_finishes(world: World) -> None:
    """Storage management breaks right after r720-1's fence (the fence is confirmed, nothing of
    exchange1 is on r720-3 yet): the storage step stops the failover for an operator, status says
    why, and the operator's `aimctl retry` from the command line finishes it once the array answers."""
    lab, ctrl = world
    lab.fault("storage-step-error", "r720-1")
    lab.fault("power-button", "r720-1")
    op = wait_op(ctrl, "exchange1", ENDED, timeout_s=60)
    assert op["state"] == "needs-operator", op
    assert op["result"].startswith("storage: "), op["result"]
    steps = [(s["step"], s["status"]) for s in timeline(ctrl, op["id"])]
    assert ("fence", "ok") in steps and steps[-1] == ("storage", "failed"), steps
    ls = lab.status()
    assert ls["servers"]["r720-3"]["power"] == "off" and not ls["servers"]["r720-3"]["boot_config"]["InitiatorName"]
    waiting = ctrl.api.get("/v1/status")["personas"]["exchange1"]["waiting"]
    assert waiting["state"] == "needs-operator" and f"aimctl retry {op['id']}" in waiting["exits"]
    lab.fault("storage-step-error", "r720-1", clear=True)
    cli = aimctl(ctrl, "retry", op["id"], "--note", "array controller rebooted")
    assert cli.returncode == 0, cli.stderr
    assert ": done (" in cli.stdout, cli.stdout
    on_standby(lab, ctrl, "exchange1", "r720-3")
    for t in X1_TARGETS:
        assert {s["alias"] for s in lab.status()["targets"][t]["sessions"]} == {"r720-3"}


def test_storage_error_in_the_fence_then_links_cut_on_a_live_body(world: World) -> None:
    """The array's management fails while web2's dead body is fenced: the storage fence cannot be
    proven, so the fence is not confirmed and nothing moves; the operator retries once the array
    answers. Then every link of r720-2 is cut while its OS runs: no heartbeat and linkDown on its
    SCN channels (rule 2's two signals), so exchange2 is failed over and the live body fenced — its
    boot LUN taken, it is powered off."""
    lab, ctrl = world
    lab.fault("storage-error", "storage")
    lab.fault("power-button", "r620-2")
    w2 = wait_op(ctrl, "web2", ENDED, timeout_s=60)
    assert w2["state"] == "needs-operator", w2
    assert "fence of r620-2 not confirmed: storage fence not proven" in w2["result"], w2["result"]
    ls = lab.status()
    assert ls["servers"]["r620-4"]["power"] == "off" and ls["servers"]["r620-4"]["boot_config"] == {"boot_device": "default"}
    lab.fault("storage-error", "storage", clear=True)
    ctrl.api.post(f"/v1/failovers/{w2['id']}/retry", {"note": "array management back"})
    w2 = wait_op(ctrl, "web2", ENDED, timeout_s=60)
    assert w2["state"] == "done" and w2["facts"]["to"] == "r620-4", w2
    on_standby(lab, ctrl, "web2", "r620-4")

    lab.fault("link-down", "r720-2")
    x2 = wait_op(ctrl, "exchange2", ENDED, timeout_s=60)
    assert x2["state"] == "done" and x2["facts"]["trigger"] == "PersonaDead", x2
    assert "linkDown" in x2["facts"]["evidence"], x2["facts"]
    lab.fault("link-down", "r720-2", clear=True)
    on_standby(lab, ctrl, "exchange2", "r720-3")
    assert lab.status()["servers"]["r720-2"]["power"] == "off"


def test_noise_is_not_death_and_a_death_inside_it_is_found(world: World) -> None:
    """A trap storm from every switch (link flaps on random ports, SCN ports of live bodies
    included, unknown ports, a wrong community) and 3 % heartbeat loss on every body: nobody is
    failed over for the noise, and a real death inside it (web2's body) is."""
    lab, ctrl = world
    lab.fault("trap-storm", "all", rate=100)
    lab.fault("scn-loss", "all", percent=3)
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert ops(ctrl) == []
            time.sleep(0.25)
        lab.fault("power-button", "r620-2")
        op = wait_op(ctrl, "web2", ENDED, timeout_s=60)
        assert op["facts"]["trigger"] == "PersonaDead", op["facts"]
        assert [o for o in ops(ctrl) if o[0] != "web2"] == []
        relay = lab.status()["relay"]
        assert relay["loss"]["r720-1"] == 0.03 and sum(relay["dropped"].values()) > 0, relay
    finally:
        lab.fault("trap-storm", "all", clear=True)
        lab.fault("scn-loss", "all", clear=True)
    if op["state"] == "needs-operator":
        # The storm flaps the standbys' ports too: a body whose links flap is a suspect, never
        # trusted with a persona, so the death that was found waits for an operator, nothing moved.
        assert "no standby can take web2" in op["result"] and "suspect" in op["result"], op["result"]
        assert all(lab.status()["servers"][s]["power"] == "off" for s in ("r620-3", "r620-4"))
    else:
        assert op["state"] == "done", (op["state"], op["result"])
        on_standby(lab, ctrl, "web2", op["facts"]["to"])


def test_flapping_scn_link(world: World) -> None:
    """r720-2's SCN ports go down for 1.5 s and up for 1.5 s, over and over: heartbeats go missing
    while linkDown traps say the SCN is down — rule 2's two signals. Whatever the controller
    decides (fail exchange2 over, fencing the flapping body, or find it alive after all when it
    asks again), exchange2 ends on one body, heartbeating, and no other persona is touched."""
    lab, ctrl = world
    lab.fault("scn-flap", "r720-2", period_s=3.0)
    try:
        op = wait_op(ctrl, "exchange2", ENDED, timeout_s=30)
    finally:
        lab.fault("scn-flap", "r720-2", clear=True)
    if op["state"] == "done":
        assert op["facts"]["trigger"] == "PersonaDead" and "linkDown" in op["facts"]["evidence"], op
        on_standby(lab, ctrl, "exchange2", "r720-3")
        ls = lab.status()
        assert ls["servers"]["r720-2"]["state"] in ("off", "crashed"), ls["servers"]["r720-2"]
    else:
        assert op["state"] == "aborted" and "not dead after all" in op["result"], op
        on_standby(lab, ctrl, "exchange2", "r720-2")
    assert [o for o in ops(ctrl) if o[0] != "exchange2"] == []


def test_bmc_credentials_changed(world: World) -> None:
    """Two pools at once. exchange: r720-1's BMC refuses our credentials and then the body dies:
    the linkDown traps are the second source, the power-off cannot be done, so the fence is
    confirmed by the quarantine read back. web: the preferred standby's BMC refuses us: the next
    standby is chosen."""
    lab, ctrl = world
    lab.fault("bmc-auth", "r720-1")
    lab.fault("bmc-auth", "r620-4")
    ctrl.wait(lambda: (b := ctrl.api.get("/v1/status")["bmcs"])["r720-1"] == "no-answer" and b["r620-4"] == "no-answer",
              20, "both BMCs refusing the controller")
    lab.fault("power-button", "r720-1")
    lab.fault("power-button", "r620-2")
    x1 = wait_op(ctrl, "exchange1", ENDED, timeout_s=90)
    w2 = wait_op(ctrl, "web2", ENDED, timeout_s=90)
    assert x1["state"] == "done" and w2["state"] == "done", (x1, w2)
    fence = next(s for s in timeline(ctrl, x1["id"]) if s["step"] == "fence")["detail"]
    assert fence["power"].startswith("not read back") and "ports read back in quarantine" in fence["verdict"], fence
    assert all(v == ("access", [999]) for v in port_vlans(lab.status(), "r720-1").values())
    assert w2["facts"]["to"] == "r620-3"
    choose = next(s for s in timeline(ctrl, w2["id"]) if s["step"] == "choose")
    assert any("r620-4" in a and "BMC no-answer" in a for a in choose["intent"]["actions"]), choose["intent"]
    on_standby(lab, ctrl, "exchange1", "r720-3")
    on_standby(lab, ctrl, "web2", "r620-3")


def test_lying_standby_bmc_and_a_bmc_past_the_driver_timeout(world: World) -> None:
    """Two pools at once. web: the preferred standby's BMC takes the power-on and reads back On,
    but the body never powers on: no heartbeat within the boot timer, so it is fenced like a dead
    body and the next standby takes web2. exchange: the dying body's BMC takes 6 s a request (past
    the drivers' 5 s): the power-off cannot be read back, so the fence is confirmed by the
    quarantine read back from the switches."""
    lab, ctrl = world
    boots = lab.status()["servers"]["r620-4"]["boots"]
    lab.fault("bmc-phantom", "r620-4")
    lab.fault("bmc-slow", "r720-1", delay_s=6)
    lab.fault("power-button", "r620-2")
    lab.fault("power-button", "r720-1")
    x1 = wait_op(ctrl, "exchange1", ENDED, timeout_s=60)
    assert x1["state"] == "done", x1
    fence = next(s for s in timeline(ctrl, x1["id"]) if s["step"] == "fence")["detail"]
    assert fence["power"].startswith("not read back") and "ports read back in quarantine" in fence["verdict"], fence
    w2 = wait_op(ctrl, "web2", ENDED, timeout_s=90)
    assert w2["state"] == "done", w2
    assert w2["facts"]["to"] == "r620-3" and w2["facts"]["failed_standbys"] == ["r620-4"], w2["facts"]
    assert w2["facts"]["fenced_standbys"]["r620-4"]["power"] == {"power": "off (read back)"}
    ls = lab.status()
    assert ls["servers"]["r620-4"]["power"] == "off" and ls["servers"]["r620-4"]["boots"] == boots
    assert all(v == ("access", [998]) for v in port_vlans(ls, "r620-4").values())
    assert all(v == ("access", [999]) for v in port_vlans(ls, "r720-1").values())
    on_standby(lab, ctrl, "web2", "r620-3")
    on_standby(lab, ctrl, "exchange1", "r720-3")


def test_dag_copy_that_stays_failed_is_done_recovery_failed(lab: LabHandle, tmp_path: Path) -> None:
    """EXCH1's database copies stay Failed whatever the hook does (a resume fails them again):
    exchange1 runs on r720-3, the recovery hook gives up at its timeout (3 s here), and the
    operation is done with recovery failed, alerted."""

    def short_hook(doc: dict[str, Any]) -> None:
        doc["personas"]["exchange1"]["recovery"][0].update({"timeout": "3s", "retries": 0})

    ctrl = controller_for(lab, tmp_path, edit=short_hook)
    try:
        lab.fault("dag-copy-failed", "exchange1")
        lab.fault("power-button", "r720-1")
        op = wait_op(ctrl, "exchange1", ENDED, timeout_s=90)
        assert op["state"] == "done" and op["result"].endswith("recovery failed"), op
        rec = next(s for s in timeline(ctrl, op["id"]) if s["step"] == "recovery")["detail"]
        assert rec["recovery"] == "failed" and "Failed" in str(rec["hooks"][0]), rec
        on_standby(lab, ctrl, "exchange1", "r720-3")
        assert "RecoveryFailed" in (ctrl.state / "controller.log").read_text()
        assert op_of(ctrl, "exchange2") is None
    finally:
        ctrl.stop()
        verdict = lab.status()["observer"]
        assert verdict["double_access"] == 0, verdict["evidence"][:5]
