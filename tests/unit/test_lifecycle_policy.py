"""The lifecycle's decisions (``aimctl.lifecycle.policy``) as tables, and the definitions' lifecycle
rules: every bad value is one positioned line, nothing else."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aimctl.drivers import snapnames
from aimctl.drivers.protocols import PortMode, PortState, Snapshot
from aimctl.errors import OperatorError
from aimctl.lifecycle import policy as P
from aimctl.loader import load
from aimctl.model import ArchivePolicy, RehearsalPolicy
from tests.conftest import DEFINITIONS
from tests.unit.test_loader import edit, problems

BOOT, DB = ("iqn.2026-01.lab.storage:exchange1-boot", 1), ("iqn.2026-01.lab.storage:exchange1-db", 1)
H = 3600.0
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def snap(label: str, t: float, lun: tuple[str, int]) -> Snapshot:
    n = snapnames.name_of(snapnames.set_id(label, t), *lun)
    return Snapshot(n.id, n.set, n.label, n.target, n.lun, n.created, 4096)


def sets(*times: float, incomplete: tuple[float, ...] = ()) -> list[P.ArchiveSet]:
    snaps = [s for t in times for s in (snap("exchange1", t, BOOT), snap("exchange1", t, DB))]
    snaps += [snap("exchange1", t, BOOT) for t in incomplete] + [snap("exchange2", T0, BOOT)]
    return P.archive_sets(snaps, "exchange1", [BOOT, DB])


# ---------------------------------------------------------------------------- archives


def test_sets_group_by_freeze_and_know_when_complete() -> None:
    got = sets(T0, T0 + H, incomplete=(T0 + 2 * H,))
    assert [(round(s.created - T0), s.complete, len(s.snapshots)) for s in got] == [(0, True, 2), (3600, True, 2),
                                                                                    (7200, False, 1)]
    assert got[0].of(*DB) is not None and got[2].of(*DB) is None


@pytest.mark.parametrize("at, want", [
    ("latest", T0 + 2 * H),
    ("2027-01-15T09:30:00Z", T0 + H),  # between two: the one before
    ("2027-01-15T09:00:00Z", T0 + H),  # exactly at one
    ("2027-01-15 10:30", T0 + 2 * H),  # a space for T, no zone: UTC
    ("2027-01-15T11:00:00+01:00", T0 + 2 * H),
    (snapnames.set_id("exchange1", T0), T0),
])
def test_pick_archive(at: str, want: float) -> None:
    assert P.pick_archive(sets(T0, T0 + H, T0 + 2 * H, incomplete=(T0 + 3 * H,)), "exchange1", at).created == want


@pytest.mark.parametrize("at, message", [
    ("2027-01-15T07:59:59Z", "no archive at or before 2027-01-15T07:59:59.000Z (the oldest is exchange1+20270115T080000000Z"),
    ("exchange1+20270115T090000000Z", "has no archive exchange1+20270115T090000000Z"),
    ("yesterday", "not an archive id nor a time"),
])
def test_pick_archive_refuses_clearly(at: str, message: str) -> None:
    with pytest.raises(P.NoArchive) as err:
        P.pick_archive(sets(T0, incomplete=(T0 + 3 * H,)), "exchange1", at)
    assert message in str(err.value)


def test_no_archive_at_all() -> None:
    with pytest.raises(P.NoArchive, match="no archive yet"):
        P.pick_archive(sets(incomplete=(T0,)), "exchange1", "latest")


def test_expired_keeps_the_window_the_newest_and_the_current() -> None:
    policy = ArchivePolicy(every="24h", keep="72h")
    got = sets(T0, T0 + 24 * H, T0 + 48 * H, T0 + 96 * H, incomplete=(T0 + 97 * H, T0 + 98 * H))
    now = T0 + 100 * H
    current = snapnames.set_id("exchange1", T0 + 98 * H)
    gone = [round((s.created - T0) / H) for s in P.expired(got, now, policy, keep_ids=[current])]
    assert gone == [0, 24, 97]  # older than 72 h, and a copy cut short that is not the running one


@given(st.lists(st.floats(min_value=0, max_value=1000 * H), min_size=1, max_size=12), st.floats(min_value=0, max_value=2000 * H))
def test_expired_never_lets_the_newest_archive_go(ages: list[float], later: float) -> None:
    got = sets(*[T0 + round(a) for a in ages])
    newest = max(s.created for s in got)
    assert all(s.created != newest for s in P.expired(got, newest + later, ArchivePolicy(keep="1s")))


@pytest.mark.parametrize("last, now, every, due", [
    (None, T0, "24h", True), (T0, T0 + 23 * H, "24h", False), (T0, T0 + 24 * H, "24h", True), (None, T0, None, False),
])
def test_archive_due(last: float | None, now: float, every: str | None, due: bool) -> None:
    assert P.archive_due(last, now, ArchivePolicy(every=every)) is due


@pytest.mark.parametrize("last_good, now, policy, stale", [
    (None, T0, {"every": "7d", "vlan": 3999}, "never rehearsed"),
    (T0, T0 + 13 * 24 * H, {"every": "7d", "vlan": 3999}, None),  # default limit: twice `every`
    (T0, T0 + 15 * 24 * H, {"every": "7d", "vlan": 3999}, "older than 14d"),
    (T0, T0 + 2 * H, {"stale_after": "1h", "vlan": 3999}, "older than 1h"),
    (None, T0, {"vlan": 3999}, None),  # no schedule, no limit: nothing is stale
])
def test_rehearsal_stale(last_good: float | None, now: float, policy: dict[str, object], stale: str | None) -> None:
    got = P.rehearsal_stale(last_good, now, RehearsalPolicy.model_validate(policy))
    assert (got is None) if stale is None else (got is not None and stale in got)


def test_rehearsal_is_due_only_with_a_vlan() -> None:
    assert P.rehearsal_due(None, T0, RehearsalPolicy(every="7d", vlan=3999))
    assert not P.rehearsal_due(None, T0, RehearsalPolicy(every="7d"))
    assert not P.rehearsal_due(T0, T0 + H, RehearsalPolicy(every="7d", vlan=3999))


# ---------------------------------------------------------------------------- pre-emption


POOLS = {"exchange1": "exchange", "exchange2": "exchange", "web1": "web"}
OPS = [("ar-1", "archive", "exchange1"), ("rh-1", "rehearsal", "exchange2"), ("rh-2", "rehearsal", "web1"),
       ("fo-1", "failover", "exchange2"), ("ar-2", "archive", "exchange2")]


@pytest.mark.parametrize("persona, kind, victims", [
    ("exchange1", "failover", ["ar-1", "rh-1"]),  # its own archive, and every rehearsal of its pool
    ("exchange1", "restore", ["ar-1"]),  # a restore needs no standby: its own background work only
    ("exchange2", "failback", ["rh-1", "ar-2"]),
    ("web1", "move", ["rh-2"]),
    ("exchange1", "archive", ["ar-1"]),
])
def test_in_the_way(persona: str, kind: str, victims: list[str]) -> None:
    assert P.in_the_way(OPS, persona, kind, POOLS) == victims


# ---------------------------------------------------------------------------- rehearsal


def test_rehearsal_ports_are_isolated_and_put_back_as_captured() -> None:
    defs = load(DEFINITIONS, use_cache=False)
    intents = P.rehearsal_intents(defs, "r720-3", 3999)
    assert {sw: [(i.port, i.mode, i.vlans) for i in x] for sw, x in intents.items()} == {
        "sw1": [("1/g5", PortMode.ACCESS, (3999,)), ("1/g6", PortMode.ACCESS, (3999,))],
        "sw2": [("1/g5", PortMode.ACCESS, (3999,)), ("1/g6", PortMode.ACCESS, (3999,))]}
    before = {"sw1": [PortState("1/g5", PortMode.TRUNK, (100, 4004), 7), PortState("1/g6", PortMode.ACCESS, (1,))],
              "sw2": [PortState("1/g5", None, ())]}
    back = P.put_back(P.captured(before))
    assert [(i.port, i.mode, i.vlans, i.native_vlan) for i in back["sw1"]] == [
        ("1/g5", PortMode.TRUNK, (100, 4004), 7), ("1/g6", PortMode.ACCESS, (1,), None)]
    assert [(i.mode, i.vlans) for i in back["sw2"]] == [(PortMode.ACCESS, (1,))]  # unknown mode: the default


def test_rehearsal_names() -> None:
    assert P.rehearsal_target("iqn.2026-01.lab.storage:exchange1-boot") == "iqn.2026-01.lab.storage:exchange1-boot-rehearsal"
    assert P.rehearsal_initiator("iqn.1991-05.com.microsoft:exchange1") == "iqn.1991-05.com.microsoft:exchange1-rehearsal"
    assert P.rehearsal_chap_user("exchange1") == "aimctl-exchange1-rehearsal"


# ---------------------------------------------------------------------------- gold-image personas


def test_a_new_persona_is_named_and_addressed_after_its_pool() -> None:
    defs = load(DEFINITIONS, use_cache=False)
    new = P.new_persona(defs, "exchange3", "exchange", None, None, None, ["r720-3"])
    assert (new.initiator, new.target, new.lun, new.home, new.storage) == (
        "iqn.1991-05.com.microsoft:exchange3", "iqn.2026-01.lab.storage:exchange3-boot", 1, "r720-3", "array1")
    assert new.addresses == {"mapi": "10.1.0.13", "replication": "10.2.0.13", "scn": "10.40.4.13"}


@pytest.mark.parametrize("name, pool, extra, message", [
    ("exchange2", "exchange", {}, "already exists"),
    ("Exchange3", "exchange", {}, "refused"),
    ("exchange3", "mail", {}, "unknown pool"),
    ("exchange3", "exchange", {"initiator": "iqn.1991-05.com.microsoft:exchange1"}, "already persona exchange1's"),
    ("exchange3", "exchange", {"target": "iqn.2026-01.lab.storage:exchange2-db"}, "already persona exchange2's"),
    ("exchange3", "exchange", {"initiator": "iqn.1991-05.com.microsoft:x-rehearsal"}, "reserved for rehearsals"),
    ("exchange3", "exchange", {"home": "r620-1"}, "not a member of pool exchange"),
    ("exchange3", "exchange", {"target": "not an iqn"}, "not an iSCSI qualified name"),
])
def test_a_new_persona_is_refused_clearly(name: str, pool: str, extra: dict[str, str], message: str) -> None:
    defs = load(DEFINITIONS, use_cache=False)
    args = {"home": None, "initiator": None, "target": None, **extra}
    with pytest.raises(OperatorError, match=message):
        P.new_persona(defs, name, pool, args["home"], args["initiator"], args["target"], ["r720-3"])


def test_next_address_and_renamed() -> None:
    net = ipaddress.ip_network("10.1.0.0/24")
    assert str(P.next_address(net, [ipaddress.ip_address("10.1.0.11"), ipaddress.ip_address("10.9.0.99")])) == "10.1.0.12"
    assert str(P.next_address(net, [])) == "10.1.0.10"
    with pytest.raises(OperatorError, match="no free address"):
        P.next_address(net, [ipaddress.ip_address("10.1.0.254")])
    assert P.renamed("iqn.2026-01.lab.storage:web1-boot", "web1", "web3") == "iqn.2026-01.lab.storage:web3-boot"
    assert P.renamed("iqn.2026-01.lab.web1:web1", "web1", "web3") is None  # twice: ambiguous


# ---------------------------------------------------------------------------- definitions


@pytest.fixture
def defs(tmp_path: Path) -> Path:
    dst = tmp_path / "personas"
    shutil.copytree(DEFINITIONS, dst)
    return dst


@pytest.mark.parametrize("old, new, path, message", [
    ("rehearsal: {vlan: 3999}", "rehearsal: {vlan: 100}", "rehearsal.vlan",
     "rehearsal VLAN 100 is network mapi of pool exchange"),
    ("rehearsal: {vlan: 3999}", "rehearsal: {vlan: 998}", "rehearsal.vlan", "the quarantine VLAN of pool web"),
    ("rehearsal: {vlan: 3999}", "rehearsal: {vlan: 4005}", "rehearsal.vlan", "network scn of pool web"),
    ("rehearsal: {vlan: 3999}", "rehearsal: {every: 7d}", "rehearsal", "need an isolated VLAN"),
    ("rehearsal: {vlan: 3999}", "rehearsal: {vlan: 3999, on: [r620-4]}", "rehearsal.on.0", "not a member"),
    ("archives: {keep: 72h}", "archives: {keep: 0s}", "archives.keep", "greater than 0"),
    ("initiator: iqn.1991-05.com.microsoft:exchange2", "initiator: iqn.1991-05.com.microsoft:exchange2-rehearsal",
     "personas.exchange2.initiator", "reserved for rehearsals"),
])
def test_lifecycle_definitions_are_refused_with_file_line_and_field(defs: Path, old: str, new: str, path: str,
                                                                   message: str) -> None:
    edit(defs / "exchange.yaml", old, new)
    got = problems(defs)
    assert len(got) == 1, got
    assert "exchange.yaml:" in got[0] and f": {path}: " in got[0] and message in got[0], got[0]


DNS = """      - {hook: dns-update, point: post-boot, server: ns1.example.com, zone: example.com, key_name: aimctl,
         credentials: SECRET, records: [{name: mail, type: A, ttl: 5m, value: VALUE}]}
"""


@pytest.mark.parametrize("secret, value, path, message", [
    ("c2VjcmV0IGtleQ==", "'{address:mapi}'", "personas.exchange1.recovery.1.credentials", "inline secret"),
    ("env:AIMCTL_TSIG", "'{address:storage}'", "personas.exchange1.recovery.1.records.0",
     "no address on network 'storage'"),
    ("env:AIMCTL_TSIG", "'10.1.0.300'", "personas.exchange1.recovery.1.records.0", "not an IP address"),
    ("env:AIMCTL_TSIG", "'{site}'", "personas.exchange1.recovery.1.records.0", "unknown placeholder"),
])
def test_dns_hook_definitions(defs: Path, secret: str, value: str, path: str, message: str) -> None:
    edit(defs / "exchange.yaml", "         timeout: 20m, retries: 1}\n",
         "         timeout: 20m, retries: 1}\n" + DNS.replace("SECRET", secret).replace("VALUE", value))
    got = problems(defs)
    assert len(got) == 1 and f": {path}: " in got[0] and message in got[0], got


def test_a_good_dns_hook_loads(defs: Path) -> None:
    edit(defs / "exchange.yaml", "         timeout: 20m, retries: 1}\n",
         "         timeout: 20m, retries: 1}\n" + DNS.replace("SECRET", "env:AIMCTL_TSIG").replace("VALUE", "'{address:mapi}'"))
    hook = load(defs, use_cache=False).personas["exchange1"].spec.recovery[1]
    assert hook.hook == "dns-update" and hook.records[0].ttl == 300.0
