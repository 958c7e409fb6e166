"""Small extensions of fake-switches, so the lab switches behave like the devices they stand for.

Each extension is a subclass kept here (not a fork): it fills a gap where the fake is narrower
than the real OS and where aimctl depends on the behaviour.

* VLAN creation is idempotent on every real switch; the PowerConnect fake appends a duplicate
  ``Vlan`` object for each ``vlan N`` in ``vlan database``, so repeated failovers would grow the
  VLAN list. ``LabSwitchConfiguration.add_vlan`` ignores a VLAN that already exists.
* The Arista fake only knows trunk ports. Real EOS has access ports, a trunk native VLAN, port
  descriptions and ``shutdown``; quarantine (an access port) needs them. ``LabAristaSwitchCore``
  adds these commands and shows them in ``show running-config interfaces ...`` in EOS order.
  It also ends ``terminal length 0``'s answer with a newline, answers an unknown interface name with ``% Invalid input`` and a bare
  ``show running-config`` with the whole configuration, where the fake raises.
"""

from __future__ import annotations

from typing import Any

from fake_switches.arista.arista_core import AristaSwitchCore
from fake_switches.arista.command_processor.config import ConfigCommandProcessor as AristaConfig
from fake_switches.arista.command_processor.config_interface import (
    ConfigInterfaceCommandProcessor as AristaConfigInterface,
)
from fake_switches.arista.command_processor.config_vlan import ConfigVlanCommandProcessor as AristaConfigVlan
from fake_switches.arista.command_processor.default import DefaultCommandProcessor as AristaDefault
from fake_switches.arista.command_processor.enabled import EnabledCommandProcessor as AristaEnabled
from fake_switches.dell.command_processor.enabled import to_vlan_ranges
from fake_switches.switch_configuration import SwitchConfiguration, VlanPort


class LabSwitchConfiguration(SwitchConfiguration):  # type: ignore[misc]
    def add_vlan(self, vlan: Any) -> None:
        if self.get_vlan(vlan.number) is not None:
            return
        super().add_vlan(vlan)


def _is(args: tuple[str, ...], *words: str) -> bool:
    return len(args) >= len(words) and all(w.startswith(a.lower()) for a, w in zip(args, words))


class LabAristaConfigInterface(AristaConfigInterface):  # type: ignore[misc]
    def do_switchport(self, *args: str) -> None:
        if _is(args, "mode") and len(args) == 2 and args[1].lower() in ("access", "trunk"):
            self.port.mode = args[1].lower()
        elif _is(args, "access", "vlan") and len(args) == 3:
            self._set_vlan("access_vlan", args[2])
        elif _is(args, "trunk", "native", "vlan") and len(args) == 4:
            self._set_vlan("trunk_native_vlan", args[3])
        else:
            super().do_switchport(*args)

    def do_no_switchport(self, *args: str) -> None:
        if _is(args, "access", "vlan"):
            self.port.access_vlan = None
        elif _is(args, "trunk", "native", "vlan"):
            self.port.trunk_native_vlan = None
        else:
            super().do_no_switchport(*args)

    def _set_vlan(self, attr: str, raw: str) -> None:
        try:
            number = int(raw)
        except ValueError:
            self.display.invalid_command(self, "Invalid input")
            return
        if not 1 <= number <= 4094:
            self.display.invalid_command(self, "Invalid input")
            return
        setattr(self.port, attr, number)

    def do_description(self, *args: str) -> None:
        self.port.description = " ".join(args).strip('"')

    def do_no_description(self, *_: str) -> None:
        self.port.description = None

    def do_shutdown(self, *_: str) -> None:
        self.port.shutdown = True

    def do_no_shutdown(self, *_: str) -> None:
        self.port.shutdown = False


class LabAristaConfig(AristaConfig):  # type: ignore[misc]
    def do_interface(self, *args: str) -> None:
        try:
            name = self.read_interface_name(args)
        except Exception:
            self.display.invalid_command(self, "Invalid input")
            return
        if self.switch_configuration.get_port_by_partial_name(name) is None and not name.startswith("Vlan"):
            self.display.invalid_command(self, "Invalid input")
            return
        super().do_interface(*args)


class LabAristaEnabled(AristaEnabled):  # type: ignore[misc]
    def do_terminal(self, *_: str) -> None:
        # EOS ends the message with a newline; the fake glues the next prompt onto it.
        self.write_line("Pagination disabled.")

    def _show_running_config(self, *args: str) -> None:
        if args:
            super()._show_running_config(*args)
            return
        # The fake raises on a bare ``show running-config``; EOS shows everything.
        self._show_header()
        self._show_run_vlans(sorted(self.switch_configuration.vlans, key=lambda v: v.number))
        self._show_run_interfaces(list(self.switch_configuration.ports))
        self.write_line("!")
        self.write_line("end")

    def _show_run_interfaces(self, ports: list[Any]) -> None:
        for port in ports:
            if isinstance(port, VlanPort):
                super()._show_run_interfaces([port])
                continue
            self.write_line(f"interface {port.name}")
            if port.description:
                self.write_line(f"   description {port.description}")
            if port.access_vlan not in (None, 1):
                self.write_line(f"   switchport access vlan {port.access_vlan}")
            if port.trunk_native_vlan not in (None, 1):
                self.write_line(f"   switchport trunk native vlan {port.trunk_native_vlan}")
            if port.trunk_vlans is not None:
                self.write_line(f"   switchport trunk allowed vlan {to_vlan_ranges(port.trunk_vlans)}")
            if port.mode is not None:
                self.write_line(f"   switchport mode {port.mode}")
            if port.shutdown:
                self.write_line("   shutdown")


class LabAristaSwitchCore(AristaSwitchCore):  # type: ignore[misc]
    def processor_stack(self, display: Any) -> Any:
        common = (display,)
        return AristaDefault(
            *common, enabled=LabAristaEnabled(
                *common, config=LabAristaConfig(
                    *common, config_vlan=AristaConfigVlan(*common),
                    config_interface=LabAristaConfigInterface(*common))))

