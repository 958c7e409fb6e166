"""Lab stories for the paths that were only unit-tested before: every operator command of the real
``aimctl`` command line against a running controller, the change-record gate of a planned move,
RBAC on the real routes, ``/metrics`` after real failovers, script hooks at pre-fence,
pre-failback and post-recovery, a manual pool's confirm timeout, and restart-then-failover.

The controller runs on a copy of the reference definitions with three edits (the lab itself is
built from the originals): exchange2 and web1 get script hooks that log each call, and web1's
confirm timeout is 3 s, after which it proceeds.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aimctl.api.client import ApiCallError, ApiClient
from lab.controller_proc import ControllerProcess
from lab.fixtures import LabHandle, lab  # noqa: F401 - the session lab
from tests.conftest import DEFINITIONS
from tests.e2e.stories import ENDED, aimctl, controller_for, op_of, port_vlans, wait_op

pytestmark = pytest.mark.lab


def hooked_definitions(tmp: Path) -> tuple[Path, Path]:
    """A copy of personas/ whose hooks append "POINT PERSONA OLD NEW" to a log file."""
    defs = tmp / "personas"
    shutil.copytree(DEFINITIONS, defs)
    log = tmp / "hooks.log"
    script = tmp / "hook.sh"
    script.write_text(f'#!/bin/sh\necho "$AIMCTL_POINT $AIMCTL_PERSONA $AIMCTL_OLD_SERVER $AIMCTL_NEW_SERVER $*" '
                      f'>> {log}\n')
    script.chmod(0o755)
    ex = (defs / "exchange.yaml").read_text()
    hooks = "".join(f"\n      - {{hook: script, point: {p}, path: {script}, args: [{p}]}}"
                    for p in ("pre-fence", "pre-failback", "post-recovery"))
    marker = "         timeout: 20m, retries: 1}\n"
    first = ex.index(marker) + len(marker)
    second = ex.index(marker, first) + len(marker)  # exchange2's recovery list ends here
    ex = ex[:second].rstrip("\n") + hooks + "\n" + ex[second:]
    (defs / "exchange.yaml").write_text(ex)
    web = (defs / "web.yaml").read_text()
    web = web.replace("confirm_timeout: 5m", "confirm_timeout: 3s").replace("on_confirm_timeout: abort",
                                                                          "on_confirm_timeout: proceed")
    web = web.replace("path: /etc/aimctl/hooks/notify-lb.sh", f"path: {script}")
    (defs / "web.yaml").write_text(web)
    return defs, log


@pytest.fixture
def hooked(lab: LabHandle, tmp_path: Path) -> Iterator[tuple[LabHandle, ControllerProcess, Path]]:  # noqa: F811
    defs, log = hooked_definitions(tmp_path)
    ctrl = controller_for(lab, tmp_path, definitions=defs)
    try:
        yield lab, ctrl, log
    finally:
        ctrl.stop()
        verdict = lab.status()["observer"]
        assert verdict["double_access"] == 0, verdict["evidence"][:5]


def ok(r: Any) -> str:
    assert r.returncode == 0, (r.args, r.stdout, r.stderr)
    return str(r.stdout)


def hook_calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def raw_get(ctrl: ControllerProcess, path: str) -> int:
    url = json.loads((ctrl.state / "api.json").read_text())["url"].rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_operator_commands_against_a_running_controller(
        hooked: tuple[LabHandle, ControllerProcess, Path]) -> None:
    """At 3 a.m., with nothing but the command line: status; a planned move gated on a change record
    (it waits; approving the change releases it); a second one abandoned; failovers and timeline;
    failback (its pre-failback and pre-fence hooks run); an operator's failover; clear; and a fence
    that cannot be confirmed, resolved by marking the body out. Roles are checked on the real
    routes, and /metrics counts what happened."""
    lab, ctrl, log = hooked
    # Roles: a viewer and an operator next to the admin token the CLI uses.
    viewer, operator = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    (ctrl.state / "tokens.yaml").write_text(json.dumps({"tokens": [
        {"name": "grafana", "role": "viewer", "sha256": hashlib.sha256(viewer.encode()).hexdigest()},
        {"name": "alice", "role": "operator", "sha256": hashlib.sha256(operator.encode()).hexdigest()}]}))
    as_viewer, as_operator = ApiClient(ctrl.state, token=viewer), ApiClient(ctrl.state, token=operator)
    assert raw_get(ctrl, "/v1/status") == 401 and raw_get(ctrl, "/metrics") == 401
    assert set(as_viewer.get("/v1/status")["personas"]) == {"exchange1", "exchange2", "web1", "web2"}
    with pytest.raises(ApiCallError) as ei:
        as_viewer.post("/v1/move", {"persona": "exchange2", "to": "r720-3"})
    assert ei.value.status == 403

    out = ok(aimctl(ctrl, "status"))
    assert all(p in out for p in ("exchange1", "exchange2", "web1", "web2")) and "r720-1" in out

    # The change-record gate: the move waits for CHG0042001, whose approval releases it.
    out = ok(aimctl(ctrl, "move", "exchange2", "--to", "r720-3", "--change", "CHG0042001", "--no-wait"))
    move_id = out.split()[-1]
    op = wait_op(ctrl, "exchange2", ("waiting-approval",) + ENDED, timeout_s=20)
    assert op["state"] == "waiting-approval" and "CHG0042001" in op["result"], op
    assert ctrl.api.get(f"/v1/failovers/{move_id}")["change"]["number"] == "CHG0042001"
    assert lab.status()["servers"]["r720-2"]["booted"] == "exchange2"  # nothing moved while it waits
    with pytest.raises(ApiCallError) as ei:
        as_viewer.post("/v1/failovers/CHG0042001/approve")
    assert ei.value.status == 403
    with pytest.raises(ApiCallError, match=r"body change: String should match pattern") as ei:
        as_operator.post("/v1/move", {"persona": "web1", "to": "r620-4", "change": "CHG0042001; rm -rf /"})
    assert ei.value.status == 400
    # A second planned move, never approved: abandoned from the command line.
    out = ok(aimctl(ctrl, "move", "web1", "--to", "r620-4", "--change", "CHG0042002", "--no-wait"))
    web_move = out.split()[-1]
    wait_op(ctrl, "web1", ("waiting-approval",), timeout_s=20)
    out = ok(aimctl(ctrl, "abandon", web_move, "--note", "change rejected by the CAB"))
    assert "aborted: abandoned by admin(admin): web1 stays on r620-1" in out, out
    states = {o["id"]: o["state"] for o in json.loads(ok(aimctl(ctrl, "failovers", "--json")))}
    assert states == {move_id: "waiting-approval", web_move: "aborted"}

    ok(aimctl(ctrl, "approve", "CHG0042001"))
    op = wait_op(ctrl, "exchange2", ENDED, timeout_s=60)
    assert op["id"] == move_id and op["state"] == "done", op
    assert lab.status()["servers"]["r720-3"]["booted"] == "exchange2"
    steps = json.loads(ok(aimctl(ctrl, "timeline", move_id, "--json")))["steps"]
    # approve twice: it waited for the change, then went on once the change was approved
    assert [(s["name"], s["result"]) for s in steps][:5] == [
        ("confirm", "ok"), ("approve", "failed"), ("approve", "ok"), ("choose", "ok"), ("fence", "ok")]
    assert hook_calls(log) == ["pre-fence exchange2 r720-2 r720-3 pre-fence",
                               "post-recovery exchange2 r720-2 r720-3 post-recovery"]

    # Failback: the agent stops exchange2, the pre-failback and pre-fence hooks run, it goes home.
    out = ok(aimctl(ctrl, "failback", "exchange2"))
    assert ": done (" in out, out
    assert hook_calls(log)[2:] == ["pre-failback exchange2 r720-3 r720-2 pre-failback",
                                   "pre-fence exchange2 r720-3 r720-2 pre-fence",
                                   "post-recovery exchange2 r720-3 r720-2 post-recovery"]
    assert lab.status()["servers"]["r720-2"]["booted"] == "exchange2"

    # An operator's failover of a live persona; its old body is quarantined until cleared.
    out = ok(aimctl(ctrl, "failover", "web2", "--to", "r620-3"))
    assert ": done (" in out, out
    assert "r620-2" in ctrl.api.get("/v1/status")["quarantined"]
    with pytest.raises(ApiCallError) as ei:
        as_operator.post("/v1/servers/r620-2/clear")
    assert ei.value.status == 403  # clearing a body is an admin's call
    assert "cleared r620-2" in ok(aimctl(ctrl, "clear", "r620-2"))
    assert "r620-2" not in ctrl.api.get("/v1/status")["quarantined"]

    # A fence that cannot be confirmed (the BMC refuses us, a switch hangs in the quarantine): the
    # operator, who saw the body is out, says so; the failover finishes.
    out = ok(aimctl(ctrl, "failovers"))
    assert move_id in out and web_move in out and "r620-3" in out, out
    lab.fault("bmc-auth", "r720-1")
    lab.fault("switch-hang", "sw2", after=6)
    lab.fault("power-button", "r720-1")
    op = wait_op(ctrl, "exchange1", ENDED, timeout_s=90)
    assert op["state"] == "needs-operator" and "fence of r720-1 not confirmed" in op["result"], op
    lab.fault("switch-hang", "sw2", clear=True)
    out = ok(aimctl(ctrl, "mark-fenced", op["id"], "r720-1", "--note", "pulled from rack 4"))
    assert ": done (" in out, out
    out = ok(aimctl(ctrl, "timeline", op["id"]))
    assert "fence" in out and ": done (" in out, out
    fence = [x for x in ctrl.api.get(f"/v1/failovers/{op['id']}")["timeline"] if x["step"] == "fence"][-1]
    assert "recorded the body is out" in fence["detail"]["verdict"], fence
    assert lab.status()["servers"]["r720-3"]["booted"] == "exchange1"
    assert all(v == ("access", [999]) for v in port_vlans(lab.status(), "r720-1").values())

    # /metrics, read with a viewer token after all that.
    req = urllib.request.Request(ApiClient(ctrl.state).url + "/metrics", headers={"Authorization": f"Bearer {viewer}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    counts = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("aimctl_failovers_total")}
    assert counts == {'aimctl_failovers_total{result="done"}': 4.0, 'aimctl_failovers_total{result="aborted"}': 1.0}
    assert 'aimctl_step_duration_seconds_count{step="fence"}' in text
    assert 'aimctl_pool_spare_capacity{pool="exchange"} 0.0' in text  # r720-1 is quarantined now
    assert 'aimctl_heartbeat_age_seconds{persona="web2"}' in text


def test_confirm_timeout_and_restart_then_failover(hooked: tuple[LabHandle, ControllerProcess, Path]) -> None:
    """Two pools at once. web: web1's body dies; its pool is manual, nobody approves within the
    3 s confirm timeout, so the failover proceeds, and its post-recovery script runs on the new
    body. exchange: exchange2's service stops answering on r720-2; the agent restarts it three
    times, then reports it unhealthy, and the controller fails exchange2 over."""
    lab, ctrl, log = hooked
    lab.fault("power-button", "r620-1")
    lab.fault("service-fail", "r720-2")
    w1 = wait_op(ctrl, "web1", ("waiting-approval",) + ENDED, timeout_s=30)
    assert w1["state"] == "waiting-approval", w1
    w1 = wait_op(ctrl, "web1", ENDED, timeout_s=60)
    assert w1["state"] == "done" and w1["facts"]["to"] == "r620-4", w1
    approve = next(s for s in ctrl.api.get(f"/v1/failovers/{w1['id']}")["timeline"]
                   if s["step"] == "approve" and s["status"] == "ok")
    assert approve["detail"]["approved_by"] == "confirm timeout (3s): proceed"
    assert "post-recovery web1 r620-1 r620-4 web1" in hook_calls(log)
    x2 = wait_op(ctrl, "exchange2", ENDED, timeout_s=60)
    assert x2["state"] == "done" and x2["facts"]["trigger"] == "PersonaUnhealthy", x2
    assert "services failed after restarts" in x2["facts"]["evidence"]
    ls = lab.status()
    assert ls["servers"]["r720-2"]["service_restarts"] == 3
    assert ls["servers"]["r720-3"]["booted"] == "exchange2" and ls["servers"]["r720-2"]["power"] == "off"
    st = ctrl.wait(lambda: (x := ctrl.api.get("/v1/status"))["personas"]["exchange2"]["health"] == "ok" and x, 10,
                   "exchange2 healthy on r720-3")
    assert st["personas"]["exchange2"]["server"] == "r720-3"
    assert op_of(ctrl, "exchange1") is None
