"""Lab stories of the persona lifecycle: archives and restore, a gold-image persona, spare rehearsals
(good, failing to boot, pre-empted by a failover), and the DNS hook moving a persona's records.

One lab for the session, reset before each story, a real controller process per story; each story
ends by asking the access observer: no two bodies ever held one target.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aimctl.api.client import ApiCallError
from lab.controller_proc import ControllerProcess
from lab.dns.bind import BindLab
from lab.fixtures import LabHandle, lab  # noqa: F401 - the session lab fixture
from tests.e2e.test_failover import port_vlans

pytestmark = pytest.mark.lab

EX1_DB = "iqn.2026-01.lab.storage:exchange1-db"
EX1_REHEARSAL = "iqn.2026-01.lab.storage:exchange1-boot-rehearsal"
TERMINAL = ("done", "failed", "aborted", "needs-operator")


def overlay(labh: LabHandle, tmp: Path, personas: dict[str, Any] | None = None) -> Path:
    doc = labh.overlay()
    doc["controller"].update({"power_deadline": 4.0, "boot_timer_override": 4.0})
    for name, patch in (personas or {}).items():
        doc["personas"].setdefault(name, {}).update(patch)
    path = tmp / "endpoints.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def definitions(labh: LabHandle, tmp: Path, pool: dict[str, Any] | None = None,
                personas: dict[str, Any] | None = None, hooks: dict[str, list[Any]] | None = None) -> Path:
    """A copy of the lab's definitions with the exchange pool's policy (or personas) changed."""
    dst = tmp / "personas"
    if not dst.exists():
        shutil.copytree(labh.definitions, dst)
    path = dst / "exchange.yaml"
    doc = yaml.safe_load(path.read_text())
    doc.update(pool or {})
    doc["personas"].update(personas or {})
    for name, extra in (hooks or {}).items():
        doc["personas"][name]["recovery"] += extra
    path.write_text(yaml.safe_dump(doc))
    return dst


def start(labh: LabHandle, tmp: Path, defs: Path | None = None, ov: Path | None = None,
          state: Path | None = None) -> ControllerProcess:
    ctrl = ControllerProcess(defs or labh.definitions, ov or overlay(labh, tmp), state or tmp / "ctrl").start()
    try:
        ctrl.wait(lambda: all(ctrl.api.get("/v1/status")["personas"][p]["heartbeat_age_s"] is not None
                              for p in ("exchange1", "exchange2")), 20, "exchange personas heartbeating")
    except BaseException:
        ctrl.stop()
        raise
    return ctrl


@pytest.fixture
def story(lab: LabHandle, tmp_path: Path) -> Iterator[list[ControllerProcess]]:  # noqa: F811
    """Reset the lab; the story starts its controller(s) and appends them; stopped and checked after."""
    lab.reset()
    ctrls: list[ControllerProcess] = []
    try:
        yield ctrls
    finally:
        for c in ctrls:
            c.stop()
        verdict = lab.status()["observer"]
        assert verdict["double_access"] == 0, verdict["evidence"][:5]


def finished(ctrl: ControllerProcess, op_id: str, timeout_s: float = 60) -> dict[str, Any]:
    def check() -> Any:
        o = ctrl.api.get(f"/v1/failovers/{op_id}")
        return o if o["state"] in TERMINAL else None

    return ctrl.wait(check, timeout_s, f"{op_id} finished")  # type: ignore[no-any-return]


def archived(ctrl: ControllerProcess, persona: str = "exchange1") -> str:
    op = finished(ctrl, ctrl.api.post("/v1/archives", {"persona": persona})["id"])
    assert op["state"] == "done", op
    return str(op["facts"]["set"])


def ops(ctrl: ControllerProcess, kind: str, persona: str | None = None) -> list[dict[str, Any]]:
    return [o for o in ctrl.api.get("/v1/failovers?limit=200") if o["kind"] == kind
            and (persona is None or o["persona"] == persona)]


def steps(op: dict[str, Any]) -> list[str]:
    return [s["step"] for s in op["timeline"]]


def carried(ls: dict[str, Any], server: str) -> set[tuple[str, tuple[int, ...]]]:
    """What the server's ports carry, one entry per distinct (mode, VLANs)."""
    return {(mode, tuple(vlans)) for mode, vlans in port_vlans(ls, server).values()}


def fresh(ctrl: ControllerProcess, persona: str) -> bool:
    age = ctrl.api.get("/v1/status")["personas"][persona]["heartbeat_age_s"]
    return age is not None and age < 2.5


# ---------------------------------------------------------------------------- archives and restore


def test_scheduled_archive_then_restore_of_a_damaged_persona(story: list[ControllerProcess], lab: LabHandle,  # noqa: F811
                                                            tmp_path: Path) -> None:
    defs = definitions(lab, tmp_path, pool={"archives": {"every": "2s", "keep": "72h"},
                                            "rehearsal": {"vlan": 3999, "stale_after": "1h"}})
    story.append(ctrl := start(lab, tmp_path, defs))
    # The pool's policy takes the archive, frozen together: boot and data LUN in one set.
    first = ctrl.wait(lambda: next((o for o in ops(ctrl, "archive", "exchange1")
                                    if o["state"] == "done" and o["facts"]["trigger"] == "schedule"), None),
                      20, "a scheduled archive of exchange1")
    listed = {a["id"]: a for a in ctrl.api.get("/v1/archives/exchange1")}
    arch = listed[first["facts"]["set"]]
    assert arch["complete"] and len(arch["luns"]) == 2

    # Bad input: a time with no archive. Refused whole: no operation, nothing fenced.
    with pytest.raises(ApiCallError) as err:
        ctrl.api.post("/v1/restore", {"persona": "exchange1", "at": "2020-01-01T00:00Z"})
    assert err.value.status == 404 and "no archive at or before 2020-01-01T00:00:00.000Z" in str(err.value)
    assert ops(ctrl, "restore") == [] and fresh(ctrl, "exchange1")

    # The database LUN is damaged; the operator restores the archive taken before.
    db = lab.state / "tgt" / "luns" / f"{EX1_DB.replace(':', '_')}-1.img"
    snapshot = lab.state / "tgt" / "snapshots" / f"{arch['id']}+{EX1_DB}+1.img"
    with open(db, "r+b") as fh:
        fh.seek(8192)
        fh.write(b"damaged by a bad patch")
    assert db.read_bytes() != snapshot.read_bytes()
    op = finished(ctrl, ctrl.api.post("/v1/restore", {"persona": "exchange1", "at": arch["id"]})["id"], 90)
    assert op["state"] == "done", op
    assert steps(op) == ["confirm", "approve", "fence", "restore", "storage", "bootcfg", "switch", "power_on",
                         "heartbeat", "recovery", "done"]
    fence = op["timeline"][2]["detail"]
    assert fence["agent_stopped"] and fence["storage"]["old_secret_refused"]
    assert db.read_bytes() == snapshot.read_bytes()
    assert lab.status()["servers"]["r720-1"]["booted"] == "exchange1"
    ctrl.wait(lambda: fresh(ctrl, "exchange1"), 10, "exchange1 heartbeating again")
    assert op["change"]["state"] == "closed" and op["change"]["close_code"] == "successful"
    # No archive ran while the restore held the persona.
    during = [o for o in ops(ctrl, "archive", "exchange1") if op["created"] < o["created"] < op["updated"]]
    assert during == []
    assert "RehearsalStale exchange1" in (tmp_path / "ctrl" / "controller.log").read_text()


# ---------------------------------------------------------------------------- gold-image personas


def test_gold_persona_made_and_started_on_a_standby(story: list[ControllerProcess], lab: LabHandle,  # noqa: F811
                                                    tmp_path: Path) -> None:
    story.append(ctrl := start(lab, tmp_path))
    # Bad input: a gold image that does not exist. Refused whole: no operation, no target.
    with pytest.raises(ApiCallError, match="gold image 'w2k3' does not exist .*gold images there: exchange, web"):
        ctrl.api.post("/v1/personas", {"name": "exchange3", "pool": "exchange", "gold": "w2k3"})
    assert ops(ctrl, "provision") == []
    assert not any("exchange3" in t for t in lab.status()["targets"])

    res = ctrl.api.post("/v1/personas", {"name": "exchange3", "pool": "exchange", "gold": "exchange"})
    assert finished(ctrl, res["id"])["state"] == "done"
    target = res["persona"]["exchange3"]["boot"]["target"]
    view = lab.status()["targets"][target]
    assert view["acl"] == ["iqn.1991-05.com.microsoft:exchange3"] and view["accounts"] == ["aimctl-exchange3"]
    assert "heartbeat_key: file:" in res["stanza"] and "home: r720-3" in res["stanza"]

    # The operator commits the stanza and restarts the controller; the new persona starts on the standby.
    ctrl.stop()
    defs = definitions(lab, tmp_path, personas=yaml.safe_load(res["stanza"]))
    lab.adopt("exchange3", "iqn.1991-05.com.microsoft:exchange3", Path(res["key_file"]))
    story.append(ctrl := start(lab, tmp_path, defs, state=tmp_path / "ctrl"))
    op = finished(ctrl, ctrl.api.post("/v1/personas/exchange3/start", {})["id"], 60)
    assert op["state"] == "done" and op["facts"]["to"] == "r720-3", op
    ls = lab.status()
    assert ls["servers"]["r720-3"]["booted"] == "exchange3"
    assert {s["alias"] for s in ls["targets"][target]["sessions"]} == {"r720-3"}
    ctrl.wait(lambda: fresh(ctrl, "exchange3"), 10, "exchange3 heartbeating")


# ---------------------------------------------------------------------------- spare rehearsals


def test_good_rehearsal(story: list[ControllerProcess], lab: LabHandle, tmp_path: Path) -> None:  # noqa: F811
    story.append(ctrl := start(lab, tmp_path))
    archive = archived(ctrl)
    dag = lab.status()["dag"]
    rid = ctrl.api.post("/v1/rehearse", {"persona": "exchange1"})["id"]
    # While it runs: the standby boots the copy in rehearsal mode, in the isolated VLAN only; the
    # persona itself runs on, its DAG copies untouched (the rehearsal joins nothing).
    during = ctrl.wait(lambda: (ls := lab.status())["servers"]["r720-3"]["rehearsal"] == "exchange1" and ls,
                       30, "r720-3 booted in rehearsal")
    assert during["servers"]["r720-3"]["booted"] is None
    assert carried(during, "r720-3") == {("access", (3999,))}
    assert during["servers"]["r720-1"]["booted"] == "exchange1" and during["dag"] == dag
    assert {s["alias"] for s in during["targets"][EX1_REHEARSAL]["sessions"]} == {"r720-3"}
    op = finished(ctrl, rid)
    assert op["state"] == "done", op
    assert steps(op) == ["clone", "bootcfg", "capture", "switch", "power_on", "heartbeat", "checks", "teardown",
                         "verdict"]
    assert op["facts"]["archive"] == archive
    ls = lab.status()
    assert ls["servers"]["r720-3"]["power"] == "off" and EX1_REHEARSAL not in ls["targets"]
    assert carried(ls, "r720-3") == {("access", (1,))}, "ports put back as captured"
    got = ctrl.api.get("/v1/rehearsals")["exchange1"]
    assert got["last"]["id"] == rid and got["last"]["state"] == "done" and got["last_good"]
    assert ops(ctrl, "failover") == [] and fresh(ctrl, "exchange1")


def test_rehearsal_that_fails_to_boot(story: list[ControllerProcess], lab: LabHandle, tmp_path: Path) -> None:  # noqa: F811
    story.append(ctrl := start(lab, tmp_path))
    archived(ctrl)
    lab.fault("boot-fail", "r720-3")
    op = finished(ctrl, ctrl.api.post("/v1/rehearse", {"persona": "exchange1"})["id"])
    assert op["state"] == "failed" and "no rehearsal heartbeat from exchange1 on r720-3" in op["result"], op
    teardown = next(s for s in op["timeline"] if s["step"] == "teardown")
    assert teardown["status"] == "ok" and "reason" not in teardown["detail"]
    ls = lab.status()
    assert ls["servers"]["r720-3"]["power"] == "off" and EX1_REHEARSAL not in ls["targets"]
    assert carried(ls, "r720-3") == {("access", (1,))}
    # Reported and the standby marked: failed, but not quarantined (it may still save a persona tonight).
    marks = ctrl.api.get("/v1/rehearsals")["exchange1"]["marks"]
    assert "did not boot exchange1" in marks["r720-3"]
    assert "r720-3" not in ctrl.api.get("/v1/status")["quarantined"]
    assert "ALERT RehearsalFailed exchange1" in (tmp_path / "ctrl" / "controller.log").read_text()


def test_failover_arriving_mid_rehearsal_preempts_it(story: list[ControllerProcess], lab: LabHandle,  # noqa: F811
                                                     tmp_path: Path) -> None:
    # Checks that want 40 healthy heartbeats (20 s here): the failover surely arrives during them.
    defs = definitions(lab, tmp_path, pool={"rehearsal": {"vlan": 3999, "healthy_beats": 40}})
    story.append(ctrl := start(lab, tmp_path, defs))
    archived(ctrl)
    rid = ctrl.api.post("/v1/rehearse", {"persona": "exchange1"})["id"]
    ctrl.wait(lambda: lab.status()["servers"]["r720-3"]["rehearsal"] == "exchange1", 30, "rehearsal booted")
    lab.fault("power-button", "r720-2")  # exchange2 dies: its failover needs r720-3, the only standby
    rehearsal = finished(ctrl, rid, 60)
    assert rehearsal["state"] == "aborted" and "pre-empted by failover of exchange2" in rehearsal["result"], rehearsal
    checks = next(s for s in rehearsal["timeline"] if s["step"] == "checks")
    assert checks["detail"]["verdict"] == "pre-empted" and checks["duration_s"] < 15
    fo = ctrl.wait(lambda: next((o for o in ops(ctrl, "failover", "exchange2") if o["state"] in TERMINAL), None),
                   90, "the failover of exchange2")
    fo = ctrl.api.get(f"/v1/failovers/{fo['id']}")
    assert fo["state"] == "done" and fo["facts"]["to"] == "r720-3", fo
    teardown = next(s for s in rehearsal["timeline"] if s["step"] == "teardown")
    assert teardown["ended"] <= fo["timeline"][0]["started"], "torn down before the failover began"
    ls = lab.status()
    assert ls["servers"]["r720-3"]["booted"] == "exchange2" and EX1_REHEARSAL not in ls["targets"]


def test_controller_killed_mid_rehearsal_resumes_it(story: list[ControllerProcess], lab: LabHandle,  # noqa: F811
                                                   tmp_path: Path) -> None:
    """Killed right after the standby was powered on (step record 16: the archive's 6, then clone,
    bootcfg, capture, switch, power_on): a new controller resumes from the journal, the rehearsal
    finishes and everything it changed is put back."""
    ov = overlay(lab, tmp_path)
    crashing = ControllerProcess(lab.definitions, ov, tmp_path / "ctrl", env={"AIMCTL_CRASH_AFTER_STEP_RECORD": "16"})
    story.append(crashing.start())
    crashing.wait(crashing.all_alive, 20, "every persona heartbeating")
    archived(crashing)
    rid = crashing.api.post("/v1/rehearse", {"persona": "exchange1"})["id"]
    crashing.wait(lambda: crashing.proc is not None and crashing.proc.poll() is not None, 30, "the crash")
    assert crashing.proc is not None and crashing.proc.returncode == 97
    assert lab.status()["servers"]["r720-3"]["power"] == "on", "the body boots on while no controller runs"
    story.append(ctrl := start(lab, tmp_path, ov=ov, state=tmp_path / "ctrl"))
    op = finished(ctrl, rid, 60)
    assert op["state"] == "done", op
    assert steps(op) == ["clone", "bootcfg", "capture", "switch", "power_on", "heartbeat", "checks", "teardown",
                         "verdict"], "nothing done twice"
    ls = lab.status()
    assert ls["servers"]["r720-3"]["power"] == "off" and EX1_REHEARSAL not in ls["targets"]
    assert carried(ls, "r720-3") == {("access", (1,))}


# ---------------------------------------------------------------------------- DNS hook


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BindLab]:
    b = BindLab(tmp_path_factory.mktemp("bind") / "named", records=[
        "mail IN A 10.99.0.1", "@ IN MX 10 r720-1.lab.test.", "r720-1 IN A 10.0.0.11", "r720-3 IN A 10.0.0.13"])
    b.start()
    try:
        yield b
    finally:
        b.stop()


def test_dns_hook_moves_a_and_mx_records(story: list[ControllerProcess], lab: LabHandle, tmp_path: Path,  # noqa: F811
                                         bind: BindLab) -> None:
    hook = {"hook": "dns-update", "point": "post-boot", "server": "ns1.lab.test", "zone": "lab.test",
            "key_name": "aimctl-key", "credentials": "env:AIMCTL_TSIG_SECRET", "timeout": "10s",
            "records": [{"name": "mail", "type": "A", "ttl": "1m", "value": "{address:mapi}"},
                        {"name": "@", "type": "MX", "ttl": "1m", "value": "10 {server}.lab.test."}]}
    defs = definitions(lab, tmp_path, hooks={"exchange1": [hook]})
    ov = overlay(lab, tmp_path, personas={"exchange1": {"recovery": {
        **lab.overlay()["personas"]["exchange1"]["recovery"],
        1: {"server": "127.0.0.1", "port": bind.port, "credentials": f"file:{bind.secret_file}"}}}})
    story.append(ctrl := start(lab, tmp_path, defs, ov))
    assert bind.read("mail.lab.test", "A") == (300, ["10.99.0.1"])
    op = finished(ctrl, ctrl.api.post("/v1/move", {"persona": "exchange1", "to": "r720-3"})["id"], 90)
    assert op["state"] == "done", op
    hooks = next(s for s in op["timeline"] if s["step"] == "recovery")["detail"]["hooks"]
    dns = next(h for h in hooks if h["kind"] == "dns-update")
    assert dns["ok"], dns
    assert bind.read("mail.lab.test", "A") == (60, ["10.1.0.11"])
    assert bind.read("lab.test", "MX") == (60, ["10 r720-3.lab.test."])
