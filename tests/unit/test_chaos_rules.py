"""Table tests of the chaos soak's decisions (lab.chaos.rules) and the fault catalogue's options."""

from __future__ import annotations

import random
from typing import Any

import pytest

from aimctl.errors import OperatorError
from lab import faults
from lab.chaos import rules
from lab.chaos.rules import Body, Exit, Heal, Seen, Waiting, World

WORLD = World(
    pool_of={"exchange1": "exchange", "exchange2": "exchange", "web1": "web", "web2": "web"},
    home={"exchange1": "r720-1", "exchange2": "r720-2", "web1": "r620-1", "web2": "r620-2"},
    members={"exchange": ("r720-1", "r720-2", "r720-3"), "web": ("r620-1", "r620-2", "r620-3", "r620-4")},
    switches={"exchange": ("sw1", "sw2"), "web": ("sw3", "sw4", "sw5")},
    redfish=frozenset({"r720-1", "r720-2", "r720-3"}), dag=frozenset({"exchange1", "exchange2"}),
    assignment={"exchange1": "r720-1", "exchange2": "r720-2", "web1": "r620-1", "web2": "r620-2"})
HOME_BODIES = {s: Body(True, p, "running") for p, s in WORLD.assignment.items() if s} | {
    "r720-3": Body(False), "r620-3": Body(False), "r620-4": Body(False)}


def test_the_catalogue_has_at_least_fifteen_kinds_each_described() -> None:
    assert len(faults.CATALOGUE) >= 15
    assert len(set(faults.NAMES)) == len(faults.NAMES)
    for k in faults.CATALOGUE:
        assert k.help and k.target, k


@pytest.mark.parametrize(("kind", "given", "want"), [
    ("switch-hang", {"after": 6}, {"after": 6}),
    ("switch-hang", {"after": None}, {}),
    ("bmc-slow", {"delay_s": "2.5"}, {"delay_s": 2.5}),
    ("scn-loss", {"percent": 5}, {"percent": 5.0}),
    ("trap-storm", {"rate": 100.0}, {"rate": 100}),
    ("controller-kill", {"delay_s": 0}, {"delay_s": 0.0}),
    ("controller-pause", {"seconds": 3}, {"seconds": 3.0}),
])
def test_fault_options_are_checked_against_their_kind(kind: str, given: dict[str, Any], want: dict[str, float]) -> None:
    assert faults.check_params(kind, given) == want


@pytest.mark.parametrize(("kind", "given", "words"), [
    ("no-such-fault", {}, "unknown fault 'no-such-fault'"),
    ("bmc-down", {"after": 3}, "bmc-down does not take 'after' (it takes no options)"),
    ("switch-hang", {"delay_s": 1}, "switch-hang does not take 'delay_s' (it takes --after)"),
    ("switch-hang", {"after": 2.5}, "want a whole number in [0, 10000]"),
    ("switch-hang", {"after": -1}, "want a whole number in [0, 10000]"),
    ("bmc-slow", {"delay_s": 500}, "want a number in [0.01, 120]"),
    ("bmc-slow", {"delay_s": "soon"}, "want a number, got 'soon'"),
    ("bmc-slow", {"delay_s": True}, "want a number, got True"),
    ("scn-loss", {"percent": [5]}, "want a number, got [5]"),
])
def test_bad_fault_options_are_one_clear_error(kind: str, given: dict[str, Any], words: str) -> None:
    with pytest.raises(OperatorError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        faults.check_params(kind, given)


def test_rounds_use_only_catalogue_kinds_with_valid_options_and_cover_it() -> None:
    seen: set[str] = set()
    for n in range(400):
        plan = rules.plan_round(random.Random(f"7:{n}"), WORLD)
        assert plan.injections, plan
        for i in plan.injections:
            faults.check_params(i.kind, dict(i.params))
            seen.add(i.kind)
        if plan.death:
            assert plan.death in WORLD.assignment
        assert len({i.kind for i in plan.injections}) == len(plan.injections)  # no kind twice in a round
    assert seen == set(faults.NAMES) - set(rules.CLUSTER_ONLY), set(faults.NAMES) - seen


def test_the_same_seed_and_round_make_the_same_plan() -> None:
    a = [rules.plan_round(random.Random(f"3:{n}"), WORLD).text() for n in range(20)]
    b = [rules.plan_round(random.Random(f"3:{n}"), WORLD).text() for n in range(20)]
    assert a == b and len(set(a)) > 10


def test_a_pool_with_nobody_running_is_never_killed_in() -> None:
    w = World(**{**WORLD.__dict__, "assignment": {"exchange1": None, "exchange2": None, "web1": "r620-1",
                                                  "web2": "r620-2"}})
    for n in range(100):
        plan = rules.plan_round(random.Random(n), w)
        assert plan.death in (None, "web1", "web2")


def test_storage_step_error_only_for_redfish_bodies() -> None:
    for n in range(300):
        plan = rules.plan_round(random.Random(n), WORLD)
        for i in plan.injections:
            if i.kind == "storage-step-error":
                assert i.target in WORLD.redfish


@pytest.mark.parametrize(("op", "tries", "bodies", "want"), [
    (Waiting("fo-1", "web1", "waiting-approval", "waiting for `aimctl approve fo-1`"), 0, {}, Exit("approve")),
    (Waiting("fo-1", "exchange1", "needs-operator", "switch: switch step not done: sw2 failed"), 0, {},
     Exit("retry")),
    (Waiting("fo-1", "exchange1", "needs-operator",
             "fence: fence of r720-1 not confirmed: power-off not read back (...) and ports not quarantined"),
     1, {"r720-1": Body(False)}, Exit("mark-fenced", "r720-1", pull_plug=False)),
    (Waiting("fo-1", "exchange1", "needs-operator", "heartbeat: r720-3 did not heartbeat; fence of r720-3 not "
             "confirmed: power-off not read back (...)"), 0, {"r720-3": Body(True)},
     Exit("mark-fenced", "r720-3", pull_plug=True)),
    (Waiting("fo-1", "exchange1", "needs-operator", "fence: fence of r720-1 not confirmed: storage fence not proven "
             "(tgtd does not answer)"), 0, {"r720-1": Body(False)}, Exit("retry")),
    (Waiting("fo-1", "exchange1", "needs-operator", "choose: no standby: ..."), 3, {}, Exit("abandon")),
    (Waiting("fo-1", "web1", "waiting-approval", "waiting for change CHG0001234"), 5, {}, Exit("approve")),
    (Waiting("fo-1", "web2", "needs-operator", "confirm: not failed over: web2 already had 2 automatic failovers "
             "in the last 1h (limit 2): ..."), 0, {}, Exit("retry")),
])
def test_operator_exit(op: Waiting, tries: int, bodies: dict[str, Body], want: Exit) -> None:
    got = rules.operator_exit(op, tries, bodies)
    assert (got.action, got.server, got.pull_plug) == (want.action, want.server, want.pull_plug)


def test_heal_repairs_quarantined_bodies_and_sends_personas_home() -> None:
    w = World(**{**WORLD.__dict__, "assignment": {**WORLD.assignment, "exchange1": "r720-3", "web2": "r620-4"},
                 "quarantined": frozenset({"r720-1", "r620-2"})})
    bodies = {**HOME_BODIES, "r720-1": Body(True, None, "crashed"), "r620-2": Body(False),
              "r720-3": Body(True, "exchange1", "running"), "r620-4": Body(True, "web2", "running"),
              "r620-3": Body(True, None, "boot-failed")}
    plan = rules.heal_plan(w, bodies, [], random.Random(1), failback_share=0.0)
    assert plan == [Heal("clear", "r620-2"), Heal("power-off", "r720-1"),
                    Heal("clear", "r720-1"), Heal("power-off", "r620-3"), Heal("failback", "exchange1")]
    # (web2 stays: its pool still has a standby; exchange1 goes home: its pool has none left)


def test_heal_leaves_what_a_waiting_operation_holds() -> None:
    w = World(**{**WORLD.__dict__, "quarantined": frozenset({"r720-1"})})
    plan = rules.heal_plan(w, HOME_BODIES, [Waiting("fo-1", "exchange1", "needs-operator", "x")], random.Random(1))
    assert Heal("clear", "r720-1") not in plan


def seen(**kw: Any) -> Seen:
    base: dict[str, Any] = {
        "assignment": dict(WORLD.assignment), "heartbeat_age": {p: 0.3 for p in WORLD.assignment},
        "bodies": HOME_BODIES, "waiting": [], "leases": {}}
    return Seen(**{**base, **kw})


WAIT = Waiting("fo-1", "exchange1", "needs-operator", "switch: sw2 failed")


@pytest.mark.parametrize(("s", "invariants"), [
    (seen(), []),
    (seen(double_access=3, evidence=[{"target": "t"}]), ["double access"]),
    (seen(waiting=[WAIT], leases={"persona:exchange1": ("fo-1", 3500.0)}), []),
    (seen(waiting=[WAIT], leases={}), ["operation without a live lease"]),
    (seen(waiting=[WAIT], leases={"persona:exchange1": ("fo-1", -1.0)}), ["operation without a live lease"]),
    (seen(waiting=[Waiting("fo-1", "exchange1", "needs-operator", "")],
          leases={"persona:exchange1": ("fo-1", 10.0)}), ["waiting without a reason"]),
    (seen(waiting=[Waiting("fo-1", "exchange1", "running")], leases={"persona:exchange1": ("fo-1", 10.0)}),
     ["operation stuck"]),
    (seen(leases={"server:r720-3": ("fo-9", 10.0)}), ["lease held by no waiting operation"]),
    (seen(heartbeat_age={**{p: 0.3 for p in WORLD.assignment}, "web2": 9.0}),
     ["persona not on exactly one body with a heartbeat"]),
    (seen(bodies={**HOME_BODIES, "r620-3": Body(True, "web1", "running")}),
     ["persona not on exactly one body with a heartbeat"]),
    (seen(waiting=[WAIT], leases={"persona:exchange1": ("fo-1", 10.0)},
          bodies={**HOME_BODIES, "r720-3": Body(True, "exchange1", "running")}), ["persona on two bodies"]),
    (seen(leaked=["pid 7 'tgtadm ...' (age 300s)"]), ["leaked process"]),
    (seen(observer_blind_s=12.0), ["observer blind"]),
])
def test_invariants(s: Seen, invariants: list[str]) -> None:
    assert [v.invariant for v in rules.check(s)] == invariants


@pytest.mark.parametrize(("s", "at_rest"), [
    (seen(), True),
    (seen(waiting=[WAIT]), True),
    (seen(waiting=[Waiting("fo-1", "exchange1", "running")]), False),
    (seen(heartbeat_age={**{p: 0.3 for p in WORLD.assignment}, "web1": None}), False),
    (seen(bodies={**HOME_BODIES, "r620-1": Body(True, None, "booting")}), False),
])
def test_settled(s: Seen, at_rest: bool) -> None:
    assert rules.settled(s) is at_rest


def test_a_reported_plan_reads_back_as_the_same_faults() -> None:
    for n in range(50):
        plan = rules.plan_round(random.Random(f"9:{n}"), WORLD)
        again = rules.parse_plan(plan.text())
        assert again.injections == plan.injections, plan.text()


@pytest.mark.parametrize(("text", "words"), [
    ("", "an empty plan"), ("power-button", "want KIND TARGET"), ("bmc-slow r720-1 delay_s", "want OPTION=VALUE"),
    ("bmc-slow r720-1 delay_s=soon", "want a number"),
])
def test_bad_plans_are_refused(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        rules.parse_plan(text)
