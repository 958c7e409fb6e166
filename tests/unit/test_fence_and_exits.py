"""The one fence's verdict, the operator's exits and the request check: pure decisions as tables;
plus the fence's "not dead after all" stop and the journal's one-transaction abandon."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aimctl.drivers.protocols import PortMode, PortState
from aimctl.errors import OperatorError
from aimctl.failover.context import Settings
from aimctl.failover.fence import FenceSeen, fence_body, fence_verdict
from aimctl.failover.planner import check_request
from aimctl.failover.ports import PortSeen, ports_report
from aimctl.failover.resolve import (
    KEEP,
    NONE,
    abandon_plan,
    fence_targets,
    mark_fenced_refusal,
    retry_refusal,
)
from aimctl.failover.runner import Aborted, NeedsOperator
from aimctl.journal import Journal, Operation, Record, ServerMark, persona_lease, server_lease
from aimctl.loader import load
from tests.conftest import DEFINITIONS

# ---------------------------------------------------------------------------- the verdict

S = "r720-1"


@pytest.mark.parametrize("seen, confirmed, words", [
    (FenceSeen(S, True, True, False), True, "storage fence proven, power-off read back"),
    (FenceSeen(S, True, True, True), True, "power-off read back"),
    (FenceSeen(S, True, False, True, power_note="BMC says On"), True,
     "ports read back in quarantine; power-off not read back (BMC says On)"),
    (FenceSeen(S, True, False, False, operator_out="ops(operator) at 03:12:00Z (pulled)", power_note="no answer",
               ports_note="sw2 hangs"), True,
     "ops(operator) at 03:12:00Z (pulled) recorded the body is out; power-off not read back (no answer); "
     "ports not quarantined (sw2 hangs)"),
    (FenceSeen(S, True, False, False, power_note="no answer", ports_note="sw2 hangs"), False,
     "fence of r720-1 not confirmed: power-off not read back (no answer) and ports not quarantined (sw2 hangs); "
     "nothing moved"),
    (FenceSeen(S, True, False, False, power_note="no answer"), False, "ports not quarantined (not tried)"),
    # The storage fence is never optional: not the power-off, not the ports, not an operator's word.
    (FenceSeen(S, False, True, True, storage_note="2 session(s) will not die"), False,
     "storage fence not proven (2 session(s) will not die); nothing moved"),
    (FenceSeen(S, False, False, False, operator_out="ops", storage_note="tgtadm failed"), False,
     "storage fence not proven (tgtadm failed)"),
])
def test_fence_verdict(seen: FenceSeen, confirmed: bool, words: str) -> None:
    v = fence_verdict(seen)
    assert v.confirmed is confirmed
    assert words in v.reason
    assert "\n" not in v.reason


def test_fence_verdict_needs_storage_and_one_more_proof() -> None:
    """Every combination: confirmed exactly when storage AND (power OR ports OR operator)."""
    for storage in (True, False):
        for power in (True, False):
            for ports in (True, False):
                for op in ("", "ops"):
                    v = fence_verdict(FenceSeen(S, storage, power, ports, operator_out=op))
                    assert v.confirmed == (storage and (power or ports or bool(op)))


# ---------------------------------------------------------------------------- not dead after all


class Touch:
    """Records any device call: the point is that none happens."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: self.calls.append(name) or self


def fence_ctx(alive: str | None, touch: Touch) -> Any:
    return SimpleNamespace(alive_evidence=lambda persona, server: alive, drivers=touch, chap=touch,
                           defs=touch, settings=Settings(), pool=ThreadPoolExecutor(2))


def op(state: str = "needs-operator", **facts: Any) -> Operation:
    return Operation("fo-1", "failover", "exchange1", "r720-1", None, state, "", 0.0, 0.0, dict(facts))


def test_a_body_alive_after_all_is_not_touched() -> None:
    touch = Touch()
    with pytest.raises(Aborted, match="not dead after all: BMC reads On, heartbeats 0.4s old; nothing was touched"):
        fence_body(fence_ctx("BMC reads On, heartbeats 0.4s old", touch), op("running"), "r720-1", key="k",
                   quarantine_now=False, check_alive=True, resumed=False)
    assert touch.calls == []


def test_alive_on_a_rerun_asks_an_operator() -> None:
    touch = Touch()
    with pytest.raises(NeedsOperator, match="may already have acted on r720-1"):
        fence_body(fence_ctx("fresh heartbeats", touch), op("running"), "r720-1", key="k",
                   quarantine_now=False, check_alive=True, resumed=True)
    assert touch.calls == []


# ---------------------------------------------------------------------------- what an operator reads


def ps(mode: PortMode | None, *vlans: int) -> PortState:
    return PortState("p", mode, tuple(vlans))


@pytest.mark.parametrize("seen, text", [
    (PortSeen("sw1", "1/g5", ps(PortMode.ACCESS, 1), ps(PortMode.ACCESS, 1)), "sw1 1/g5: access 1 (as before)"),
    (PortSeen("sw2", "1/g1", ps(PortMode.TRUNK, 4004), ps(PortMode.ACCESS, 999)),
     "sw2 1/g1: access 999 (CHANGED, was trunk 4004)"),
    (PortSeen("sw2", "1/g2", ps(PortMode.TRUNK, 100, 200), None),
     "sw2 1/g2: unknown (could not be read; was trunk 100,200)"),
    (PortSeen("sw3", "Gi0/1", ps(None, 5), ps(None, 5)), "sw3 Gi0/1: unknown mode 5 (as before)"),
])
def test_ports_report(seen: PortSeen, text: str) -> None:
    assert ports_report([seen]) == text


# ---------------------------------------------------------------------------- abandon, retry, mark-fenced


def rec(step: str, phase: str, status: str | None = None) -> Record:
    return Record("fo-1", 0, step, phase, status, {}, 0.0)


def ran(*steps: str, stopped: str | None = None) -> list[Record]:
    out = []
    for s in steps:
        out += [rec(s, "intent"), rec(s, "result", "ok")]
    if stopped:
        out += [rec(stopped, "intent"), rec(stopped, "result", "failed")]
    return out


BEFORE_FENCE = ran("confirm", "approve", stopped="choose")
AT_SWITCH = ran("confirm", "approve", "choose", "fence", "storage", "bootcfg", stopped="switch")
AT_FENCE = ran("confirm", "approve", "choose", stopped="fence")


@pytest.mark.parametrize("records, facts, persona_on, assign, change, quarantined, refusal", [
    # Nothing touched yet: the persona stays, nothing is marked.
    (BEFORE_FENCE, {}, KEEP, "r720-1", False, set(), ""),
    (BEFORE_FENCE, {}, NONE, None, True, set(), ""),
    # Its standby was chosen but the fence did not confirm: the standby cannot take the persona.
    (AT_FENCE, {"to": "r720-3"}, "r720-3", None, False, {}, "only once r720-1's fence is confirmed"),
    (AT_FENCE, {"to": "r720-3"}, KEEP, "r720-1", False, set(), ""),
    # Stopped in the switch step: the standby has the boot config and maybe ports: quarantined.
    (AT_SWITCH, {"to": "r720-3"}, KEEP, "r720-1", False, {"r720-3"}, ""),
    (AT_SWITCH, {"to": "r720-3"}, NONE, None, True, {"r720-1", "r720-3"}, ""),
    # The operator says the persona runs on the standby (the old body is fenced): the old body is marked.
    (AT_SWITCH, {"to": "r720-3"}, "r720-3", "r720-3", True, {"r720-1"}, ""),
    (AT_SWITCH, {"to": "r720-3"}, "r720-2", None, False, {}, "not a server of fo-1"),
])
def test_abandon_plan(records: list[Record], facts: dict[str, Any], persona_on: str, assign: str | None,
                      change: bool, quarantined: set[str], refusal: str) -> None:
    p = abandon_plan(op(**facts), records, "r720-1", persona_on)
    assert refusal in p.refusal and bool(p.refusal) == bool(refusal)
    if not refusal:
        assert (p.assign, p.change_assignment, set(p.quarantine)) == (assign, change, quarantined)


def test_only_waiting_operations_are_abandoned_or_retried() -> None:
    assert "only an operation waiting" in abandon_plan(op("running"), [], "r720-1", KEEP).refusal
    assert "only an operation waiting" in abandon_plan(op("done"), [], "r720-1", KEEP).refusal
    assert not abandon_plan(op("waiting-approval"), [], "r720-1", KEEP).refusal
    assert retry_refusal(op()) == ""
    assert "aimctl approve fo-1" in retry_refusal(op("waiting-approval"))
    assert "running" in retry_refusal(op("running"))


def test_mark_fenced_names_a_body_the_operation_fences() -> None:
    assert fence_targets(op(), AT_FENCE) == ["r720-1"]
    assert mark_fenced_refusal(op(), AT_FENCE, "r720-1") == ""
    assert "not a body fo-1 fences (it fences: r720-1)" in mark_fenced_refusal(op(to="r720-3"), AT_FENCE, "r720-3")
    # A standby whose own fence stopped the heartbeat step, and those given up before it.
    hb = ran("confirm", "approve", "choose", "fence", stopped="heartbeat")
    o = op(to="r620-3", failed_standbys=["r620-4"])
    assert fence_targets(o, hb) == ["r720-1", "r620-4", "r620-3"]
    assert "while an operation waits for an operator" in mark_fenced_refusal(op("running"), hb, "r720-1")


# ---------------------------------------------------------------------------- requests checked up front


@pytest.fixture(scope="module")
def defs() -> Any:
    return load(DEFINITIONS, use_cache=False)


@pytest.mark.parametrize("persona, to, quarantined, error", [
    ("exchange2", None, set(), ""),
    ("exchange2", "r720-3", set(), ""),
    ("nobody", None, set(), "unknown persona 'nobody'"),
    ("exchange2", "no-such-server", set(), "unknown server 'no-such-server' (pool exchange: r720-1, r720-2, r720-3)"),
    ("exchange2", "r620-4", set(), "not a member of pool exchange"),
    ("exchange2", "r720-2", set(), "exchange2 already runs on r720-2"),
    ("exchange2", "r720-1", set(), "runs persona exchange1"),
    ("exchange2", "r720-3", {"r720-3"}, "quarantined"),
    ("web2", "r620-4", set(), ""),
    ("web2", "r620-3", {"in-use"}, "cannot take web2: in use by fo-7"),
])
def test_check_request(defs: Any, persona: str, to: str | None, quarantined: set[str], error: str) -> None:
    in_use = {"r620-3": "in use by fo-7"} if "in-use" in quarantined else {}
    if not error:
        check_request(defs, persona, to, defs.homes(), quarantined, in_use)
        return
    with pytest.raises(OperatorError) as ei:
        check_request(defs, persona, to, defs.homes(), quarantined, in_use)
    assert error in str(ei.value)


# ---------------------------------------------------------------------------- the journal's abandon


def test_abandon_is_one_transaction(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.db")
    j.seed_assignment({"exchange1": "r720-1"})
    op_id = j.open_operation("failover", "exchange1", {}, from_server="r720-1",
                             leases=[persona_lease("exchange1"), server_lease("r720-1")])
    seen: list[int] = []
    j._on_commit = seen.append
    j.result(op_id, "resolve", "ok", {"action": "abandon"}, assignment_change={"exchange1": None},
             server_marks={"r720-3": ServerMark("check it", quarantine=True)}, end=("aborted", "abandoned by ops"))
    assert len(seen) == 1
    o = j.operation(op_id)
    assert (o.state, o.result) == ("aborted", "abandoned by ops")
    assert j.leases() == [] and j.assignment() == {"exchange1": None}
    assert j.quarantined()["r720-3"].reason == "check it"
    assert j.records(op_id)[-1].step == "resolve"
    with pytest.raises(ValueError):
        j.result(op_id, "resolve", "ok", {}, end=("needs-operator", ""))
    j.close()
