"""Drift: expectations from the journal, the verdict as a table, repairs allowed by policy, spare
accounting, findings in the journal (since when, alerted once, resolved), and the journal's
migration that makes repairs operations."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from aimctl.drivers.protocols import HardwareFacts, IscsiBoot, PortMode, PortState, PowerState, TargetAccess
from aimctl.journal import Journal
from aimctl.journal.schema import MIGRATIONS
from aimctl.loader import load
from aimctl.reconcile.expect import expected
from aimctl.reconcile.loop import repair_requests
from aimctl.reconcile.spares import spares
from aimctl.reconcile.verdict import Finding, Observed, findings, unqualified
from tests.conftest import DEFINITIONS

X1 = "iqn.1991-05.com.microsoft:exchange1"
X1_BOOT = "iqn.2026-01.lab.storage:exchange1-boot"


@pytest.fixture(scope="module")
def defs():  # type: ignore[no-untyped-def]
    return load(DEFINITIONS, use_cache=False)


def test_expectations_of_the_reference_homes(defs) -> None:  # type: ignore[no-untyped-def]
    ex = expected(defs, defs.homes(), set())
    roles = {p.key: (p.role, p.persona) for p in ex.ports}
    assert roles["ports:sw1:1/g1"] == ("persona", "exchange1")
    assert roles["ports:sw1:1/g5"] == ("standby", None)  # r720-3
    standby = next(p for p in ex.ports if p.key == "ports:sw1:1/g5")
    assert standby.forbidden == (100, 200, 4004)
    assert {a.key for a in ex.access} >= {f"storage:array1:{X1_BOOT}"}
    assert {(w.server, w.want) for w in ex.power} == {("r720-1", "on"), ("r720-2", "on"), ("r620-1", "on"),
                                                       ("r620-2", "on")}
    assert [b.server for b in ex.boot if b.persona is None] == ["r720-3", "r620-3", "r620-4"]
    assert len(ex.facts) == 7 and {f.server for f in ex.facts if f.standby} == {"r720-3", "r620-3", "r620-4"}


def test_leased_personas_and_bodies_are_left_out(defs) -> None:  # type: ignore[no-untyped-def]
    ex = expected(defs, defs.homes(), set(), skip_personas={"exchange1"}, skip_servers={"r720-3"})
    servers = {p.server for p in ex.ports} | {b.server for b in ex.boot} | {w.server for w in ex.power}
    assert "r720-1" not in servers and "r720-3" not in servers  # not checked, not taken for a standby either
    assert "exchange1" not in {a.persona for a in ex.access}
    assert "r720-2" in servers


def test_quarantined_bodies_must_be_off_and_in_quarantine(defs) -> None:  # type: ignore[no-untyped-def]
    ex = expected(defs, {**defs.homes(), "exchange1": "r720-3"}, {"r720-1"})
    q = [p for p in ex.ports if p.server == "r720-1"]
    assert {p.role for p in q} == {"quarantine"} and all(p.intent and p.intent.vlans == (999,) for p in q)
    assert ("r720-1", "off", "quarantined") in {(w.server, w.want, w.why) for w in ex.power}


def trunk(port: str, *vlans: int) -> PortState:
    return PortState(port, PortMode.TRUNK, tuple(vlans))


def access(port: str, vlan: int) -> PortState:
    return PortState(port, PortMode.ACCESS, (vlan,))


def home_world(defs: Any) -> Observed:  # type: ignore[no-untyped-def]
    """What the lab looks like after a reset: everything as defined."""
    ex = expected(defs, defs.homes(), set())
    ob = Observed()
    for p in ex.ports:
        ob.ports[(p.switch, p.port)] = access(p.port, 1) if p.role == "standby" else \
            PortState(p.port, p.intent.mode, p.intent.vlans)  # type: ignore[union-attr]
    for a in ex.access:
        ob.access[(a.storage, a.target)] = TargetAccess((a.initiator,), (a.chap_user,))
    for b in ex.boot:
        ob.boot[b.server] = None if b.persona is None else IscsiBoot(b.initiator, b.target, b.lun, b.portal_host,
                                                                    b.portal_port, b.chap_user, "")
    for w in ex.power:
        ob.power[w.server] = PowerState.ON
    for f in ex.facts:
        ob.facts[f.server] = HardwareFacts(f.model, f.cores, f.memory_gb, None)
    return ob


def change(ob: Observed, what: str, defs: Any) -> Observed:  # type: ignore[no-untyped-def]
    boot = ob.boot["r720-1"]
    assert boot is not None
    edits: dict[str, Any] = {
        "vlan removed": lambda: ob.ports.__setitem__(("sw1", "1/g4"), trunk("1/g4", 200)),
        "port now access": lambda: ob.ports.__setitem__(("sw1", "1/g1"), access("1/g1", 4004)),
        "standby carries SCN": lambda: ob.ports.__setitem__(("sw1", "1/g5"), trunk("1/g5", 4004)),
        "second initiator": lambda: ob.access.__setitem__(("array1", X1_BOOT),
                                                          TargetAccess((X1, "iqn.2026-01.evil:x"), ("aimctl-exchange1",))),
        "ACL emptied": lambda: ob.access.__setitem__(("array1", X1_BOOT), TargetAccess((), ("aimctl-exchange1",))),
        "extra CHAP account": lambda: ob.access.__setitem__(("array1", X1_BOOT),
                                                            TargetAccess((X1,), ("aimctl-exchange1", "old"))),
        "target gone": lambda: ob.access.__setitem__(("array1", X1_BOOT), None),
        "boot CHAP user": lambda: ob.boot.__setitem__("r720-1", IscsiBoot(boot.initiator, boot.target, boot.lun,
                                                                          boot.portal_host, boot.portal_port, "x", "")),
        "boot cleared": lambda: ob.boot.__setitem__("r720-1", None),
        "standby holds identity": lambda: ob.boot.__setitem__("r720-3", boot),
        "active off": lambda: ob.power.__setitem__("r720-1", PowerState.OFF),
        "power unknown": lambda: ob.power.__setitem__("r720-1", PowerState.UNKNOWN),
        "less memory": lambda: ob.facts.__setitem__("r720-3", HardwareFacts("PowerEdge R720", 16, 176, None)),
        "other model": lambda: ob.facts.__setitem__("r720-3", HardwareFacts("PowerEdge R630", None, None, None)),
        "ipmi knows only the model": lambda: ob.facts.__setitem__("r620-3", HardwareFacts("PowerEdge R620")),
        "switch unread": lambda: [ob.ports.pop(k) for k in list(ob.ports) if k[0] == "sw1"],
        "nothing": lambda: None,
    }
    edits[what]()
    return ob


# (change, expected finding kinds by key)
VERDICTS: list[tuple[str, dict[str, str]]] = [
    ("nothing", {}),
    ("vlan removed", {"ports:sw1:1/g4": "ports"}),
    ("port now access", {"ports:sw1:1/g1": "ports"}),
    ("standby carries SCN", {"ports:sw1:1/g5": "standby-ports"}),
    ("second initiator", {f"storage:array1:{X1_BOOT}": "acl"}),
    ("ACL emptied", {f"storage:array1:{X1_BOOT}": "acl"}),
    ("extra CHAP account", {f"storage:array1:{X1_BOOT}:chap": "chap"}),
    ("target gone", {f"storage:array1:{X1_BOOT}": "acl"}),
    ("boot CHAP user", {"boot:r720-1": "bootcfg"}),
    ("boot cleared", {"boot:r720-1": "bootcfg"}),
    ("standby holds identity", {"boot:r720-3": "bootcfg"}),
    ("active off", {"power:r720-1": "power"}),
    ("power unknown", {}),
    ("less memory", {"facts:r720-3": "hardware"}),
    ("other model", {"facts:r720-3": "hardware"}),
    ("ipmi knows only the model", {}),
    ("switch unread", {}),
]


@pytest.mark.parametrize(("what", "want"), VERDICTS, ids=[v[0] for v in VERDICTS])
def test_drift_verdict_table(defs, what: str, want: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    ex = expected(defs, defs.homes(), set())
    got, checked = findings(ex, change(home_world(defs), what, defs))
    assert {f.key: f.kind for f in got} == want
    if what == "switch unread":
        assert "ports:sw1:1/g1" not in checked  # unknown is not "fixed"
    if what == "power unknown":
        assert "power:r720-1" not in checked
    for f in got:
        assert f.what and "\n" not in f.what


def test_finding_sentences(defs) -> None:  # type: ignore[no-untyped-def]
    ex = expected(defs, defs.homes(), set())
    got, _ = findings(ex, change(home_world(defs), "second initiator", defs))
    assert got[0].what == (f"target {X1_BOOT} on array1 (exchange1) lets in iqn.2026-01.evil:x besides {X1}: never "
                           "repaired automatically, it may be an attack")
    got, _ = findings(ex, change(home_world(defs), "vlan removed", defs))
    assert got[0].what == ("sw1 port 1/g4 (r720-2 channel 3, exchange2) carries trunk vlan 200, expected trunk vlan "
                           "100,200")
    got, _ = findings(ex, change(home_world(defs), "less memory", defs))
    assert got[0].what == "r720-3 reports 176 GB memory (declared 192 GB): not counted as a qualified standby"
    assert unqualified(got) == {"r720-3": got[0].what}


def f(key: str, kind: str, persona: str | None, server: str | None, device: str = "sw1") -> Finding:
    return Finding(key, kind, persona, server, device, f"{kind} differs", "a", "b")


def test_repairs_only_what_the_pool_allows(defs) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    pool = defs.pools["exchange"]
    allow = pool.model_copy(update={"drift": pool.drift.model_copy(update={"repair": ["ports", "quarantine"]})})
    d2 = replace(defs, pools={**defs.pools, "exchange": allow})
    found = [f("ports:sw1:1/g4", "ports", "exchange2", "r720-2"), f("ports:sw2:1/g4", "ports", "exchange2", "r720-2",
                                                                     "sw2"),
             f(f"storage:array1:{X1_BOOT}", "acl", "exchange1", None, "array1"),
             f("ports:sw1:1/g1", "ports", "exchange1", "r720-1"),
             f("ports:sw3:GigabitEthernet0/1", "ports", "web1", "r620-1", "sw3"),  # web allows nothing
             f("facts:r720-3", "hardware", None, "r720-3", "r720-3")]
    reqs = repair_requests(d2, found, busy={"exchange1"})
    assert [(r.persona, r.server, r.ports) for r in reqs] == [("exchange2", "r720-2", (("sw1", "1/g4"), ("sw2", "1/g4")))]
    assert repair_requests(defs, found, busy=set()) == []  # the reference pools repair nothing


# (case, assignment changes, quarantined, unusable, k exchange, uncovered)
SPARES: list[tuple[str, dict[str, str], set[str], dict[str, str], int, list[str]]] = [
    ("reference", {}, set(), {}, 1, []),
    ("standby unqualified", {}, set(), {"r720-3": "hardware does not match"}, 0, ["exchange1", "exchange2"]),
    ("after a failover", {"exchange1": "r720-3"}, {"r720-1"}, {}, 0, ["exchange1", "exchange2"]),
    ("cleared after a failover", {"exchange1": "r720-3"}, set(), {}, 1, []),
    ("suspect standby", {}, set(), {"r720-3": "suspect: BMC health Warning"}, 0, ["exchange1", "exchange2"]),
    ("an active's trouble is not a spare's", {}, set(), {"r720-1": "suspect"}, 1, []),
]


@pytest.mark.parametrize(("case", "moved", "quarantined", "unusable", "k", "uncovered"), SPARES,
                         ids=[s[0] for s in SPARES])
def test_spares_table(defs, case: str, moved: dict[str, str], quarantined: set[str],  # type: ignore[no-untyped-def]
                      unusable: dict[str, str], k: int, uncovered: list[str]) -> None:
    sp = spares(defs, "exchange", {**defs.homes(), **moved}, quarantined, unusable)
    assert sp.k == k and sp.uncovered == uncovered
    for s in unusable:
        if s in sp.excluded:
            assert unusable[s] in sp.sentence


def test_findings_in_the_journal(tmp_path: Path) -> None:
    clock = [1000.0]
    j = Journal(tmp_path / "j.db", clock=lambda: clock[0])
    a, b = f("ports:sw1:1/g4", "ports", "exchange2", "r720-2"), f("facts:r720-3", "hardware", None, "r720-3")
    new, resolved = j.sync_findings([a, b], {a.key, b.key})
    assert [x.key for x in new] == [a.key, b.key] and resolved == []
    j.mark_alerted([a.key, b.key])
    clock[0] = 1005.0
    new, resolved = j.sync_findings([a], {a.key})  # b's device was not read: b stays open
    assert new == [] and resolved == []
    got = {x.key: x for x in j.findings()}
    assert got[a.key].since == 1000.0 and got[a.key].seen == 1005.0 and got[a.key].alerted
    clock[0] = 1010.0
    new, resolved = j.sync_findings([], {a.key, b.key})
    assert {x.key for x in resolved} == {a.key, b.key} and j.findings() == []
    clock[0] = 1020.0
    new, _ = j.sync_findings([a], {a.key})  # it came back: a new occurrence, to be alerted again
    assert new[0].since == 1020.0 and not new[0].alerted
    assert len(j.findings(include_resolved=True)) == 2


def test_bad_pool_policy_is_refused_naming_file_line_and_field(defs_copy: Path) -> None:
    from aimctl.errors import DefinitionError

    line = len((defs_copy / "exchange.yaml").read_text().splitlines()) + 1
    with open(defs_copy / "exchange.yaml", "a") as fh:
        fh.write('preempt: {action: moev, window: {start: "25:00", end: "04:00", zone: Mars/Olympus}}\n'
                 "drift: {repair: [acl]}\n")
    with pytest.raises(DefinitionError) as e:
        load(defs_copy, use_cache=False)
    text = "\n".join(e.value.problems)
    assert f"exchange.yaml:{line}:11: preempt.action: Input should be 'alert' or 'move'" in text
    assert "preempt.window.start: not a time of day: '25:00' (write HH:MM, 00:00 to 23:59)" in text
    assert "preempt.window.zone: unknown time zone 'Mars/Olympus'" in text
    assert "drift.repair.0: Input should be 'ports', 'quarantine' or 'bootcfg'" in text  # never acl


def test_journal_v1_migrates_to_repair_operations(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    db = sqlite3.connect(path, isolation_level=None)
    for stmt in MIGRATIONS[0]:
        db.execute(stmt)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO operations VALUES ('fo-1', 'failover', 'exchange1', 'r720-1', NULL, 'done', 'ok', 1, 1,"
               " ?)", (json.dumps({"to": "r720-3"}),))
    db.execute("INSERT INTO records(op_id, seq, step, phase, status, detail, time) VALUES ('fo-1', 1, 'confirm',"
               " 'intent', NULL, '{}', 1)")
    db.close()
    j = Journal(path)
    assert j.operation("fo-1").facts == {"to": "r720-3"} and len(j.records("fo-1")) == 1
    op = j.open_operation("repair", "exchange2", {"subject": "exchange2"})
    assert op.startswith("rp-") and j.operation(op).kind == "repair"
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys hold again after the migration
        j.intent("nope", "confirm")
