"""The read-back parsers (switch_templates/<os>/show_port.textfsm) on running-config as the real
OSes print it, not only as the lab switches do: long names, continuation lines, ranges."""

from __future__ import annotations

import pytest

from aimctl.drivers.protocols import PortMode, PortState
from aimctl.drivers.switch_os import ALL_VLANS, load_profile

T, A = PortMode.TRUNK, PortMode.ACCESS

CASES = {
    "cisco_ios": ("""Building configuration...
!
hostname sw1
!
interface GigabitEthernet0/1
 description aimctl exchange1 ch1
 switchport trunk native vlan 10
 switchport trunk allowed vlan 100,200,300-302
 switchport trunk allowed vlan add 4004
 switchport mode trunk
!
interface GigabitEthernet0/2
 switchport access vlan 999
 switchport mode access
!
interface GigabitEthernet0/3
 switchport mode trunk
!
interface GigabitEthernet0/4
!
end
""", {"Gi0/1": PortState("Gi0/1", T, (100, 200, 300, 301, 302, 4004), 10),
      "GigabitEthernet0/2": PortState("GigabitEthernet0/2", A, (999,)),
      "GigabitEthernet0/3": PortState("GigabitEthernet0/3", T, ALL_VLANS),
      "GigabitEthernet0/4": PortState("GigabitEthernet0/4", A, (1,))}),
    "dell_powerconnect": ("""!Current Configuration:
configure
vlan database
vlan 1,100,200,999,4004
exit
interface ethernet 1/g1
description 'aimctl exchange1 ch1'
switchport mode trunk
switchport trunk allowed vlan add 100,200,4004
exit
!
interface ethernet 1/g2
switchport access vlan 999
exit
!
interface ethernet 1/g3
switchport mode general
switchport general pvid 100
switchport general allowed vlan add 100
exit
exit
""", {"1/g1": PortState("1/g1", T, (100, 200, 4004)), "1/g2": PortState("1/g2", A, (999,)),
      "1/g3": PortState("1/g3", None, (100,)), "1/g4": PortState("1/g4", A, (1,))}),
    "dell_os6": ("""!Current Configuration:
configure
vlan 100,200,999,4004
exit
interface Te1/0/1
description "aimctl exchange1 ch1"
switchport mode trunk
switchport trunk native vlan 100
switchport trunk allowed vlan 100,200
exit
!
interface tengigabitethernet 1/0/2
switchport access vlan 999
exit
!
exit
""", {"Te1/0/1": PortState("Te1/0/1", T, (100, 200), 100), "Te1/0/2": PortState("Te1/0/2", A, (999,))}),
    "arista_eos": ("""! Command: show running-config
hostname sw1
!
interface Ethernet1
   description aimctl exchange1 ch1
   switchport trunk allowed vlan 100,200,4004
   switchport mode trunk
!
interface Ethernet2
   switchport access vlan 999
!
interface Ethernet3
   switchport trunk allowed vlan none
   switchport mode trunk
!
end
""", {"Ethernet1": PortState("Ethernet1", T, (100, 200, 4004)), "Ethernet2": PortState("Ethernet2", A, (999,)),
      "Et3": PortState("Et3", T, ())}),
}


@pytest.mark.parametrize("os_name", list(CASES))
def test_running_config_parses_to_port_states(os_name: str) -> None:
    text, want = CASES[os_name]
    seen = load_profile(os_name).parse(text, list(want))
    assert {p: o.state for p, o in seen.items()} == want


def test_description_is_read_without_quotes() -> None:
    text, _ = CASES["dell_powerconnect"]
    assert load_profile("dell_powerconnect").parse(text, ["1/g1"])["1/g1"].description == "aimctl exchange1 ch1"


@pytest.mark.parametrize(("os_name", "output", "refused"), [
    ("cisco_ios", "interface GigabitEthernet0/9\n% Invalid input detected at '^' marker.", True),
    ("dell_powerconnect", "VLAN      4005 ERROR: This VLAN does not exist.", True),
    ("dell_os6", "An invalid interface has been used for this function", True),
    ("arista_eos", "% Incomplete command", True),
    ("dell_powerconnect", "Warning: The use of large numbers of VLANs or interfaces may cause significant", False),
    ("arista_eos", "! Address 10.0.0.1/24 was not found for deletion", False),
])
def test_error_patterns(os_name: str, output: str, refused: bool) -> None:
    assert (load_profile(os_name).refusal(output) is not None) is refused
