"""The planner: which standby, why, and what every port must carry (pure, over the reference definitions)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aimctl.drivers.protocols import PortMode
from aimctl.errors import OperatorError
from aimctl.failover.dryrun import plan_failover
from aimctl.failover.planner import capacity, choose, port_intents, quarantine_intents, standbys
from aimctl.loader import load
from tests.conftest import DEFINITIONS, REPO


@pytest.fixture(scope="module")
def defs():  # type: ignore[no-untyped-def]
    return load(DEFINITIONS, use_cache=False)


def test_reference_choice(defs) -> None:  # type: ignore[no-untyped-def]
    c = choose(defs, "exchange1", defs.homes(), set())
    assert c.server == "r720-3"
    assert c.rejected == {"r720-1": "runs persona exchange1", "r720-2": "runs persona exchange2"}
    assert "standby preference #1" in c.why


def test_preference_then_quarantine_then_unavailable(defs) -> None:  # type: ignore[no-untyped-def]
    assert standbys(defs, "web", defs.homes(), set()) == ["r620-4", "r620-3"]
    assert choose(defs, "web2", defs.homes(), {"r620-4"}).server == "r620-3"
    c = choose(defs, "web2", defs.homes(), set(), unavailable={"r620-4": "BMC no-answer"})
    assert c.server == "r620-3" and c.rejected["r620-4"] == "BMC no-answer"
    none = choose(defs, "web2", defs.homes(), {"r620-3", "r620-4"})
    assert none.server is None


def test_to_must_be_eligible(defs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OperatorError, match="runs persona exchange2"):
        choose(defs, "exchange1", defs.homes(), set(), to="r720-2")
    with pytest.raises(OperatorError, match="not a member"):
        choose(defs, "exchange1", defs.homes(), set(), to="r620-3")


def test_capacity_n_plus_k(defs) -> None:  # type: ignore[no-untyped-def]
    assert capacity(defs, "exchange", defs.homes(), set()) == (1, {"exchange1": 1, "exchange2": 1})
    assert capacity(defs, "web", defs.homes(), set())[0] == 2
    assert capacity(defs, "exchange", defs.homes(), {"r720-3"})[0] == 0


def test_reference_port_intents(defs) -> None:  # type: ignore[no-untyped-def]
    per = port_intents(defs, "exchange1", "r720-3")
    got = {(sw, i.port): (i.mode, i.vlans) for sw, xs in per.items() for i in xs}
    assert got == {("sw1", "1/g5"): (PortMode.TRUNK, (4004,)), ("sw2", "1/g5"): (PortMode.TRUNK, (4004,)),
                   ("sw1", "1/g6"): (PortMode.TRUNK, (100, 200)), ("sw2", "1/g6"): (PortMode.TRUNK, (100, 200))}
    q = quarantine_intents(defs, "r720-1")
    assert all(i.vlans == (999,) and i.mode == PortMode.ACCESS and i.quarantine for xs in q.values() for i in xs)
    web = {i.port: (i.mode, i.vlans) for xs in port_intents(defs, "web1", "r620-4").values() for i in xs}
    assert web["Te1/0/7"] == (PortMode.ACCESS, (300,))


def test_plan_json_shape_and_order(defs) -> None:  # type: ignore[no-untyped-def]
    p = plan_failover(defs, "exchange1", defs.homes(), set())
    assert (p["persona"], p["from"], p["to"]) == ("exchange1", "r720-1", "r720-3")
    assert [s["name"] for s in p["steps"]] == ["confirm", "choose", "fence", "storage", "bootcfg", "switch",
                                               "power_on", "heartbeat", "recovery", "done"]
    manual = plan_failover(defs, "web1", defs.homes(), set())
    assert [s["name"] for s in manual["steps"]][:2] == ["confirm", "approve"]


def test_plan_cli_shows_switch_lines() -> None:
    r = subprocess.run([sys.executable, "-m", "aimctl.cli", "plan", "failover", "exchange1", "--json",
                        "--definitions", str(DEFINITIONS)], capture_output=True, text=True, cwd=REPO, check=True)
    plan = json.loads(r.stdout)
    switch = next(s for s in plan["steps"] if s["name"] == "switch")["actions"]
    assert any("sw1> interface ethernet 1/g5" in a for a in switch)
    assert any("switchport access vlan 999" in a for a in switch)
