"""A step over several switches is all or nothing (DESIGN.md rule 6): change_ports against real
fake-switches SSH switches, one of them hanging before or in the middle of its change."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest

from aimctl.drivers.protocols import PortIntent, PortMode, PortState
from aimctl.drivers.switch import NetmikoSwitch
from aimctl.drivers.switch_batch import SwitchBatcher
from aimctl.failover.context import Settings
from aimctl.failover.ports import change_ports, state_text
from aimctl.failover.runner import NeedsOperator
from lab.network.switches import SwitchLab, SwitchSpec
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

USER, PASSWORD, ENABLE = "netops", "sw-pass-5c2e91", "sw-enable-a7f3"
PORTS = ["1/g1", "1/g2", "1/g3", "1/g4"]
SWITCHES = ("swa", "swb")
# What a failover's switch step does on each switch: the standby (1/g3, 1/g4) gets the persona's
# VLANs, the old body (1/g1, 1/g2) goes to quarantine.
STEP = [PortIntent("1/g3", PortMode.TRUNK, (4004,), description="aimctl x1 ch1"),
        PortIntent("1/g4", PortMode.TRUNK, (100, 200), description="aimctl x1 ch3"),
        PortIntent("1/g1", PortMode.ACCESS, (999,), description="aimctl quarantine ch1", quarantine=True),
        PortIntent("1/g2", PortMode.ACCESS, (999,), description="aimctl quarantine ch3", quarantine=True)]
HOME = {"1/g1": PortIntent("1/g1", PortMode.TRUNK, (4004,)), "1/g2": PortIntent("1/g2", PortMode.TRUNK, (100, 200)),
        "1/g3": PortIntent("1/g3", PortMode.ACCESS, (1,)), "1/g4": PortIntent("1/g4", PortMode.ACCESS, (1,))}


@pytest.fixture(scope="module")
def sl() -> Iterator[tuple[SwitchLab, dict[str, int]]]:
    lab = SwitchLab([SwitchSpec(n, "dell_powerconnect", PORTS) for n in SWITCHES], USER, PASSWORD, ENABLE)
    ports = lab.start()
    try:
        yield lab, ports
    finally:
        lab.stop()


@pytest.fixture
def rig(sl: tuple[SwitchLab, dict[str, int]]) -> Iterator[tuple[SwitchLab, Any]]:
    lab, ports = sl
    for n in SWITCHES:
        for f in ("hang", "refuse"):
            lab.set_fault(n, f, False)
        for p, intent in HOME.items():
            lab.reset_port(n, p, intent)
    drivers = {n: NetmikoSwitch(n, "dell_powerconnect", "127.0.0.1", ports[n], USER, PASSWORD,
                                enable_password=ENABLE, connect_timeout_s=5, command_timeout_s=0.6)
               for n in SWITCHES}
    ns = SimpleNamespace(switch=lambda n: drivers[n])
    ctx = SimpleNamespace(drivers=ns, switches=SwitchBatcher(ns),  # type: ignore[arg-type]
                          settings=Settings(switch_deadline_s=1.5), pool=ThreadPoolExecutor(4))
    try:
        yield lab, ctx
    finally:
        ctx.pool.shutdown()
        for n in SWITCHES:
            lab.set_fault(n, "hang", False)


def lab_state(lab: SwitchLab) -> dict[tuple[str, str], PortState]:
    return {(n, p): lab.port_state(n, p) for n in SWITCHES for p in PORTS}


def test_every_switch_changed_and_read_back(rig: tuple[SwitchLab, Any]) -> None:
    lab, ctx = rig
    out = change_ports(ctx, {n: STEP for n in SWITCHES}, "switch step")
    assert out["swa"] == ["1/g3 trunk 4004", "1/g4 trunk 100,200", "1/g1 access 999", "1/g2 access 999"]
    for n in SWITCHES:
        assert lab.port_state(n, "1/g1").vlans == (999,) and lab.port_state(n, "1/g4").vlans == (100, 200)


def test_one_switch_hangs_the_other_is_put_back(rig: tuple[SwitchLab, Any]) -> None:
    lab, ctx = rig
    before = lab_state(lab)
    lab.set_fault("swb", "hang", True)  # swb stops answering at its first config line
    with pytest.raises(NeedsOperator) as ei:
        change_ports(ctx, {n: STEP for n in SWITCHES}, "switch step")
    assert lab_state(lab) == before  # swa was changed, then restored and read back
    reason = ei.value.reason
    assert reason.startswith("switch step not done: swb failed (")
    assert "Every touched port is back as captured (read back)" in reason
    for n in SWITCHES:
        for p in PORTS:
            assert f"{n} {p}: {state_text(before[(n, p)])} (as before)" in reason


def test_a_half_changed_switch_is_put_back_too(rig: tuple[SwitchLab, Any]) -> None:
    lab, ctx = rig
    before = lab_state(lab)
    # 12 lines pass in each session: the VLAN lines and all of 1/g3; swb then hangs inside 1/g4.
    # Putting 1/g3 back takes fewer lines, so the restore gets through.
    lab.set_fault("swb", "hang", True, after=12)
    with pytest.raises(NeedsOperator) as ei:
        change_ports(ctx, {n: STEP for n in SWITCHES}, "switch step")
    assert "Every touched port is back as captured (read back)" in ei.value.reason
    assert lab_state(lab) == before


def test_a_switch_that_cannot_be_put_back_is_reported_port_by_port(rig: tuple[SwitchLab, Any]) -> None:
    lab, ctx = rig
    before = lab_state(lab)
    lab.set_fault("swb", "hang", True, after=12)

    def hang_for_good() -> None:  # once swb hung half-way, it stops answering any config line
        wait_for(lambda: lab.stalled("swb"), 8.0, "a hung session on swb")
        lab.set_fault("swb", "hang", True, after=0)

    t = threading.Thread(target=hang_for_good)
    t.start()
    try:
        with pytest.raises(NeedsOperator) as ei:
            change_ports(ctx, {n: STEP for n in SWITCHES}, "switch step")
    finally:
        t.join()
    reason = ei.value.reason
    assert "NOT every port could be put back; check them by hand" in reason
    assert all(lab.port_state("swa", p) == before[("swa", p)] for p in PORTS)
    assert lab.port_state("swb", "1/g3") != before[("swb", "1/g3")]
    # The reason tells the truth about every port of the hung switch, changed or not.
    for p in PORTS:
        now, was = lab.port_state("swb", p), before[("swb", p)]
        tail = "(as before)" if now == was else f"(CHANGED, was {state_text(was)})"
        assert f"swb {p}: {state_text(now)} {tail}" in reason


def test_a_switch_that_answers_again_is_retried_within_the_deadline(rig: tuple[SwitchLab, Any]) -> None:
    lab, ctx = rig
    ctx.settings.switch_deadline_s = 8.0
    lab.set_fault("swb", "hang", True)

    def clear_once_hung() -> None:  # the hang passes while the step is still within its deadline
        wait_for(lambda: lab.stalled("swb"), 8.0, "a hung session on swb")
        lab.set_fault("swb", "hang", False)

    t = threading.Thread(target=clear_once_hung)
    t.start()
    try:
        change_ports(ctx, {n: STEP for n in SWITCHES}, "switch step")
    finally:
        t.join()
    for n in SWITCHES:
        assert lab.port_state(n, "1/g1").vlans == (999,) and lab.port_state(n, "1/g3").vlans == (4004,)


def test_a_switch_that_cannot_be_read_means_nothing_changes(rig: tuple[SwitchLab, Any]) -> None:
    lab, ctx = rig
    before = lab_state(lab)
    lab.set_fault("swb", "refuse", True)
    with pytest.raises(NeedsOperator) as ei:
        change_ports(ctx, {n: STEP for n in SWITCHES}, "quarantine of r1")
    assert ei.value.reason.startswith("quarantine of r1: nothing changed: could not read swb (")
    assert lab_state(lab) == before
