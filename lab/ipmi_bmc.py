"""IPMI BMCs for the lab: one pyghmi ``Bmc`` per server, each on its own UDP port on 127.0.0.1.

pyghmi runs one I/O loop per process: a single I/O thread reads every pyghmi socket (client and
server) and whichever thread calls ``Session.wait_for_rsp`` handles the queued packets. So the
BMCs run in the calling process: one ``IpmiLab`` thread keeps calling ``wait_for_rsp`` and the host
simulators get power callbacks in process. A pyghmi client in the same process (the driver under
test) works too; its own waits may handle BMC packets, which is why the BMC state has a lock.

Two pyghmi quirks are handled here:

* the server answers an RMCP+ open-session request with SHA-1 whatever the client proposed, and a
  client that proposed SHA-256 then crashes in ``_got_rakp2``. The lab's server session refuses
  any proposal whose authentication algorithm is not HMAC-SHA1; the client retries with SHA-1.
* pyghmi's ``_io_sendto`` sets a socket blocking before each send while its I/O thread sets the
  same socket non-blocking before each read; when a send from another thread lands between the
  two, the I/O thread blocks in ``recvfrom`` on a BMC socket that gets no more packets, and every
  pyghmi wait in the process hangs. Each BMC socket is therefore wrapped (``_UdpSocket``): always
  non-blocking, sends through the ``fd`` attribute pyghmi already honours (its eventlet path).
* pyghmi wakes its I/O thread by sending to ``iosockets[0]``. If that first socket were a BMC's
  IPv4 server socket, wake-ups to ``::ffff:127.0.0.1`` would fail and closing it would break the
  loop, so a client-style socket is made first (``_prime_pyghmi``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.serversession as serversession
import pyghmi.ipmi.private.session as ipmisession

from lab.bmc_common import DueTimer, Faults, Notifier

log = logging.getLogger(__name__)

# RMCP+ status codes (IPMI 2.0 table 13-15)
_RMCP_NO_CIPHER_MATCH = 0x11
_RMCP_UNAUTHORIZED_NAME = 0x0D
_AUTH_HMAC_SHA1 = 1

_prime_lock = threading.Lock()


def _prime_pyghmi() -> None:
    """Make sure pyghmi's first socket (its wake-up socket) is a client socket, not a BMC's."""
    with _prime_lock:
        if not ipmisession.iosockets:
            sock = ipmisession.Session._assignsocket()
            # _assignsocket counts a client use of the socket; give it back to the pool
            ipmisession.Session.socketpool[sock] -= 1


@dataclass
class IpmiSystemSpec:
    name: str
    power_on: bool = False
    boot_device: str = "default"


@dataclass
class _Server:
    on: bool
    boot_device: str
    pending: bool | None = None  # target of a power change not yet landed


class _LabServerSession(serversession.ServerSession):
    """A server session that refuses non-SHA-1 proposals and answers unknown users."""

    def create_open_session_response(self, request: bytearray) -> bytearray:
        if request[12] & 0x3F != _AUTH_HMAC_SHA1:
            # Non-zero status: the pyghmi client then retries proposing HMAC-SHA1.
            return bytearray([request[0], _RMCP_NO_CIPHER_MATCH, 0, 0]) + request[4:8]
        resp: bytearray = super().create_open_session_response(request)
        return resp

    def _got_rakp1(self, data: bytearray) -> None:
        namelen = data[27]
        name = bytes(data[28 : 28 + namelen]).decode("utf-8", "replace")
        if namelen and self.authdata.get(name) is None:
            # Real BMCs refuse an unknown name in RAKP2; stock pyghmi stays silent (client times out)
            payload = bytearray([data[0], _RMCP_UNAUTHORIZED_NAME, 0, 0]) + self.clientsessionid
            self.send_payload(payload, ipmisession.constants.payload_types["rakp2"], retry=False)
            return
        super()._got_rakp1(data)

    def process_pktqueue(self) -> None:
        if self.bmc.lab_faulted("down"):
            self.pktqueue.clear()
            return
        super().process_pktqueue()

    def handle_client_request(self, request: dict[str, Any]) -> None:
        if self.bmc.lab_faulted("down"):
            return
        if self.bmc.lab_faulted("slow"):
            # Answer later from a timer so a slow BMC does not stall the shared pyghmi loop.
            t = threading.Timer(self.bmc.lab.slow_s, super().handle_client_request, args=(request,))
            t.daemon = True
            t.start()
            return
        super().handle_client_request(request)


class _UdpSocket:
    """A BMC's UDP socket as pyghmi sees it: ``setblocking`` is ignored (always non-blocking)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.fd = sock  # pyghmi's _io_sendto sends through ``.fd`` when present

    def setblocking(self, flag: bool) -> None:
        return None

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.fd, attr)


class _LabBmc(pyghmi_bmc.Bmc):  # type: ignore[misc]
    def __init__(self, lab: IpmiLab, name: str, authdata: dict[str, str]) -> None:
        super().__init__(authdata, port=0, address="127.0.0.1")
        # pyghmi keys server sessions by ``self.port``; with port 0 it must be the bound port.
        self.port = self.serversocket.getsockname()[1]
        real = self.serversocket
        wrapped = _UdpSocket(real)
        handlers = ipmisession.Session.bmc_handlers
        handlers[wrapped] = handlers.pop(real)
        socks = ipmisession.iosockets
        socks[socks.index(real)] = wrapped
        self.serversocket = wrapped
        self.lab = lab
        self.name = name

    def lab_faulted(self, kind: str) -> bool:
        return self.lab.faulted(self.name, kind)

    def sessionless_data(self, data: bytes, sockaddr: Any) -> None:
        if self.lab_faulted("down"):
            return
        if len(data) >= 22:
            b = bytearray(data)
            if b[0] == 6 and b[2:4] == b"\xff\x07" and b[4] == 6 and b[5] == 16:
                _LabServerSession(
                    self.authdata, self.kg, sockaddr, self.serversocket, b[16:], self.uuid, bmc=self
                )
                return
        super().sessionless_data(data, sockaddr)

    # --- chassis control, translated to the lab's true state -------------------------------
    def get_power_state(self) -> str:
        if self.lab_faulted("lies"):
            return "on"
        return "on" if self.lab.power(self.name) else "off"

    def power_off(self) -> None:
        self.lab._request_power(self.name, False)

    def power_shutdown(self) -> None:
        self.lab._request_power(self.name, False)

    def power_on(self) -> None:
        self.lab._request_power(self.name, True)

    def power_reset(self) -> None:
        self.lab._request_power(self.name, True, cycle=True)

    def power_cycle(self) -> None:
        self.lab._request_power(self.name, True, cycle=True)

    def get_boot_device(self) -> str:
        return self.lab.boot_device(self.name)

    def set_boot_device(self, bootdevice: str) -> None:
        self.lab._set_boot_device(self.name, bootdevice)


class IpmiLab:
    """IPMI BMCs for a set of servers, served from a thread of this process."""

    def __init__(
        self,
        systems: list[IpmiSystemSpec],
        users: dict[str, str],
        power_delay_s: float = 1.0,
        state_dir: Path | None = None,
        slow_s: float = 0.5,
    ) -> None:
        self.power_delay_s = power_delay_s
        self.slow_s = slow_s  # added to every IPMI command answer while "slow" is on
        self.state_dir = state_dir  # unused: IPMI state lives in memory; kept for symmetry
        self._users = dict(users)
        self._specs = {s.name: s for s in systems}
        self._servers = {s.name: _Server(on=s.power_on, boot_device=s.boot_device) for s in systems}
        self._lock = threading.RLock()
        self._faults = Faults()
        self._bmcs: dict[str, _LabBmc] = {}
        # made here, not in start(): a lab with no IPMI servers is never started but is subscribed to
        self._notifier = Notifier("ipmi-lab")
        self._due = DueTimer("ipmi-lab", self._land)
        self._loop: threading.Thread | None = None
        self._running = False

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> dict[str, int]:
        """Bind one UDP port per server on 127.0.0.1; return {server: port}."""
        _prime_pyghmi()
        for name in self._specs:
            self._bmcs[name] = _LabBmc(self, name, self._users)
        self._running = True
        self._loop = threading.Thread(target=self._serve, name="ipmi-lab-loop", daemon=True)
        self._loop.start()
        return self.ports()

    def ports(self) -> dict[str, int]:
        return {name: bmc.port for name, bmc in self._bmcs.items()}

    def port(self, name: str) -> int:
        return self._bmcs[name].port

    def stop(self) -> None:
        self._running = False
        _unregister(list(self._bmcs.values()))
        self._bmcs.clear()
        if self._loop is not None:
            self._loop.join(timeout=5)
        self._due.close()
        self._notifier.close()

    def _serve(self) -> None:
        while self._running:
            try:
                ipmisession.Session.wait_for_rsp(timeout=0.2)
            except Exception:  # one bad packet must not stop every BMC
                log.exception("IPMI lab loop")

    # --- in-process truth and controls ----------------------------------------------------
    def power(self, name: str) -> bool:
        with self._lock:
            return self._servers[name].on

    def pending(self, name: str) -> bool | None:
        """Target of a power change that has not landed yet (None: nothing pending)."""
        with self._lock:
            return self._servers[name].pending

    def boot_device(self, name: str) -> str:
        with self._lock:
            return self._servers[name].boot_device

    def subscribe(self, cb: Callable[[str, bool], None]) -> None:
        self._notifier.subscribe(cb)

    def set_boot_device(self, name: str, device: str) -> None:
        """Set the next boot device directly (lab setup), as ``ipmitool chassis bootdev`` would."""
        self._set_boot_device(name, device)

    def press_power_button(self, name: str) -> None:
        """Hard off now, as if someone held the power button (the controller is not told)."""
        self._set_now(name, False)

    def set_power(self, name: str, on: bool) -> None:
        self._set_now(name, on)

    def set_fault(self, name: str, kind: str, on: bool) -> None:
        if name not in self._servers:
            raise KeyError(name)
        self._faults.set(name, kind, on)

    def faulted(self, name: str, kind: str) -> bool:
        bucket: set[str] = getattr(self._faults, kind)
        return name in bucket

    def reset(self, name: str, power_on: bool) -> None:
        """Back to a clean server: no faults, default boot device, the given power, nothing pending."""
        self._faults.clear(name)
        with self._lock:
            self._servers[name].boot_device = "default"
        self._set_now(name, power_on)

    # --- used by the BMC handlers ---------------------------------------------------------
    def _request_power(self, name: str, on: bool, cycle: bool = False) -> None:
        with self._lock:
            srv = self._servers[name]
            if cycle and srv.on:
                self._apply(name, False)
            if srv.on == on and not cycle:
                srv.pending = None  # last command wins: a pending opposite change is dropped
                self._due.cancel(name)
                return
            srv.pending = on
        self._due.schedule(name, time.time() + self.power_delay_s)

    def _set_boot_device(self, name: str, dev: str) -> None:
        with self._lock:
            self._servers[name].boot_device = dev

    def _land(self, name: str) -> None:
        with self._lock:
            srv = self._servers[name]
            if srv.pending is None:
                return
            target, srv.pending = srv.pending, None
            self._apply(name, target)

    def _set_now(self, name: str, on: bool) -> None:
        with self._lock:
            self._servers[name].pending = None
            self._due.cancel(name)
            self._apply(name, on)

    def _apply(self, name: str, on: bool) -> None:
        # caller holds the lock
        srv = self._servers[name]
        if srv.on != on:
            srv.on = on
            self._notifier.publish(name, on)


def _unregister(bmcs: list[_LabBmc]) -> None:
    """Take BMC sockets out of pyghmi's process-wide loop and close them."""
    if not bmcs:
        return  # (never started: pyghmi's I/O thread may not exist, and _io_wait would never return)
    handlers = ipmisession.Session.bmc_handlers
    for bmc in bmcs:
        handlers.pop(bmc.serversocket, None)
        for addr in list(handlers):
            per_port = handlers.get(addr)
            if isinstance(per_port, dict) and isinstance(per_port.get(bmc.port), serversession.ServerSession):
                per_port.pop(bmc.port, None)
                if not per_port:
                    handlers.pop(addr, None)
        try:
            ipmisession.iosockets.remove(bmc.serversocket)
        except ValueError:
            pass
    # Let pyghmi's I/O thread finish a loop without these sockets before closing them: a closed
    # socket in a select() set would kill that thread.
    ipmisession._io_wait(0.02)
    for bmc in bmcs:
        try:
            bmc.serversocket.fd.close()
        except OSError:
            pass


__all__ = ["IpmiLab", "IpmiSystemSpec"]
