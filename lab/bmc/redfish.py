"""Redfish BMCs for the lab: the sushy-tools emulator (fake driver) served in process.

Everything here extends the emulator from the outside (LAB.md):

* each ``RedfishLab`` loads its own copy of ``sushy_tools.emulator.main`` (a Flask app is a module
  singleton there), so several labs can live in one process, each with its own config, state dir
  and routes;
* a ``FakeDriver`` subclass is installed as that copy's ``fakedriver.FakeDriver``: it applies
  power changes after a fixed delay (stock: 1-11 s at random, and only when next read), serialises
  the driver's read-modify-write of its SQLite records, reports real power changes, and lies on
  request;
* a ``DueTimer`` reads a system when its pending change is due, so changes land on time;
* NetworkAdapters/NetworkDeviceFunctions with iSCSIBoot come from ``lab.redfish_nic``;
* a SessionService (tokens, as real BMCs hand out) from ``lab.redfish_sessions``; Basic auth
  from a bcrypt htpasswd file keeps working;
* a WSGI wrapper outside the auth layer injects faults per system ("down": the connection is
  reset; "slow": +``slow_s`` (or the fault's own delay) per request; "lies": power reads On; "auth":
  401 for every request, the BMC's credentials changed; "phantom": power commands are taken and read
  back as asked, but the power never changes);
* with ``per_system_ports``, each system also gets a listener of its own, as each real server has
  its own BMC: every request on that port is that BMC's (service root and session login included),
  so a slow BMC is slow from its first contact on.

The pieces that plug into the emulator (module copy, driver subclass, fault layer) are in
``lab.redfish_emulator``; the NIC resources in ``lab.redfish_nic``.
"""

from __future__ import annotations

import copy
import logging
import sys
import threading
import types
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
from werkzeug.serving import BaseWSGIServer, make_server

from aimctl.drivers.protocols import IscsiBoot
from lab.bmc import redfish_hw, redfish_nic
from lab.bmc.common import DueTimer, Faults, Notifier
from lab.bmc.redfish_emulator import FaultMiddleware, QuietHandler, fresh_emulator_module, lab_driver_class, serve_tls
from lab.bmc.hardware import HardwareState
from lab.bmc.redfish_sessions import SessionLayer

log = logging.getLogger(__name__)


@dataclass
class RedfishSystemSpec:
    name: str
    power_on: bool = False
    boot_nic: str = "NIC.Integrated.1-1"
    model: str = "PowerEdge R720"
    cores: int = 16
    memory_gb: int = 192
    macs: list[str] | None = None  # declared MACs; else the lab makes one up


class RedfishLab:
    """A set of Redfish systems behind one HTTP(S) listener on 127.0.0.1."""

    def __init__(
        self,
        systems: list[RedfishSystemSpec],
        state_dir: Path,
        users: dict[str, str],
        power_delay_s: float = 1.0,
        tls: bool = False,
        slow_s: float = 0.5,
        per_system_ports: bool = False,
    ) -> None:
        self.power_delay_s = power_delay_s
        self.per_system_ports = per_system_ports
        self._bmc_servers: dict[str, tuple[BaseWSGIServer, threading.Thread]] = {}
        self._port_names: dict[str, str] = {}  # listener port (as WSGI's SERVER_PORT) -> system name
        self.slow_s = slow_s  # added to every request for a system while "slow" is on
        self.tls = tls
        self.state_dir = Path(state_dir)
        self._users = dict(users)
        self._specs = {s.name: s for s in systems}
        self._uuids = {s.name: str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"{s.name}.redfish.lab")) for s in systems}
        self._names = {u: n for n, u in self._uuids.items()}
        self._lock = threading.RLock()
        self._faults = Faults(self._specs)
        self._power_seen: dict[str, bool] = {}
        # power requests each system received over Redfish (ComputerSystem.Reset), for tests and status
        self.power_commands: dict[str, int] = {s.name: 0 for s in systems}
        self.iscsi = redfish_nic.IscsiStore()
        self.hardware = HardwareState()
        self._notifier = Notifier("redfish-lab")
        self._due = DueTimer("redfish-lab", self._land)
        self._module: types.ModuleType | None = None
        self._driver: Any = None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        mod = fresh_emulator_module()
        self._module = mod
        # the app looks the driver class up through its module's ``fakedriver`` name
        upstream = mod.fakedriver.FakeDriver
        mod.fakedriver = types.SimpleNamespace(FakeDriver=lab_driver_class(self, upstream))  # type: ignore[attr-defined]
        config: dict[str, Any] = {
            "SUSHY_EMULATOR_FAKE_DRIVER": True,
            "SUSHY_EMULATOR_STATE_DIR": str(self.state_dir / "sushy"),
            "SUSHY_EMULATOR_FAKE_SYSTEMS": [self._fake_system(s) for s in self._specs.values()],
            # Dell-style: each system has a chassis with the same id (hosts its NetworkAdapters)
            "SUSHY_EMULATOR_CHASSIS": [{"Id": u, "Name": f"{n}-chassis", "UUID": u} for n, u in self._uuids.items()],
        }
        if self._users:
            config["SUSHY_EMULATOR_AUTH_FILE"] = str(self._write_htpasswd())
        app = mod.app
        app.configure(extra_config=config)
        for name, spec in self._specs.items():
            self.iscsi.add(self._uuids[name], spec.boot_nic)
        redfish_nic.register_routes(app, self.iscsi, self._uuid_for)
        for name, spec in self._specs.items():
            macs = spec.macs or [n["mac"] for n in self._fake_system(spec)["nics"]]
            self.hardware.add(name, spec.model, spec.cores, spec.memory_gb, macs)
        redfish_hw.register_routes(app, self.hardware, self.name_for)
        basic = app.wsgi_app  # the emulator behind its Basic-auth layer (when users are set)
        inner = basic.app if self._users else basic
        app.wsgi_app = FaultMiddleware(SessionLayer(basic, inner, self._users), self)
        self._driver = app.systems  # build the driver (and its SQLite) before the first request
        for u in self._uuids.values():
            self._power_seen[u] = self._driver._get(u)["power_state"] == "On"
        # One certificate for every listener (the overlay names one CA file for the lab's BMCs).
        ssl_context = self._ssl_context() if self.tls else None
        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
        if ssl_context is not None:
            serve_tls(self._server, ssl_context)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="redfish-lab-http",
            daemon=True,
        )
        self._thread.start()
        if self.per_system_ports:
            for name in self._specs:
                srv = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
                if ssl_context is not None:
                    serve_tls(srv, ssl_context)
                th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"redfish-lab-{name}", daemon=True)
                th.start()
                self._bmc_servers[name] = (srv, th)
                self._port_names[str(srv.server_port)] = name
        return int(self._server.server_port)

    def port_of(self, name: str) -> int:
        """The port of ``name``'s own BMC listener (``per_system_ports``), else the shared one."""
        got = self._bmc_servers.get(name)
        return int(got[0].server_port) if got else self.port

    def name_for_port(self, port: str) -> str | None:
        return self._port_names.get(port)

    def stop(self) -> None:
        for srv, th in self._bmc_servers.values():
            srv.shutdown()
            srv.server_close()
            th.join(timeout=5)
        self._bmc_servers.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._due.close()
        self._notifier.close()
        if self._module is not None:
            sys.modules.pop(self._module.__name__, None)
        self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the lab first"
        return int(self._server.server_port)

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    # --- names and paths -------------------------------------------------------------------
    def system_path(self, name: str) -> str:
        return f"/redfish/v1/Systems/{self._uuids[name]}"

    def nic_function_path(self, name: str) -> str:
        adapter, function = self.iscsi.functions[self._uuids[name]]
        return f"/redfish/v1/Chassis/{self._uuids[name]}/NetworkAdapters/{adapter}/NetworkDeviceFunctions/{function}"

    # --- in-process truth and controls ----------------------------------------------------
    def power(self, name: str) -> bool:
        with self._lock:
            return bool(self._driver._get(self._uuids[name])["power_state"] == "On")

    def pending(self, name: str) -> bool | None:
        """Target of a power change that has not landed yet (None: nothing pending)."""
        with self._lock:
            p = self._driver._systems[self._uuids[name]].get("pending_power")
        return None if not p else p["power_state"] != "Off"

    def boot_override(self, name: str) -> str:
        return str(self._driver.get_boot_device(self._uuids[name]))

    def iscsi_boot(self, name: str) -> dict[str, Any] | None:
        """The boot NIC function's iSCSIBoot as the firmware holds it (CHAPSecret included);
        None when no initiator name is configured."""
        data = self.iscsi.get(self._uuids[name])
        return data if data.get("InitiatorName") else None

    def subscribe(self, cb: Callable[[str, bool], None]) -> None:
        self._notifier.subscribe(cb)

    def watch_boot_writes(self, cb: Callable[[str, dict[str, Any]], None]) -> None:
        """``cb(server, changes)`` after each iSCSIBoot PATCH a Redfish client applied."""
        self.iscsi.watchers.append(lambda u, changes: cb(self._names[u], changes))

    def set_iscsi_boot(self, name: str, boot: IscsiBoot) -> None:
        """Configure the firmware directly (lab setup: a server's home persona before the controller runs)."""
        u = self._uuids[name]
        self.iscsi.clear(u)
        problem = self.iscsi.patch(
            u,
            {
                "InitiatorName": boot.initiator,
                "PrimaryTargetName": boot.target,
                "PrimaryTargetIPAddress": boot.portal_host,
                "PrimaryTargetTCPPort": boot.portal_port,
                "PrimaryLUN": boot.lun,
                "AuthenticationMethod": "CHAP" if boot.chap_user else "None",
                "CHAPUsername": boot.chap_user or None,
                "CHAPSecret": boot.chap_secret or None,
            },
        )
        if problem:
            raise ValueError(problem)
        with self._lock:
            self._driver._update(u, boot_device="UefiTarget")

    def press_power_button(self, name: str) -> None:
        self.set_power(name, False)

    def set_power(self, name: str, on: bool) -> None:
        u = self._uuids[name]
        with self._lock:
            self._due.cancel(u)
            self._driver._update(u, power_state="On" if on else "Off", pending_power=None)

    def set_fault(self, name: str, kind: str, on: bool, delay_s: float | None = None) -> None:
        """``delay_s``: for "slow", seconds added to every request (default ``slow_s``)."""
        self._faults.set(name, kind, on, delay_s)

    def slow_for(self, name: str) -> float:
        return self._faults.delay_for(name, self.slow_s)

    def faulted(self, name: str, kind: str) -> bool:
        return self._faults.has(name, kind)

    def reset(self, name: str, power_on: bool) -> None:
        self._faults.clear(name)
        self.hardware.reset(name)
        u = self._uuids[name]
        self.iscsi.clear(u)
        with self._lock:
            self._driver._update(u, boot_device="Hdd")
        self.set_power(name, power_on)

    # --- for the emulator plumbing (lab.bmc.redfish_emulator.EmulatorOwner) ---------------
    @property
    def lock(self) -> threading.RLock:
        """Held around the fake driver's read-modify-write of its records, and by this class."""
        return self._lock

    def _uuid_for(self, identity: str) -> str | None:
        if identity in self._names:
            return identity
        return self._uuids.get(identity)

    def name_for(self, identity: str) -> str | None:
        """The server name of a system id (UUID or name); None for an unknown one."""
        u = self._uuid_for(identity)
        return self._names.get(u) if u else None

    def faulted_system(self, identity: str, kind: str) -> bool:
        name = self.name_for(identity)
        return name is not None and self.faulted(name, kind)

    def claimed_system(self, identity: str) -> bool | None:
        name = self.name_for(identity)
        return None if name is None else self._faults.claimed(name)

    def claim_system(self, identity: str, on: bool) -> None:
        name = self.name_for(identity)
        if name is not None:
            self._faults.claim(name, on)

    def observe_power(self, u: str, on: bool) -> None:
        # caller holds the lock, so changes are published in the order they happened
        if self._power_seen.get(u) != on:
            self._power_seen[u] = on
            self._notifier.publish(self._names[u], on)

    def count_power_command(self, u: str) -> None:
        self.power_commands[self._names[u]] += 1

    def land_at(self, u: str, when: float) -> None:
        """Apply the system's pending power change at ``when`` (the fake driver applies it when read)."""
        self._due.schedule(u, when)

    def cancel_landing(self, u: str) -> None:
        self._due.cancel(u)

    def _land(self, u: str) -> None:
        self._driver._get(u)  # the fake driver applies a due change when the system is read

    def _fake_system(self, spec: RedfishSystemSpec) -> dict[str, Any]:
        n = list(self._specs).index(spec.name) + 1
        nics = [{"mac": m, "ip": f"10.99.{n // 256}.{n % 256}"} for m in spec.macs] if spec.macs else \
            [{"mac": f"52:54:00:aa:{n // 256:02x}:{n % 256:02x}", "ip": f"10.99.{n // 256}.{n % 256}"}]
        return copy.deepcopy(
            {
                "uuid": self._uuids[spec.name],
                "name": spec.name,
                "power_state": "On" if spec.power_on else "Off",
                "boot_device": "Hdd",
                "boot_mode": "UEFI",
                "external_notifier": False,
                "nics": nics,
            }
        )

    def _write_htpasswd(self) -> Path:
        path = self.state_dir / "htpasswd"
        # sushy-tools reads bcrypt entries only; cost 5 keeps per-request checks cheap in the lab
        lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(5)).decode()}" for u, p in self._users.items()]
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    def _ssl_context(self) -> Any:
        from lab.bmc.selfsigned import server_context

        return server_context(self.state_dir)


__all__ = ["RedfishLab", "RedfishSystemSpec"]
