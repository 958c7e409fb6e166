"""Small extensions of fake-switches, so the lab switches behave like the devices they stand for.

Each extension is a subclass kept here (not a fork): it fills a gap where the fake is narrower
than the real OS and where aimctl depends on the behaviour.

* VLAN creation is idempotent on every real switch; the PowerConnect fake appends a duplicate
  ``Vlan`` object for each ``vlan N`` in ``vlan database``, so repeated failovers would grow the
  VLAN list. ``LabSwitchConfiguration.add_vlan`` ignores a VLAN that already exists.
* The Arista fake only knows trunk ports. Real EOS has access ports, a trunk native VLAN, port
  descriptions and ``shutdown``; quarantine (an access port) needs them. ``LabAristaSwitchCore``
  adds these commands and shows them in ``show running-config`` in EOS order. It also ends the
  answer to ``terminal length 0`` with a newline, answers an unknown interface name with
  ``% Invalid input``, and shows the whole configuration for a bare ``show running-config``
  (the fake raises on both).

``LabSession`` wraps a fake's shell session so the lab can inject faults and count sessions.
"""

from __future__ import annotations

import itertools
from typing import Any

from fake_switches.arista.arista_core import AristaSwitchCore
from fake_switches.arista.command_processor import InvalidVlanNumber, NameIsIncomplete
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
        except (NameIsIncomplete, InvalidVlanNumber, IndexError):
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


class _Refused:
    """Stands in for a command processor when a session is refused or stalled before its prompt."""

    sub_processor = None
    replace_input = False


class LabSession:
    """Wraps a fake's shell session to apply the lab's faults line by line (``sw`` is the lab's
    record of the switch: its ``faults``, ``open_sessions`` and ``max_shells``).

    ``inner`` is attached once the session may start (at once, or when a PowerConnect's previous
    session has ended); lines typed before that are kept and replayed.
    """

    _seq = itertools.count()

    def __init__(self, inner: Any, sw: Any) -> None:
        self.inner = inner
        self.sw = sw
        self.opened = self.last = next(self._seq)
        self.refused = False
        self.closed = False  # the client's connection is gone
        self.counted = False  # counted as an open session of the switch
        self.pending: list[str] = []
        self.in_config = False
        self.config_lines = 0
        self.stalled = False
        self.command_processor: Any = _Refused()

    def attach(self, inner: Any) -> None:
        self.inner = inner
        self.opened = self.last = next(self._seq)
        self.command_processor = inner.command_processor
        pending, self.pending = self.pending, []
        for line in pending:
            self.receive(line)

    def receive(self, line: str) -> bool:
        if self.refused:
            return False
        if self.inner is None:
            if "hang-login" not in self.sw.faults:
                self.pending.append(line)
            return True
        self._count_overlap()
        if self.in_config and line.strip():
            self.config_lines += 1
            hang = self.sw.faults.get("hang")
            if hang is not None and self.config_lines > hang:
                self.stalled = True
            reject = self.sw.faults.get("reject")
            if reject is not None and self.config_lines == reject + 1:
                self.inner.handle_unknown_command(line)
                self.inner.command_processor.show_prompt()
                return True
        elif line.strip().lower().startswith("conf"):
            self.in_config = True
        if self.stalled and "hang" in self.sw.faults:
            return True  # swallowed: no output, no prompt
        return bool(self.inner.receive(line))

    def _count_overlap(self) -> None:
        # Sessions that sent a command after this one opened are really working at the same time;
        # one that has gone quiet and is only waiting for its close to land does not count.
        self.last = next(self._seq)
        busy = [s for s in self.sw.open_sessions if s is not self and s.last > self.opened]
        self.sw.max_shells = max(self.sw.max_shells, 1 + len(busy))
