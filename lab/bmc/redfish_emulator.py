"""How the lab plugs into the sushy-tools emulator without changing it (see ``lab.redfish_bmc``).

* ``fresh_emulator_module``: the emulator's Flask app is a module singleton, so each lab executes
  ``sushy_tools.emulator.main`` anew under a private module name: its own app, config and routes.
* ``lab_driver_class``: a ``FakeDriver`` subclass with a fixed power delay (stock: 1-11 s at
  random, applied only when the system is next read), one lock around the driver's
  read-modify-write of its SQLite records, power-change reports, and lies on request.
* ``FaultMiddleware``: per-system faults, outside the auth layer.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import re
import socket
import ssl
import struct
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler

log = logging.getLogger("lab.redfish_bmc")
_copies = itertools.count(1)
_SYSTEM_IN_PATH = re.compile(r"^/redfish/v1/(?:Systems|Chassis|Managers)/([^/]+)")


class EmulatorOwner(Protocol):
    """What the plumbing asks of the lab that owns the emulator (``lab.bmc.redfish.RedfishLab``)."""

    power_delay_s: float

    @property
    def lock(self) -> threading.RLock: ...

    def name_for(self, identity: str) -> str | None: ...

    def faulted(self, name: str, kind: str) -> bool: ...

    def name_for_port(self, port: str) -> str | None: ...

    def slow_for(self, name: str) -> float: ...

    def faulted_system(self, identity: str, kind: str) -> bool: ...

    def claimed_system(self, identity: str) -> bool | None: ...

    def claim_system(self, identity: str, on: bool) -> None: ...

    def observe_power(self, uuid: str, on: bool) -> None: ...

    def count_power_command(self, uuid: str) -> None: ...

    def land_at(self, uuid: str, when: float) -> None: ...

    def cancel_landing(self, uuid: str) -> None: ...


def fresh_emulator_module() -> types.ModuleType:
    """Execute sushy_tools.emulator.main anew under a private name: a new app with its own routes."""
    spec = importlib.util.find_spec("sushy_tools.emulator.main")
    assert spec is not None and spec.origin is not None
    name = f"lab._sushy_emulator_{next(_copies)}"
    copy_spec = importlib.util.spec_from_file_location(name, spec.origin)
    assert copy_spec is not None and copy_spec.loader is not None
    mod = importlib.util.module_from_spec(copy_spec)
    sys.modules[name] = mod  # Flask finds its templates through sys.modules[import_name]
    copy_spec.loader.exec_module(mod)
    return mod


def lab_driver_class(lab: EmulatorOwner, base: type) -> type:
    class LabFakeDriver(base):  # type: ignore[misc]
        """sushy-tools' fake driver with a fixed power delay, a lock, change reports and lies."""

        def _get(self, identity: str) -> dict[str, Any]:
            with lab.lock:
                result: dict[str, Any] = super()._get(identity)
                return result

        def _update(self, system: Any, **changes: Any) -> None:
            with lab.lock:
                if isinstance(system, str):
                    system = self._get(system)
                super()._update(system, **changes)
                lab.observe_power(system["uuid"], system["power_state"] == "On")

        def get_power_state(self, identity: str) -> str:
            real: str = super().get_power_state(identity)
            if lab.faulted_system(identity, "lies"):
                return "On"
            claimed = lab.claimed_system(identity)
            if claimed is not None:
                return "On" if claimed else "Off"
            return real

        def set_power_state(self, identity: str, state: str) -> None:
            with lab.lock:
                uuid = self._get(identity)["uuid"]
                lab.count_power_command(uuid)
                if lab.faulted_system(identity, "phantom"):
                    # Taken and read back as asked; the body's power never changes.
                    lab.claim_system(identity, state not in ("ForceOff", "GracefulShutdown"))
                    return
                before = self._systems[uuid].get("pending_power")
                super().set_power_state(identity, state)
                system = self._systems[uuid]
                pending = system.get("pending_power")
                want = "Off" if state in ("ForceOff", "GracefulShutdown") else "On"
                if pending and pending != before:
                    # a new change: make it land after the lab's fixed delay
                    pending["apply_time"] = time.time() + lab.power_delay_s
                    self._systems[uuid] = system
                    lab.land_at(uuid, pending["apply_time"])
                elif pending and pending["power_state"] != want and "Restart" not in pending["power_state"]:
                    # already in the asked state with an opposite change pending: last command wins
                    system["pending_power"] = None
                    self._systems[uuid] = system
                    lab.cancel_landing(uuid)

    return LabFakeDriver


class FaultMiddleware:
    """Outermost WSGI layer: per-system faults, before authentication."""

    def __init__(self, app: Callable[..., Iterable[bytes]], lab: EmulatorOwner) -> None:
        self.app = app
        self.lab = lab

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # A BMC of its own (its own port) owns every request; on the shared port, the path says whose.
        name = self.lab.name_for_port(str(environ.get("SERVER_PORT", "")))
        if name is None:
            m = _SYSTEM_IN_PATH.match(environ.get("PATH_INFO", ""))
            name = self.lab.name_for(m.group(1)) if m else None
        if name is not None:
            if self.lab.faulted(name, "down"):
                return self._reset(environ, start_response)
            if self.lab.faulted(name, "slow"):
                time.sleep(self.lab.slow_for(name))  # the BMC's own slowness (a fault), per request
            if self.lab.faulted(name, "auth"):
                # The BMC's credentials changed: whatever we send, basic or session, is refused.
                start_response("401 Unauthorized", [("Content-Type", "application/json"),
                                                    ("WWW-Authenticate", 'Basic realm="redfish"')])
                return [b'{"error": {"code": "Base.1.0.InsufficientPrivilege", "message": "unauthorized"}}']
        return self.app(environ, start_response)

    @staticmethod
    def _reset(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        sock = environ.get("werkzeug.socket")
        if sock is not None:
            try:
                # linger 0: the close that follows sends RST, like a BMC that fell over
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Connection", "close")])
        return [b"BMC down\n"]


class QuietHandler(WSGIRequestHandler):
    """Access lines go to debug logging instead of stderr (tests and the lab daemon stay readable).

    Over TLS, the handshake runs here, in the connection's own thread (the listening socket is
    wrapped with ``do_handshake_on_connect=False``, see ``serve_tls``): a client that connects and
    stalls, or refuses the certificate half-way, holds its own thread for a few seconds, never the
    accept loop every other request waits on.
    """

    def handle(self) -> None:
        conn = self.connection
        if isinstance(conn, ssl.SSLSocket):
            try:
                conn.settimeout(HANDSHAKE_S)
                conn.do_handshake()
                conn.settimeout(None)
            except OSError as exc:  # ssl.SSLError and socket timeouts are OSErrors
                log.debug("TLS handshake from %s failed: %s", self.client_address, exc)
                return
        super().handle()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s %s -> %s", self.command, self.path, code)


HANDSHAKE_S = 5.0


def serve_tls(server: BaseWSGIServer, ctx: ssl.SSLContext) -> None:
    """Serve ``server`` (made without TLS) over TLS, handshakes in the connection threads."""
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    server.ssl_context = ctx
