"""pyghmi plumbing for the lab's IPMI BMCs (``lab.ipmi_bmc``): server sessions, sockets, the loop.

pyghmi runs one I/O loop per process: a single I/O thread reads every pyghmi socket (client and
server) and whichever thread calls ``Session.wait_for_rsp`` handles the queued packets.

pyghmi quirks handled here:

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
  loop, so a client-style socket is made first (``prime_pyghmi``).
* the stock server ignores a RAKP1 with an unknown user name, so the client times out; real BMCs
  answer RAKP2 "unauthorized name" (0x0d), and so does the lab.
* the stock server has no way to leave the loop: ``unregister`` takes BMC sockets out of it.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Protocol

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.session as ipmisession
from pyghmi.ipmi.private import serversession

from lab.bmc.hardware import HardwareState, fru_product_area, sel_record


class BmcOwner(Protocol):
    """What a lab BMC asks of the lab that owns it (``lab.bmc.ipmi.IpmiLab``): the servers' truth."""

    hardware: HardwareState  # inventory and event log (FRU, SEL)

    def faulted(self, name: str, kind: str) -> bool: ...

    def slow_for(self, name: str) -> float: ...

    def claimed(self, name: str) -> bool | None: ...

    def power(self, name: str) -> bool: ...

    def request_power(self, name: str, on: bool, cycle: bool = False) -> None: ...

    def boot_device(self, name: str) -> str: ...

    def set_boot_device(self, name: str, device: str) -> None: ...


# RMCP+ status codes (IPMI 2.0 table 13-15)
_RMCP_NO_CIPHER_MATCH = 0x11
_RMCP_UNAUTHORIZED_NAME = 0x0D
_INSUFFICIENT_PRIVILEGE = 0xD4  # IPMI completion code
_AUTH_HMAC_SHA1 = 1

_prime_lock = threading.Lock()


def prime_pyghmi() -> None:
    """Make sure pyghmi's first socket (its wake-up socket) is a client socket, not a BMC's."""
    with _prime_lock:
        if not ipmisession.iosockets:
            sock = ipmisession.Session._assignsocket()
            # _assignsocket counts a client use of the socket; give it back to the pool
            ipmisession.Session.socketpool[sock] -= 1


class _LabServerSession(serversession.ServerSession):  # type: ignore[misc]
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
        # Real BMCs refuse an unknown name in RAKP2; stock pyghmi stays silent (client times out).
        # With "auth" on, the BMC's credentials were changed: our user is no longer known to it.
        if (namelen and self.authdata.get(name) is None) or self.bmc.lab_faulted("auth"):
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
        if self.bmc.lab_faulted("auth"):
            # A session opened before the credentials changed is refused from now on.
            self.send_ipmi_response(code=_INSUFFICIENT_PRIVILEGE)
            return
        if self.bmc.lab_faulted("slow"):
            # Answer later from a timer so a slow BMC does not stall the shared pyghmi loop.
            t = threading.Timer(self.bmc.lab.slow_for(self.bmc.name), super().handle_client_request, args=(request,))
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


class LabBmc(pyghmi_bmc.Bmc):  # type: ignore[misc]
    def __init__(self, lab: BmcOwner, name: str, authdata: dict[str, str]) -> None:
        super().__init__(authdata, port=0, address="127.0.0.1")
        # pyghmi keys server sessions by ``self.port``; with port 0 it must be the bound port.
        real: socket.socket = self.__dict__["serversocket"]  # set by IpmiServer.__init__
        self.port: int = real.getsockname()[1]
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
                _LabServerSession(self.authdata, self.kg, sockaddr, self.serversocket, b[16:], self.uuid, bmc=self)
                return
        super().sessionless_data(data, sockaddr)

    # --- chassis control, translated to the lab's true state -------------------------------
    def get_power_state(self) -> str:
        if self.lab_faulted("lies"):
            return "on"
        claimed = self.lab.claimed(self.name)
        if claimed is not None:
            return "on" if claimed else "off"
        return "on" if self.lab.power(self.name) else "off"

    def power_off(self) -> None:
        self.lab.request_power(self.name, False)

    def power_shutdown(self) -> None:
        self.lab.request_power(self.name, False)

    def power_on(self) -> None:
        self.lab.request_power(self.name, True)

    def power_reset(self) -> None:
        self.lab.request_power(self.name, True, cycle=True)

    def power_cycle(self) -> None:
        self.lab.request_power(self.name, True, cycle=True)

    def get_boot_device(self) -> str:
        return self.lab.boot_device(self.name)

    # --- storage commands: FRU inventory and the SEL (IPMI 2.0 sections 34 and 31) -------------
    def handle_raw_request(self, request: dict[str, Any], session: Any) -> None:
        if request["netfn"] == NETFN_STORAGE and request["command"] in _STORAGE:
            try:
                code, data = _STORAGE[request["command"]](self, bytes(request.get("data") or b""))
            except (IndexError, ValueError):  # a malformed request: "invalid data field", as a real BMC says
                code, data = 0xCC, b""
            session.send_ipmi_response(data=list(data), code=code)
            return
        super().handle_raw_request(request, session)

    def _fru(self) -> bytes:
        b = self.lab.hardware.get(self.name)
        return fru_product_area("Dell Inc.", b.model, f"LAB-{self.name}")

    def _fru_info(self, req: bytes) -> tuple[int, bytes]:
        size = len(self._fru())
        return 0, bytes([size & 0xFF, size >> 8, 0])

    def _fru_read(self, req: bytes) -> tuple[int, bytes]:
        data = self._fru()
        offset, count = req[1] | req[2] << 8, req[3]
        chunk = data[offset:offset + count]
        return 0, bytes([len(chunk)]) + chunk

    def _sel_info(self, req: bytes) -> tuple[int, bytes]:
        n = len(self.lab.hardware.get(self.name).entries)
        return 0, bytes([0x51, n & 0xFF, n >> 8, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x02])

    def _sel_reserve(self, req: bytes) -> tuple[int, bytes]:
        return 0, b"\x01\x00"

    def _sel_entry(self, req: bytes) -> tuple[int, bytes]:
        entries = self.lab.hardware.get(self.name).entries
        if not entries:
            return 0xCB, b""
        ids = [int(e["Id"]) for e in entries]
        want = req[2] | req[3] << 8
        if want == 0x0000:
            i = 0
        elif want == 0xFFFF:
            i = len(ids) - 1
        elif want in ids:
            i = ids.index(want)
        else:
            return 0xCB, b""
        nxt = ids[i + 1] if i + 1 < len(ids) else 0xFFFF
        return 0, bytes([nxt & 0xFF, nxt >> 8]) + sel_record(ids[i], entries[i])

    def set_boot_device(self, bootdevice: str) -> None:
        self.lab.set_boot_device(self.name, bootdevice)


NETFN_STORAGE = 0x0A
_STORAGE = {0x10: LabBmc._fru_info, 0x11: LabBmc._fru_read, 0x40: LabBmc._sel_info, 0x42: LabBmc._sel_reserve,
            0x43: LabBmc._sel_entry}


def unregister(bmcs: list[LabBmc]) -> None:
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
