"""From the names in the definitions (BMC kind, switch OS, storage kind) to driver instances.

Credentials are resolved from their references here, once, and registered with the masker so no
log line or error can carry them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aimctl.drivers.protocols import BootConfig, Hardware, PortIntent, Power, Snapshots, StorageAccess, SwitchPorts
from aimctl.errors import OperatorError
from aimctl.model import Server, Storage, Switch
from aimctl.secrets import resolve


def render_switch_lines(os_name: str, intents: list[PortIntent]) -> list[str]:
    from aimctl.drivers.switch import render_lines

    return render_lines(os_name, intents)


def _bmc_url(server: Server) -> str:
    b = server.bmc
    scheme = "https" if b.tls else "http"
    return f"{scheme}://{b.address}" + (f":{b.port}" if b.port else "")


def make_power(name: str, server: Server, timeout_s: float = 5.0) -> Power:
    b = server.bmc
    password = resolve(b.credentials.password)
    if b.kind == "redfish":
        from aimctl.drivers.redfish import RedfishPower

        return RedfishPower(_bmc_url(server), b.system_id or "System.Embedded.1", b.credentials.username, password,
                            timeout_s=timeout_s, name=name)
    from aimctl.drivers.ipmi import IpmiPower

    return IpmiPower(b.address, b.port or 623, b.credentials.username, password, timeout_s=timeout_s, name=name)


def make_bootcfg(name: str, server: Server, boot_dir: Path, power: Power | None = None) -> BootConfig:
    b = server.bmc
    if b.kind == "redfish":
        from aimctl.drivers.redfish_boot import RedfishBootConfig

        return RedfishBootConfig(_bmc_url(server), b.system_id or "System.Embedded.1", b.credentials.username,
                                 resolve(b.credentials.password), boot_nic=server.boot_nic, name=name)
    from aimctl.drivers.ipxe import IpxeBootConfig

    return IpxeBootConfig(name, boot_dir, power or make_power(name, server))  # type: ignore[arg-type]


def make_hardware(name: str, server: Server, power: Power | None = None) -> Hardware:
    """Inventory and health reads; IPMI shares the server's power driver (one pyghmi session)."""
    b = server.bmc
    if b.kind == "redfish":
        from aimctl.drivers.redfish import RedfishClient
        from aimctl.drivers.redfish_hw import RedfishHardware

        client = RedfishClient(_bmc_url(server), b.system_id or "System.Embedded.1", b.credentials.username,
                               resolve(b.credentials.password), name=name)
        return RedfishHardware(client)
    from aimctl.drivers.ipmi import IpmiPower
    from aimctl.drivers.ipmi_hw import IpmiHardware

    p = power if isinstance(power, IpmiPower) else make_power(name, server)
    return IpmiHardware(p)  # type: ignore[arg-type]


def make_switch(name: str, sw: Switch, command_timeout_s: float = 10.0) -> SwitchPorts:
    from aimctl.drivers.switch import NetmikoSwitch

    c = sw.credentials
    return NetmikoSwitch(name, sw.os, sw.address, sw.port, c.username, resolve(c.password),
                         enable_password=resolve(c.enable) if c.enable else None,
                         command_timeout_s=command_timeout_s)


def make_storage(name: str, st: Storage) -> StorageAccess:
    from aimctl.drivers.tgt import LocalRunner, SshRunner, TgtStorage

    if st.kind != "tgt":
        raise OperatorError(f"storage {name}: no driver for kind {st.kind!r}")
    if st.management == "local":
        env = {"TGT_IPC_SOCKET": st.control_socket} if st.control_socket else {}
        runner: Any = LocalRunner(env=env)
    else:
        if st.credentials is None:
            raise OperatorError(f"storage {name}: ssh management needs credentials")
        runner = SshRunner.from_url(st.management, resolve(st.credentials.password), host_key=st.host_key)
    return TgtStorage(st.portal, st.port, runner)


def make_snapshots(name: str, st: Storage, storage: StorageAccess) -> Snapshots:
    """Snapshots of ``st``'s LUNs, sharing ``storage``'s runner and lock (one tgtd, one session)."""
    from aimctl.drivers.tgt import TgtStorage
    from aimctl.drivers.tgt_snap import TgtSnapshots

    if not isinstance(storage, TgtStorage):
        raise OperatorError(f"storage {name}: no snapshot driver for kind {st.kind!r}")
    return TgtSnapshots(storage, st.snapshot_dir)
class Guarded:
    """A driver whose every method first asks ``guard`` (which raises to refuse): a controller that
    stopped leading makes no device call, even from a thread that was mid-step when it lost the lead."""

    def __init__(self, driver: Any, guard: Callable[[], None]) -> None:
        self._driver, self._guard = driver, guard

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._driver, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._guard()
            return attr(*args, **kwargs)

        return call


class Drivers:
    """One driver per device, built on first use and kept (sessions are reused across steps)."""

    def __init__(self, defs: Any, boot_dir: Path, switch_timeout_s: float = 10.0,
                 guard: Callable[[], None] | None = None) -> None:
        self.defs = defs
        self.boot_dir = boot_dir
        self.switch_timeout_s = switch_timeout_s  # how long one switch line may go unanswered
        self._guard = guard
        self._lock = threading.RLock()  # a boot driver may build its server's power driver
        self._cache: dict[tuple[str, str], Any] = {}

    def _get(self, kind: str, name: str, make: Any) -> Any:
        with self._lock:
            if (kind, name) not in self._cache:
                self._cache[(kind, name)] = make()
            driver = self._cache[(kind, name)]
        # Hardware health is only ever read (every member's poller keeps it warm); the rest can change
        # the world and asks the guard first.
        return Guarded(driver, self._guard) if self._guard is not None and kind != "hardware" else driver

    def instances(self, kind: str) -> dict[str, Any]:
        """The drivers of one kind built so far (``switch``, ``power``...), by device name."""
        with self._lock:
            return {name: drv for (k, name), drv in self._cache.items() if k == kind}

    def power(self, server: str) -> Power:
        return self._get("power", server, lambda: make_power(server, self.defs.servers[server]))  # type: ignore[no-any-return]

    def bootcfg(self, server: str) -> BootConfig:
        srv = self.defs.servers[server]
        return self._get("boot", server, lambda: make_bootcfg(  # type: ignore[no-any-return]
            server, srv, self.boot_dir, self.power(server) if srv.bmc.kind == "ipmi" else None))

    def hardware(self, server: str) -> Hardware:
        srv = self.defs.servers[server]
        return self._get("hardware", server, lambda: make_hardware(  # type: ignore[no-any-return]
            server, srv, self.power(server) if srv.bmc.kind == "ipmi" else None))

    def switch(self, name: str) -> SwitchPorts:
        return self._get("switch", name, lambda: make_switch(  # type: ignore[no-any-return]
            name, self.defs.switches[name], self.switch_timeout_s))

    def storage(self, name: str) -> StorageAccess:
        return self._get("storage", name, lambda: make_storage(name, self.defs.storage[name]))  # type: ignore[no-any-return]

    def snapshots(self, name: str) -> Snapshots:
        return self._get("snapshots", name, lambda: make_snapshots(  # type: ignore[no-any-return]
            name, self.defs.storage[name], self.storage(name)))
