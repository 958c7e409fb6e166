"""Lab stories of the watchful controller: drift, spares, escalation, suspect bodies, racks, alerts.

One lab for the session (reset before each story), a fresh controller per story with short
intervals (drift passes every 2 s, BMC health every 0.5 s) and, where a story needs a pool policy,
a copy of the reference definitions with that policy. Alerts are read from the lab's real SMTP
server and trap receiver. Every story ends by asking the access observer: no double access.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.controller_proc import ControllerProcess
from lab.fixtures import REPO, LabHandle, lab  # noqa: F401 - the session lab fixture

pytestmark = pytest.mark.lab

DRIFT_S = 2.0
X1_BOOT = "iqn.2026-01.lab.storage:exchange1-boot"
ALERT_KIND = "1.3.6.1.4.1.32473.1.1.1"

Story = tuple[LabHandle, ControllerProcess]


def definitions(tmp: Path, **pools: dict[str, Any]) -> Path:
    """A copy of the reference definitions with pool policy set (``exchange={"drift": {...}}``)."""
    dst = tmp / "personas"
    shutil.copytree(REPO / "personas", dst)
    for pool, fields in pools.items():
        path = dst / f"{pool}.yaml"
        doc = yaml.safe_load(path.read_text())
        doc.update(fields)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


@pytest.fixture
def story(lab: LabHandle, tmp_path: Path) -> Iterator[Callable[..., Story]]:  # noqa: F811
    procs: list[ControllerProcess] = []

    def start(**pools: dict[str, Any]) -> Story:
        lab.reset()
        doc = lab.overlay()
        doc["controller"].update({"power_deadline": 4.0, "boot_timer_override": 8.0, "drift_interval": DRIFT_S,
                                  "health_interval": 0.5})
        (tmp_path / "endpoints.yaml").write_text(yaml.safe_dump(doc))
        defs = definitions(tmp_path, **pools) if pools else lab.definitions
        ctrl = ControllerProcess(defs, tmp_path / "endpoints.yaml", tmp_path / "ctrl")
        procs.append(ctrl)
        ctrl.start()
        ctrl.wait(ctrl.all_alive, 20, "every persona heartbeating")
        return lab, ctrl

    try:
        yield start
    finally:
        for c in procs:
            c.stop()
        verdict = lab.status()["observer"]
        assert verdict["double_access"] == 0, verdict["evidence"][:5]


def finding(ctrl: ControllerProcess, key: str) -> dict[str, Any] | None:
    return next((f for f in ctrl.api.get("/v1/drift")["findings"] if f["key"] == key), None)


def ops(ctrl: ControllerProcess, persona: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    return [o for o in ctrl.api.get("/v1/failovers") if (persona is None or o["persona"] == persona)
            and (kind is None or o["kind"] == kind)]


def mails(lab: LabHandle, event: str) -> list[dict[str, Any]]:  # noqa: F811
    return [m for m in lab.mail() if m["event"] == event]


def traps(lab: LabHandle, event: str) -> list[dict[str, str]]:  # noqa: F811
    return [t for t in lab.alert_traps() if t.get(ALERT_KIND) == event]


def port(lab: LabHandle, server: str, ch: int) -> tuple[str, list[int]]:  # noqa: F811
    c = lab.status()["servers"][server]["channels"][str(ch)]
    return c["mode"], c["vlans"]


def test_drift_found_repaired_attack_reported_unqualified_standby(story: Callable[..., Story]) -> None:
    """A VLAN changed behind aimctl's back is found within one interval and repaired (the pool allows
    `ports`); a second initiator in a persona's ACL is found and alerted, never repaired; a standby
    whose memory no longer matches is a finding, not a qualified spare, and k = 0 is alerted."""
    lab, ctrl = story(exchange={"drift": {"repair": ["ports"]}})
    ctrl.wait(lambda: ctrl.api.get("/v1/drift")["passes"] >= 1, 2 * DRIFT_S + 5, "a first drift pass")
    last = ctrl.api.get("/v1/drift")["last_pass"]
    assert set(last["sessions_per_switch"].values()) == {1}, last  # one session per switch per pass
    t0 = time.time()
    lab.fault("vlan-change", "r720-2:3")
    lab.fault("acl-add", "exchange1")
    lab.fault("hw-mismatch", "r720-3")
    port_f = ctrl.wait(lambda: finding(ctrl, "ports:sw1:1/g4"), 2 * DRIFT_S + 5, "the VLAN finding")
    assert port_f["kind"] == "ports" and port_f["persona"] == "exchange2"
    assert port_f["expected"] == "trunk vlan 100,200" and port_f["observed"] == "trunk vlan 200"
    # Within one (jittered) interval plus the pass that reads it.
    assert port_f["since"] - t0 <= DRIFT_S * 1.1 + 3.0, port_f["since"] - t0

    # Repaired through a journaled operation with read-back, recorded like any change.
    rep = ctrl.wait(lambda: next((o for o in ops(ctrl, "exchange2", "repair") if o["state"] == "done"), None),
                    20, "the repair operation")
    full = ctrl.api.get(f"/v1/failovers/{rep['id']}")
    assert [s["step"] for s in full["timeline"]] == ["confirm", "repair", "verify", "done"]
    assert full["timeline"][1]["sentence"] == "repaired exchange2: 1 port(s) set back"
    assert full["change"]["state"] == "closed" and full["change"]["short_description"].startswith("Drift repair")
    assert port(lab, "r720-2", 3) == ("trunk", [100, 200])
    ctrl.wait(lambda: finding(ctrl, "ports:sw1:1/g4") is None, 2 * DRIFT_S + 5, "the finding resolved")

    # A repair the switch refuses fails (its ports left as found), is alerted, and is not retried
    # every pass; it never waits for an operator holding the persona's lease.
    lab.fault("switch-reject", "sw2")
    lab.fault("vlan-change", "r720-2:4")
    bad = ctrl.wait(lambda: next((o for o in ops(ctrl, "exchange2", "repair") if o["state"] not in ("running", "done")),
                                 None), 20, "the refused repair")
    assert bad["state"] == "failed" and "refused" in bad["result"], bad
    assert ctrl.wait(lambda: mails(lab, "RepairFailed"), 10, "the repair-failed mail")[0]["severity"] == "alert"
    left = finding(ctrl, "ports:sw2:1/g4")
    assert left is not None and left["repair_op"] == bad["id"]
    passes = ctrl.api.get("/v1/drift")["passes"]
    ctrl.wait(lambda: ctrl.api.get("/v1/drift")["passes"] >= passes + 2, 4 * DRIFT_S + 5, "two more passes")
    assert len(ops(ctrl, "exchange2", "repair")) == 2  # the good one and the refused one, no retry loop
    lab.fault("switch-reject", "sw2", clear=True)

    # The intruder stays: reported, alerted, never repaired.
    acl = finding(ctrl, f"storage:array1:{X1_BOOT}")
    assert acl is not None and "iqn.2026-01.lab.intruder:exchange1" in acl["observed"]
    assert "never repaired automatically" in acl["what"]
    assert ops(ctrl, "exchange1") == []
    assert "iqn.2026-01.lab.intruder:exchange1" in lab.status()["targets"][X1_BOOT]["acl"]
    m = ctrl.wait(lambda: [x for x in mails(lab, "DriftFound") if "intruder" in x["body"]], 10, "the ACL alert mail")
    assert len(m) == 1 and m[0]["to"] == ["oncall@lab.test"]
    assert traps(lab, "DriftFound")

    # The standby does not count: k = 0, alerted once by mail and trap.
    hw = finding(ctrl, "facts:r720-3")
    assert hw is not None and hw["kind"] == "hardware" and "176 GB memory (declared 192 GB)" in hw["what"]
    # The accounting follows the drift pass that stored the finding (it runs right after it).
    pools = ctrl.wait(lambda: (p := ctrl.api.get("/v1/status")["pools"])["exchange"]["k"] == 0 and p, 10,
                      "the spare accounting after the finding")
    assert "r720-3" in pools["exchange"]["excluded"]
    assert pools["web"]["k"] == 2
    ctrl.wait(lambda: [x for x in mails(lab, "SparesExhausted") if "pool exchange" in x["subject"]
                       or x["subject"].startswith("[aimctl alert] SparesExhausted exchange:")], 10, "k=0 mail")
    assert len([t for t in traps(lab, "SparesExhausted") if t.get("1.3.6.1.4.1.32473.1.1.2") == "exchange"]) == 1
    assert 'aimctl_pool_spare_capacity{pool="exchange"} 0.0' in ctrl.api.get("/metrics")


def test_escalation_limit_stops_a_body_killing_every_standby(story: Callable[..., Story]) -> None:
    lab, ctrl = story(web={"escalation": {"max_failovers": 1, "window": "1h"}})
    lab.fault("power-button", "r620-2")
    first = ctrl.wait(lambda: next((o for o in ops(ctrl, "web2") if o["state"] == "done"), None), 60,
                      "the first failover")
    assert first["facts"]["to"] == "r620-4"
    ctrl.wait(ctrl.all_alive, 20, "web2 heartbeating on r620-4")
    lab.fault("power-button", "r620-4")  # the persona kills its new body too
    # Opened, then stopped at once: wait for it to settle (a failover that ran would end "done" instead).
    stop = ctrl.wait(lambda: next((o for o in ops(ctrl, "web2") if o["id"] != first["id"]
                                   and o["state"] != "running"), None), 30, "the second death")
    assert stop["state"] == "needs-operator", stop
    assert "already had 1 automatic failovers" in stop["result"] and first["id"] in stop["result"]
    assert [h["op_id"] for h in stop["facts"]["escalation"]] == [first["id"]]
    full = ctrl.api.get(f"/v1/failovers/{stop['id']}")
    assert full["timeline"][0]["step"] == "confirm" and full["timeline"][0]["status"] == "failed"
    assert full["sentence"].startswith(f"{stop['id']}: failover of web2 from r620-4: stopped at confirm and waits "
                                       "for an operator: not failed over: web2 already had 1")
    st = ctrl.api.get("/v1/status")
    assert st["personas"]["web2"]["why"] == full["sentence"]
    assert lab.status()["servers"]["r620-3"]["power"] == "off"  # the last standby was not eaten
    page = ctrl.wait(lambda: mails(lab, "EscalationStop"), 10, "the page")
    assert page[0]["severity"] == "page"


def test_health_degrade_alerts_and_a_suspect_standby_is_no_spare(story: Callable[..., Story]) -> None:
    lab, ctrl = story()  # the reference pool: preempt action is alert
    lab.fault("health-degrade", "r720-1")
    lab.fault("event-log", "r720-3:psu-redundancy-lost")
    sus = ctrl.wait(lambda: (s := ctrl.api.get("/v1/status")["suspects"]) and len(s) == 2 and s, 10, "suspects")
    assert sus["r720-1"]["action"] == "alert"
    assert sus["r720-1"]["sentence"] == ("r720-1 is suspect: BMC health Warning; pool policy is to alert: "
                                         "exchange1 stays on r720-1")
    assert "power supply redundancy lost" in sus["r720-3"]["sentence"]
    pools = ctrl.api.get("/v1/status")["pools"]
    assert pools["exchange"]["k"] == 0 and pools["exchange"]["excluded"]["r720-3"].startswith("suspect: event log")
    m = ctrl.wait(lambda: [x for x in mails(lab, "SuspectBody") if "r720-1" in x["subject"]], 10, "the mail")
    assert "BMC health Warning" in m[0]["body"]
    t = ctrl.wait(lambda: [x for x in traps(lab, "SuspectBody") if x.get("1.3.6.1.4.1.32473.1.1.2") == "r720-1"],
                  10, "the trap")
    assert t[0]["1.3.6.1.4.1.32473.1.1.3"] == "alert"
    assert ops(ctrl) == []  # alert only: nothing moves
    assert ctrl.api.get("/v1/status")["personas"]["exchange1"]["server"] == "r720-1"


def test_event_log_entry_moves_through_an_approved_change(story: Callable[..., Story]) -> None:
    lab, ctrl = story(exchange={"preempt": {"action": "move", "change_approval": True}})
    lab.fault("event-log", "r720-2:correctable-ecc-limit")
    op = ctrl.wait(lambda: next((o for o in ops(ctrl, "exchange2", "move") if o["state"] == "waiting-approval"),
                                None), 15, "the planned move waiting for its change")
    change = op["facts"]["change"]
    assert op["facts"]["trigger"] == "suspect" and "correctable ECC" in op["facts"]["evidence"]
    assert lab.status()["servers"]["r720-2"]["booted"] == "exchange2"  # nothing moved before approval
    ctrl.api.post(f"/v1/failovers/{change}/approve")
    done = ctrl.wait(lambda: next((o for o in ops(ctrl, "exchange2", "move") if o["state"] != "waiting-approval"
                                   and o["state"] != "running"), None), 60, "the move")
    assert done["state"] == "done", done
    st = ctrl.api.get("/v1/status")
    assert st["personas"]["exchange2"]["server"] == "r720-3"
    assert "r720-2" in st["quarantined"] and "suspect body" in st["quarantined"]["r720-2"]["reason"]
    assert lab.status()["servers"]["r720-3"]["booted"] == "exchange2"
    full = ctrl.api.get(f"/v1/failovers/{done['id']}")
    assert full["change"]["number"] == change and "approved" in full["change"]["approval"]
    steps = {s["step"]: s["sentence"] for s in full["timeline"]}
    assert steps["confirm"].startswith("a planned move off a suspect body: r720-2 is suspect: event log")
    assert steps["choose"] == ("r720-3 chosen for exchange2 in pool exchange: standby r720-3 meets qualification "
                               "(model in PowerEdge R720, >= 12 cores, >= 64 GB), standby preference #1; not r720-1: "
                               "runs persona exchange1; not r720-2: runs persona exchange2")


def _window(minutes_from_now: int, length_h: int = 2) -> dict[str, Any]:
    start = datetime.now(UTC) + timedelta(minutes=minutes_from_now)
    end = start + timedelta(hours=length_h)
    return {"start": f"{start:%H:%M}", "end": f"{end:%H:%M}", "zone": "UTC"}


def test_link_flaps_move_within_the_change_window(story: Callable[..., Story]) -> None:
    lab, ctrl = story(web={"preempt": {"action": "move", "window": _window(-60)}},
                      exchange={"preempt": {"action": "move", "window": _window(+180)}})
    lab.fault("link-flap", "r620-2")  # web: the window is open now
    lab.fault("link-flap", "r720-1")  # exchange: the window opens in three hours
    done = ctrl.wait(lambda: next((o for o in ops(ctrl, "web2", "move") if o["state"] not in ("running",)), None),
                     60, "the planned move of web2")
    assert done["state"] == "done", done
    assert "4 linkDown traps on channel 4" in done["facts"]["evidence"]
    assert ctrl.api.get("/v1/status")["personas"]["web2"]["server"] == done["facts"]["to"]
    sus = ctrl.api.get("/v1/status")["suspects"]
    assert sus["r720-1"]["action"] == "wait-window"
    assert "planned move of exchange1 waits for the change window" in sus["r720-1"]["sentence"]
    assert ops(ctrl, "exchange1") == []


def test_several_bodies_at_once_rack_events_storm_brake_and_rack_limit(story: Callable[..., Story]) -> None:
    """Four bodies in two racks lose power together: each rack is one event, paged once; the exchange
    pool (both actives dead) pauses on its storm brake; the web pool fails over one at a time out of
    rack b1 (per-rack limit 1)."""
    lab, ctrl = story(web={"storm": {"max_concurrent": 2, "pause_above_percent": 100, "per_rack": 1}})
    lab.fault("power-button", "r720-1,r720-2,r620-1,r620-2")
    st = ctrl.wait(lambda: (s := ctrl.api.get("/v1/status"))["paused_pools"].get("exchange") and s, 20,
                   "the exchange storm brake")
    assert len(ops(ctrl, "exchange1") + ops(ctrl, "exchange2")) <= 1  # at most the first death before the pause
    held = [p for p in ("exchange1", "exchange2") if p in st["queued"]]
    assert held and "not started" in st["personas"][held[0]]["why"]

    # web: the rack limit lets one failover out of rack b1 at a time; web1 (manual) needs an approval.
    def web_ops() -> list[dict[str, Any]]:
        return ops(ctrl, "web1") + ops(ctrl, "web2")

    first = ctrl.wait(lambda: web_ops() and web_ops()[0], 20, "the first web failover")
    other = "web2" if first["persona"] == "web1" else "web1"
    why = ctrl.wait(lambda: "rack brake" in (w := ctrl.api.get("/v1/status")["personas"][other]["why"]) and w, 10,
                    "the second web failover held by the rack limit")
    assert "failover(s) out of rack b1 already running (limit 1)" in why
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # approve web1 whenever it waits; stop when both are done
        now = web_ops()
        for o in now:
            if o["state"] == "waiting-approval":
                ctrl.api.post(f"/v1/failovers/{o['id']}/approve")
        if len(now) == 2 and all(o["state"] == "done" for o in now):
            break
        time.sleep(0.2)
    assert sorted((o["persona"], o["state"]) for o in web_ops()) == [("web1", "done"), ("web2", "done")]
    racks = [m for m in mails(lab, "RackEventAlert")]
    assert sorted(m["subject"].split()[3].rstrip(":") for m in racks) == ["a1", "b1"], [m["subject"] for m in racks]
    assert all(m["severity"] == "page" for m in racks)
    assert len(traps(lab, "RackEventAlert")) == 2
