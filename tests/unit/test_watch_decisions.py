"""The watchful controller's decisions as tables: escalation limit, rack events and limits, suspect
verdicts, change windows and the pre-emptive move decision (all pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aimctl.detect.escalation import PastFailover, escalation
from aimctl.detect.racks import Death, rack_allows, rack_events
from aimctl.detect.suspect import (
    Signals,
    SuspectVerdict,
    in_window,
    load_table,
    match,
    next_opening,
    parse_table,
    preempt_decision,
    suspect_verdict,
)
from aimctl.drivers.protocols import LogEntry
from aimctl.errors import OperatorError
from aimctl.model import ChangeWindow, Escalation, Preempt

NOW = 1_800_000_000.0


def past(n: int, ago: float, state: str = "done") -> PastFailover:
    return PastFailover(f"fo-{n}", NOW - ago, f"s{n}", f"s{n + 1}", state)


# (case, earlier automatic failovers, limit, allowed)
ESCALATION = [
    ("first death", [], Escalation(), True),
    ("second within the hour", [past(1, 600)], Escalation(), True),
    ("third within the hour is stopped", [past(1, 1800), past(2, 300)], Escalation(), False),
    ("old ones fall out of the window", [past(1, 7200), past(2, 5000)], Escalation(), True),
    ("one old, one recent", [past(1, 7200), past(2, 60)], Escalation(), True),
    ("a limit of one", [past(1, 60)], Escalation(max_failovers=1), False),
    ("needs-operator ones count too", [past(1, 60, "needs-operator"), past(2, 30, "failed")], Escalation(), False),
    ("a short window", [past(1, 120), past(2, 90)], Escalation(window="60s"), True),
    ("stops that landed nowhere do not count",
     [past(1, 600), PastFailover("fo-2", NOW - 300, "s2", None, "needs-operator"),
      PastFailover("fo-3", NOW - 200, "s2", None, "aborted")], Escalation(), True),
]


@pytest.mark.parametrize(("case", "history", "limit", "allowed"), ESCALATION, ids=[c[0] for c in ESCALATION])
def test_escalation_table(case: str, history: list[PastFailover], limit: Escalation, allowed: bool) -> None:
    v = escalation("exchange1", history, NOW, limit)
    assert v.allowed is allowed, v.sentence
    if not allowed:
        assert v.sentence.startswith("not failed over: exchange1 already had")
        for p in v.history:
            assert p.op_id in v.sentence  # the history of the earlier ones, by id


@given(st.lists(st.floats(min_value=0, max_value=10_000), max_size=8), st.integers(min_value=1, max_value=5))
def test_escalation_never_allows_more_than_the_limit_in_the_window(agos: list[float], limit: int) -> None:
    hist = [past(i, a) for i, a in enumerate(agos)]
    v = escalation("p", hist, NOW, Escalation(max_failovers=limit, window="1h"))
    assert v.allowed == (sum(1 for a in agos if a <= 3600) < limit)


def death(p: str, s: str, rack: str | None, at: float, pdu: str | None = "pdu-a") -> Death:
    return Death(p, s, rack, pdu, at)


# (case, deaths, paged racks, racks expected to page)
RACKS = [
    ("one death is no rack event", [death("x1", "s1", "r1", 100)], {}, []),
    ("two in one rack", [death("x1", "s1", "r1", 100), death("x2", "s2", "r1", 101)], {}, ["r1"]),
    ("two in different racks", [death("x1", "s1", "r1", 100), death("x2", "s2", "r2", 101)], {}, []),
    ("too far apart", [death("x1", "s1", "r1", 10), death("x2", "s2", "r1", 101)], {}, []),
    ("already paged for this burst", [death("x1", "s1", "r1", 100), death("x2", "s2", "r1", 101)], {"r1": 100.5}, []),
    ("paged for an earlier burst", [death("x1", "s1", "r1", 100), death("x2", "s2", "r1", 101)], {"r1": 20}, ["r1"]),
    ("no rack declared", [death("x1", "s1", None, 100), death("x2", "s2", None, 101)], {}, []),
    ("one body twice is one body", [death("x1", "s1", "r1", 100), death("x2", "s1", "r1", 101)], {}, []),
]


@pytest.mark.parametrize(("case", "deaths", "paged", "want"), RACKS, ids=[c[0] for c in RACKS])
def test_rack_event_table(case: str, deaths: list[Death], paged: dict[str, float], want: list[str]) -> None:
    got = rack_events(deaths, now=110, window_s=60, threshold=2, paged=paged)
    assert [e.rack for e in got] == want
    for e in got:
        assert e.sentence.startswith(f"rack {e.rack}: 2 bodies died within")
        assert "likely power (PDU pdu-a) or the top-of-rack switch" in e.sentence


@pytest.mark.parametrize(("rack", "running", "limit", "allowed"), [
    (None, 5, 1, True), ("r1", 0, None, True), ("r1", 0, 1, True), ("r1", 1, 1, False), ("r1", 1, 2, True),
])
def test_rack_limit_table(rack: str | None, running: int, limit: int | None, allowed: bool) -> None:
    ok, why = rack_allows(rack, running, limit)
    assert ok is allowed
    if not ok:
        assert why.startswith("rack brake:")


def rf(message: str, sensor: str = "") -> LogEntry:
    return LogEntry("sel/1", message=message, sensor=sensor)


def ipmi(sensor: str, event_type: int, offset: int) -> LogEntry:
    return LogEntry("sel/2", message="x", sensor=sensor, event_type=event_type, offset=offset)


# (log entry, predictive event id or None)
EVENTS = [
    (rf("Correctable ECC memory error logging limit reached for DIMM A1."), "correctable-ecc-limit"),
    (rf("Correctable memory error rate exceeded for DIMM_B2."), "correctable-ecc-limit"),
    (rf("Power supply redundancy is lost."), "psu-redundancy-lost"),
    (rf("The PSU redundancy is lost."), "psu-redundancy-lost"),
    (rf("Fan 3 RPM is below the lower critical threshold."), "fan-failure"),
    (rf("Disk 0 in Backplane 1 is predicted to fail."), "predictive-disk-failure"),
    (rf("The chassis is closed."), None),
    (rf("Power supply redundancy is restored."), None),
    (ipmi("memory", 0x6F, 5), "correctable-ecc-limit"),
    (ipmi("memory", 0x6F, 0), None),  # correctable ECC, one error: not the limit
    (ipmi("power-supply", 0x0B, 1), "psu-redundancy-lost"),
    (ipmi("power-supply", 0x0B, 0), None),  # redundancy regained
    (ipmi("fan", 0x01, 2), "fan-failure"),
    (ipmi("drive-slot", 0x6F, 2), "predictive-disk-failure"),
    (ipmi("physical-security", 0x6F, 0), None),
]


@pytest.mark.parametrize(("entry", "want"), EVENTS, ids=[e.message if e.offset is None else
                                                         f"{e.sensor}-{e.event_type}-{e.offset}" for e, _ in EVENTS])
def test_predictive_event_table(entry: LogEntry, want: str | None) -> None:
    ev = match(entry, load_table())
    assert (ev.id if ev else None) == want


def test_event_table_problems_are_named() -> None:
    with pytest.raises(OperatorError, match="row 'x'"):
        parse_table({"x": {"ipmi": [{"sensor": "fan"}]}})
    with pytest.raises(OperatorError, match="want a mapping"):
        parse_table(["x"])


# (case, signals, policy, suspect, words in the sentence)
SUSPECT = [
    ("healthy", Signals("s1", "ok"), Preempt(), False, "shows no sign"),
    ("unknown health is not a sign", Signals("s1", "unknown"), Preempt(), False, "no sign"),
    ("warning", Signals("s1", "warning"), Preempt(), True, "BMC health Warning"),
    ("warning below a critical policy", Signals("s1", "warning"), Preempt(health="critical"), False, "no sign"),
    ("critical", Signals("s1", "critical"), Preempt(health="critical"), True, "BMC health Critical"),
    ("ECC limit logged", Signals("s1", "ok", (rf("Correctable ECC memory error logging limit reached."),)),
     Preempt(), True, "correctable ECC memory error logging limit reached"),
    ("an event the pool does not watch", Signals("s1", "ok", (rf("Fan 1 RPM is below the lower critical threshold."),)),
     Preempt(events=["correctable-ecc-limit"]), False, "no sign"),
    ("noise in the log", Signals("s1", "ok", (rf("The chassis is closed."),)), Preempt(), False, "no sign"),
    ("three flaps in the window", Signals("s1", "ok", link_downs={3: (95.0, 97.0, 99.0)}), Preempt(), True,
     "3 linkDown traps on channel 3 in 300s"),
    ("two flaps are not enough", Signals("s1", "ok", link_downs={3: (97.0, 99.0)}), Preempt(), False, "no sign"),
    ("old flaps fall out", Signals("s1", "ok", link_downs={3: (-500.0, -400.0, 99.0)}), Preempt(), False, "no sign"),
    ("power off: one linkDown on every port is no flap",
     Signals("s1", "ok", link_downs={1: (99.0,), 2: (99.0,), 3: (99.0,), 4: (99.0,)}), Preempt(), False, "no sign"),
    ("the worst port counts", Signals("s1", "ok", link_downs={1: (99.0,), 4: (90.0, 95.0, 99.0)}), Preempt(), True,
     "on channel 4"),
    ("three power cycles (fence, failback, fence) are no flaps",
     Signals("s1", "ok", link_downs={1: (40.0, 70.0, 99.0), 2: (40.5, 70.2, 99.1), 3: (41.0, 69.9, 98.8),
                                     4: (40.1, 70.0, 99.3)}, channels=4), Preempt(), False, "no sign"),
    ("one port flapping between power cycles still counts",
     Signals("s1", "ok", link_downs={1: (40.0, 99.0), 2: (40.5, 50.0, 60.0, 80.0, 99.1), 3: (41.0, 98.8),
                                     4: (40.1, 99.3)}, channels=4), Preempt(), True, "3 linkDown traps on channel 2"),
    ("a port cabled but never down: its downs elsewhere are flaps",
     Signals("s1", "ok", link_downs={1: (40.0, 70.0, 99.0), 2: (40.5, 70.2, 99.1)}, channels=3), Preempt(), True,
     "3 linkDown traps on channel 1"),
    ("one cabled port: every down counts",
     Signals("s1", "ok", link_downs={1: (40.0, 70.0, 99.0)}, channels=1), Preempt(), True, "on channel 1"),
]


@pytest.mark.parametrize(("case", "sig", "policy", "suspect", "words"), SUSPECT, ids=[c[0] for c in SUSPECT])
def test_suspect_table(case: str, sig: Signals, policy: Preempt, suspect: bool, words: str) -> None:
    v = suspect_verdict(sig, policy, load_table(), now=100.0)
    assert v.suspect is suspect
    assert words in v.sentence


NIGHT = ChangeWindow(days=["sat", "sun"], start="22:00", end="04:00", zone="UTC")
OFFICE = ChangeWindow(days=["mon", "tue", "wed", "thu", "fri"], start="09:00", end="17:00", zone="Europe/Berlin")


def at(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


# 2026-11-28 is a Saturday
WINDOWS = [
    (NIGHT, "2026-11-28T23:00", True),
    (NIGHT, "2026-11-29T03:59", True),  # Saturday's window runs into Sunday
    (NIGHT, "2026-11-30T03:00", True),  # Sunday's window runs into Monday
    (NIGHT, "2026-12-01T03:00", False),  # no Monday window
    (NIGHT, "2026-11-28T21:59", False),
    (NIGHT, "2026-11-29T04:00", False),
    (OFFICE, "2026-11-30T08:30", True),  # 09:30 in Berlin
    (OFFICE, "2026-11-30T07:59", False),
    (OFFICE, "2026-11-28T10:00", False),  # Saturday
]


@pytest.mark.parametrize(("w", "when", "inside"), WINDOWS, ids=[f"{w.start}-{w.end}@{t}" for w, t, _ in WINDOWS])
def test_change_window_table(w: ChangeWindow, when: str, inside: bool) -> None:
    assert in_window(w, at(when)) is inside


def test_next_opening() -> None:
    assert next_opening(NIGHT, at("2026-12-01T12:00")).isoformat() == "2026-12-05T22:00:00+00:00"
    assert next_opening(OFFICE, at("2026-11-28T10:00")).isoformat() == "2026-11-30T09:00:00+01:00"


SUS = SuspectVerdict(True, ("BMC health Warning",), "r720-1 is suspect: BMC health Warning")
OK = SuspectVerdict(False, (), "r720-1 shows no sign of failing")

# (case, persona, verdict, policy, busy, has standby, when, action)
PREEMPT = [
    ("nothing wrong", "x1", OK, Preempt(action="move"), False, True, "2026-11-28T23:00", "none"),
    ("alert policy", "x1", SUS, Preempt(), False, True, "2026-11-28T23:00", "alert"),
    ("a suspect standby", None, SUS, Preempt(action="move"), False, True, "2026-11-28T23:00", "alert"),
    ("move", "x1", SUS, Preempt(action="move"), False, True, "2026-11-28T23:00", "move"),
    ("move, busy", "x1", SUS, Preempt(action="move"), True, True, "2026-11-28T23:00", "alert"),
    ("move, no standby", "x1", SUS, Preempt(action="move"), False, False, "2026-11-28T23:00", "alert"),
    ("move inside the window", "x1", SUS, Preempt(action="move", window=NIGHT), False, True, "2026-11-28T23:00",
     "move"),
    ("move outside the window", "x1", SUS, Preempt(action="move", window=NIGHT), False, True, "2026-12-01T12:00",
     "wait-window"),
]


@pytest.mark.parametrize(("case", "persona", "verdict", "policy", "busy", "standby", "when", "action"), PREEMPT,
                         ids=[c[0] for c in PREEMPT])
def test_preempt_table(case: str, persona: str | None, verdict: SuspectVerdict, policy: Preempt, busy: bool,
                       standby: bool, when: str, action: str) -> None:
    d = preempt_decision(persona, "r720-1", verdict, policy, busy, standby, at(when))
    assert d.action == action
    assert d.sentence.startswith(verdict.sentence)
    if action == "wait-window":
        assert "waits for the change window (Sat 22:00 UTC)" in d.sentence


def test_move_through_an_approved_change_says_so() -> None:
    d = preempt_decision("x1", "r720-1", SUS, Preempt(action="move", change_approval=True), False, True,
                         at("2026-11-28T23:00"))
    assert d.sentence.endswith("planned move of x1 off r720-1 through a change record that must be approved")
