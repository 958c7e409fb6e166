"""Golden files pin the exact CLI lines each network OS gets for each operation.

A diff fails the test. After an intended template change, regenerate with
``AIMCTL_UPDATE_GOLDEN=1 .venv/bin/pytest tests/golden/test_switch_render.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aimctl.drivers.protocols import PortIntent, PortMode, PortState
from aimctl.drivers.switch import NetmikoSwitch
from aimctl.drivers.switch_os import render_lines
from aimctl.errors import Rejected

GOLDEN = Path(__file__).parent / "switch"
UPDATE = os.environ.get("AIMCTL_UPDATE_GOLDEN") == "1"

# Two ports per OS, spelled as an operator writes them in the inventory.
PORTS = {
    "dell_powerconnect": ("1/g1", "1/g2"),
    "dell_os6": ("Te1/0/1", "Te1/0/2"),
    "cisco_ios": ("GigabitEthernet0/1", "GigabitEthernet0/2"),
    "arista_eos": ("Ethernet1", "Ethernet2"),
}
T, A = PortMode.TRUNK, PortMode.ACCESS


def operations(os_name: str) -> dict[str, tuple[list[PortIntent], dict[str, PortState]]]:
    """Operation -> (intents, the ports' state captured before the change)."""
    p, q = PORTS[os_name]
    persona = PortState(p, T, (100, 200, 4004))
    ops = {
        "trunk": ([PortIntent(p, T, (4004, 100, 200), description="aimctl exchange1 ch1")], {}),
        "trunk_from_other_vlans": ([PortIntent(p, T, (4004, 100), description="aimctl exchange1 ch1")],
                                   {p: PortState(p, T, (100, 300, 4004))}),
        "access": ([PortIntent(p, A, (100,), description="aimctl exchange1 ch3")], {}),
        "quarantine": ([PortIntent(p, A, (999,), description="aimctl quarantine ch1", quarantine=True)],
                       {p: persona}),
        # the switch step of a failover: the standby's port gets the persona, the old body's is fenced
        "batch": ([PortIntent(p, T, (4004, 100, 200), description="aimctl exchange1 ch1"),
                   PortIntent(q, A, (999,), description="aimctl quarantine ch1", quarantine=True)],
                  {p: PortState(p, A, (999,)), q: PortState(q, T, (100, 200, 4004))}),
    }
    if os_name != "dell_powerconnect":
        ops["trunk_native"] = ([PortIntent(p, T, (100, 200), native_vlan=100)], {})
    return ops


CASES = [(os_name, op) for os_name in PORTS for op in operations(os_name)]


@pytest.mark.parametrize(("os_name", "op"), CASES, ids=[f"{o}-{op}" for o, op in CASES])
def test_rendered_lines_match_golden(os_name: str, op: str) -> None:
    intents, current = operations(os_name)[op]
    sw = NetmikoSwitch("sw1", os_name, "192.0.2.10", 22, "netops", "unused-password")  # never connects
    text = "\n".join(sw.render(intents, current)) + "\n"
    path = GOLDEN / os_name / f"{op}.txt"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with AIMCTL_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"rendered lines differ from {path}"


def test_every_golden_file_is_still_produced() -> None:
    produced = {f"{o}/{op}.txt" for o, op in CASES}
    on_disk = {str(p.relative_to(GOLDEN)) for p in GOLDEN.glob("*/*.txt")}
    assert on_disk == produced


def test_plan_renderer_matches_the_driver_without_a_capture() -> None:
    intents = operations("dell_powerconnect")["batch"][0]
    sw = NetmikoSwitch("sw1", "dell_powerconnect", "192.0.2.10", 22, "netops", "unused-password")
    assert render_lines("dell_powerconnect", intents) == sw.render(intents)


def test_dell_os6_creates_one_vlan_per_command() -> None:
    lines = render_lines("dell_os6", [PortIntent("Te1/0/1", T, (4004, 100, 200))])
    assert [ln for ln in lines if ln.startswith("vlan")] == ["vlan 100", "vlan 200", "vlan 4004"]


def test_powerconnect_refuses_a_native_vlan_before_rendering() -> None:
    with pytest.raises(Rejected, match="native VLAN"):
        render_lines("dell_powerconnect", [PortIntent("1/g1", T, (100,), native_vlan=100)])
