"""Lab switches: fake-switches SSH switches in this process, one Twisted reactor for all of them.

Each ``SwitchLab`` runs its own reactor instance in a daemon thread (a Twisted reactor cannot be
restarted once stopped, so a process-global one could serve only one lab per process). Switches
bind 127.0.0.1 on free ports. The lab keeps each fake's configuration objects, so the SCN relay,
the host simulators and ``lab status`` read what a port carries in process, without an SSH session
(a PowerConnect takes one session at a time, and the controller owns it).

Port names are the operator's (the names in the definitions); the lab maps them to the fake's
port objects (PowerConnect ``1/g1`` is the fake's ``ethernet 1/g1``; DNOS6 ``Te1/0/1`` is
``tengigabitethernet 1/0/1``) and creates exactly the ports the specs name.

Faults (``set_fault``): ``hang`` (a session stops answering after ``after`` config-mode commands:
the "SSH timeout mid-change"), ``reject`` (command number ``after + 1`` of each config session is
refused with the OS's own error text), ``hang-login`` (no prompt after login) and ``refuse`` (TCP
connections are closed at once). PowerConnect switches take one SSH session at a time, like the
real 62xx: a second one waits up to a second for the first to end, then is refused.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Self

from fake_switches.cisco.cisco_core import CiscoSwitchCore
from fake_switches.dell.dell_core import DellSwitchCore
from fake_switches.dell10g.dell_core import Dell10GSwitchCore
from fake_switches.switch_configuration import Port
from fake_switches.transports.ssh_service import SwitchSshService
from twisted.conch.ssh import factory as ssh_factory_mod
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.internet import threads
from twisted.internet.epollreactor import EPollReactor

from aimctl.drivers.ifindex import ifindex
from aimctl.drivers.protocols import PortIntent, PortMode, PortState
from lab.network.switch_fakes import LabAristaSwitchCore, LabSession, LabSwitchConfiguration

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
FAULT_KINDS = ("hang", "reject", "hang-login", "refuse")


@dataclass(frozen=True)
class _Model:
    core: Any
    # How an operator's port name becomes the fake's port name: (pattern, replacement) tried in order.
    names: tuple[tuple[str, str], ...]
    # Whether a trunk with no allowed-VLAN list carries every VLAN (IOS/EOS/DNOS6) or none (the
    # PowerConnect fake starts an empty list on the first ``add``).
    unset_trunk_is_all: bool
    single_session: bool = False


MODELS: dict[str, _Model] = {
    "dell_powerconnect": _Model(DellSwitchCore, ((r"^(.*)$", r"ethernet \1"),), False, single_session=True),
    "dell_os6": _Model(Dell10GSwitchCore, (
        (r"^Gi(.*)$", r"gigabitethernet \1"), (r"^Te(.*)$", r"tengigabitethernet \1"),
        (r"^Tw(.*)$", r"twentyfivegigabitethernet \1"), (r"^Fo(.*)$", r"fortygigabitethernet \1")), True),
    "cisco_ios": _Model(CiscoSwitchCore, (
        (r"^Fa(\d.*)$", r"FastEthernet\1"), (r"^Gi(\d.*)$", r"GigabitEthernet\1"),
        (r"^Te(\d.*)$", r"TenGigabitEthernet\1"), (r"^(.*)$", r"\1")), True),
    "arista_eos": _Model(LabAristaSwitchCore, ((r"^Et(\d.*)$", r"Ethernet\1"), (r"^(.*)$", r"\1")), True),
}


@dataclass
class SwitchSpec:
    name: str
    os: str  # netmiko device type
    ports: list[str]


def fake_port_name(os_name: str, port: str) -> str:
    for pattern, repl in MODELS[os_name].names:
        if re.match(pattern, port):
            return re.sub(pattern, repl, port)
    return port


@dataclass
class _Switch:
    spec: SwitchSpec
    model: _Model
    core: Any
    ports: dict[str, Any]
    link: dict[str, bool]
    faults: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    shells: int = 0
    max_shells: int = 0
    open_sessions: set[Any] = field(default_factory=set)
    listening: Any = None


class SwitchLab:
    def __init__(self, specs: list[SwitchSpec], username: str, password: str, enable_password: str) -> None:
        self._specs = specs
        self._username = username
        self._password = password
        self._enable = enable_password
        self._reactor: Any = None
        self._thread: threading.Thread | None = None
        self._switches: dict[str, _Switch] = {}
        self._lock = threading.Lock()
        self.host = HOST

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> dict[str, int]:
        """Listen on a free port per switch; return switch name -> SSH port on 127.0.0.1."""
        if self._reactor is not None:
            raise RuntimeError("SwitchLab already started")
        self._reactor = EPollReactor()  # type: ignore[no-untyped-call]
        out: dict[str, int] = {}
        for spec in self._specs:
            sw = self._build(spec)
            self._switches[spec.name] = sw
            out[spec.name] = sw.listening.getHost().port
        self._thread = threading.Thread(target=self._reactor.run, kwargs={"installSignalHandlers": False},
                                        name="switch-lab", daemon=True)
        self._thread.start()
        return out

    def stop(self) -> None:
        """Stop the reactor: every listening port and session is closed."""
        if self._reactor is None:
            return
        if self._reactor.running:
            self._reactor.callFromThread(self._reactor.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._reactor = None

    def ports(self) -> dict[str, int]:
        return {name: sw.listening.getHost().port for name, sw in self._switches.items()}

    def _build(self, spec: SwitchSpec) -> _Switch:
        if spec.os not in MODELS:
            raise ValueError(f"switch {spec.name}: no lab model for os {spec.os!r}")
        model = MODELS[spec.os]
        ports = {p: Port(fake_port_name(spec.os, p)) for p in spec.ports}
        # The enable password must be str (compared with the typed line); the SSH password bytes.
        conf = LabSwitchConfiguration(HOST, name=spec.name, privileged_passwords=[self._enable],
                                      ports=list(ports.values()))
        core = model.core(conf)
        sw = _Switch(spec, model, core, ports, {p: True for p in spec.ports})
        self._wrap_launch(sw)
        service = SwitchSshService(ip=HOST, port=0, switch_core=core,
                                   users={self._username: self._password.encode()})
        sw.listening = service.hook_to_reactor(self._reactor)
        fac = sw.listening.factory
        # conch's user-auth service schedules its timers on the global reactor; point it at ours.
        fac.services = dict(ssh_factory_mod.SSHFactory.services)
        # A shorter delay after a wrong password than conch's 1 s keeps the auth-failure tests quick.
        fac.services[b"ssh-userauth"] = type("LabUserAuth", (SSHUserAuthServer,),
                                             {"clock": self._reactor, "passwordDelay": 0.2})
        self._wrap_accept(sw, fac)
        return sw

    def _wrap_accept(self, sw: _Switch, fac: Any) -> None:
        build = fac.buildProtocol

        def build_protocol(addr: Any) -> Any:
            if "refuse" in sw.faults:
                return None  # Twisted closes the connection
            with self._lock:
                sw.connections += 1
            return build(addr)

        fac.buildProtocol = build_protocol

    def _wrap_launch(self, sw: _Switch) -> None:
        launch = sw.core.launch

        def open_shell(session: LabSession, protocol: str, terminal_controller: Any) -> None:
            if session.closed:  # the client gave up while waiting for the previous session to end
                return
            with self._lock:
                sw.shells += 1
                sw.max_shells = max(sw.max_shells, 1)
                sw.open_sessions.add(session)
                session.counted = True
            session.attach(launch(protocol, terminal_controller))

        def watch_close(session: LabSession, terminal_controller: Any) -> None:
            shell = getattr(terminal_controller, "shell", None)
            if shell is None:
                return
            lost = shell.connectionLost

            def connection_lost(reason: Any) -> None:
                with self._lock:
                    session.closed = True
                    if session.counted:
                        sw.shells -= 1
                        sw.open_sessions.discard(session)
                lost(reason)

            shell.connectionLost = connection_lost

        def wait_then_open(session: LabSession, protocol: str, terminal_controller: Any, tries: int) -> None:
            # A client that just closed its session may connect again before the switch has seen
            # the close: give the old session a moment to end before refusing the new one.
            if sw.shells == 0 or session.closed:
                open_shell(session, protocol, terminal_controller)
            elif tries <= 0:
                terminal_controller.write("% Maximum number of sessions reached, try later\r\n")
                session.refused = True
                terminal_controller.shell.terminal.loseConnection()
            else:
                self._reactor.callLater(0.02, wait_then_open, session, protocol, terminal_controller, tries - 1)

        def lab_launch(protocol: str, terminal_controller: Any) -> LabSession:
            session = LabSession(None, sw)
            watch_close(session, terminal_controller)
            if "hang-login" in sw.faults:
                return session  # never attached: no prompt, no answer
            if sw.model.single_session and sw.shells > 0 and hasattr(terminal_controller, "shell"):
                # PowerConnect-class switches take one management session at a time.
                wait_then_open(session, protocol, terminal_controller, tries=50)
            else:
                open_shell(session, protocol, terminal_controller)
            return session

        sw.core.launch = lab_launch

    # -- observation ------------------------------------------------------------------------------
    def _port(self, switch: str, port: str) -> Any:
        try:
            return self._switches[switch].ports[port]
        except KeyError:
            raise KeyError(f"no port {port!r} on lab switch {switch!r}") from None

    def port_state(self, switch: str, port: str) -> PortState:
        sw = self._switches[switch]
        p = self._port(switch, port)
        if p.mode == "trunk":
            if p.trunk_vlans is None:
                vlans = tuple(range(1, 4095)) if sw.model.unset_trunk_is_all else ()
            else:
                vlans = tuple(sorted(set(p.trunk_vlans)))
            native = p.trunk_native_vlan if p.trunk_native_vlan not in (None, 1) else None
            return PortState(port, PortMode.TRUNK, vlans, native)
        if p.mode in (None, "access"):
            return PortState(port, PortMode.ACCESS, (p.access_vlan or 1,))
        return PortState(port, None, tuple(sorted(set(p.trunk_vlans or ()))))  # general mode

    def carries(self, switch: str, port: str, vlan: int) -> bool:
        sw = self._switches[switch]
        p = self._port(switch, port)
        if not sw.link[port] or p.shutdown:
            return False
        return vlan in self.port_state(switch, port).vlans

    def ifindex(self, switch: str, port: str) -> int:
        """The port's SNMP ifIndex as its OS numbers it (what the controller maps traps back with)."""
        sw = self._switches[switch]
        self._port(switch, port)
        try:
            return ifindex(sw.spec.os, port)
        except (KeyError, ValueError):  # a name the OS table does not know: stable per switch anyway
            return 100000 + sw.spec.ports.index(port) + 1

    def description(self, switch: str, port: str) -> str | None:
        return self._port(switch, port).description  # type: ignore[no-any-return]

    def sessions(self, switch: str) -> int:
        """SSH connections accepted so far (including ones that failed to log in)."""
        return self._switches[switch].connections

    def max_concurrent(self, switch: str) -> int:
        """Most sessions that exchanged commands at the same time (interleaved commands)."""
        return self._switches[switch].max_shells

    def stalled(self, switch: str) -> int:
        """Open sessions that the ``hang`` fault has stopped answering."""
        with self._lock:
            return sum(1 for s in self._switches[switch].open_sessions if s.stalled)

    def vlans(self, switch: str) -> list[int]:
        return sorted(v.number for v in self._switches[switch].core.switch_configuration.vlans)

    # -- control ----------------------------------------------------------------------------------
    def set_fault(self, switch: str, kind: str, on: bool, after: int = 0) -> None:
        """``hang``: stall after ``after`` config commands; ``reject``: refuse command ``after + 1``;
        ``hang-login``; ``refuse``. Applies to open sessions too."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown switch fault {kind!r} (known: {', '.join(FAULT_KINDS)})")
        faults = self._switches[switch].faults
        if on:
            faults[kind] = after
        else:
            faults.pop(kind, None)

    def set_link(self, switch: str, port: str, up: bool) -> None:
        self._port(switch, port)
        self._switches[switch].link[port] = up

    def port_link(self, switch: str, port: str) -> bool:
        """Whether the port's link is up (the cable and the body's NIC, not its configuration)."""
        self._port(switch, port)
        return bool(self._switches[switch].link[port])

    def reset_port(self, switch: str, port: str, intent: PortIntent) -> None:
        """Set a port's configuration in process (fast lab reset), on the reactor thread."""
        sw = self._switches[switch]
        p = self._port(switch, port)

        def apply() -> None:
            conf = sw.core.switch_configuration
            for v in set(intent.vlans) | ({intent.native_vlan} if intent.native_vlan else set()):
                conf.add_vlan(conf.new("Vlan", v))
            p.reset()
            p.description = intent.description or None
            if intent.mode is PortMode.TRUNK:
                p.mode = "trunk"
                p.trunk_vlans = sorted(set(intent.vlans))
                p.trunk_native_vlan = intent.native_vlan
            else:
                p.mode = "access"
                p.access_vlan = intent.vlans[0]

        if self._reactor is not None and self._reactor.running:
            threads.blockingCallFromThread(self._reactor, apply)
        else:
            apply()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
