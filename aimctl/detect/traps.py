"""SNMP trap receiver: linkDown/linkUp from switches, alert traps from BMCs.

pysnmp runs on its own asyncio loop in its own thread. Traps name OIDs numerically, so no MIB
compiler is needed.

Which device sent a trap. SNMPv2c has no sender identity besides the community and the UDP source,
and in the lab every switch sends from 127.0.0.1. So, in this order:

1. the community, when it is mapped to a device (``communities={"sw1-secret": "sw1"}``) — the lab
   gives each switch its own community;
2. the source IP address (``addresses={"10.0.0.2": "sw1"}``) — production, one address per switch;
3. the ``sysName.0`` varbind in the trap (``communities={"public": None}``: a shared community).

Link traps are mapped through ``links={(switch, ifIndex): (server, channel)}``; a trap from a device
listed in ``bmcs={device: server}`` whose OID starts with one of ``bmc_failure_oids`` marks that
server failed (a death signal for the detector, see observe.py). Everything else is counted and
dropped. ``bmc_identities`` builds the BMC side of those maps from the inventory.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Self

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import ntfrcv

from aimctl.detect.detector import LinkState, aggregate_links
from aimctl.errors import ListenError

log = logging.getLogger(__name__)

SNMP_TRAP_OID = "1.3.6.1.6.3.1.1.4.1.0"
LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"
LINK_UP = "1.3.6.1.6.3.1.1.5.4"
IF_INDEX = "1.3.6.1.2.1.2.2.1.1"
IF_OPER_STATUS = "1.3.6.1.2.1.2.2.1.8"
SYS_NAME = "1.3.6.1.2.1.1.5.0"
# IPMI Platform Event Traps, and Dell iDRAC alert traps.
DEFAULT_BMC_FAILURE_OIDS = ("1.3.6.1.4.1.3183.1.1", "1.3.6.1.4.1.674.10892.5.3.2")

LinkChange = Callable[[str, int, LinkState], None]


class TrapReceiver:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        communities: Mapping[str, str | None],
        links: Mapping[tuple[str, int], tuple[str, int]],
        addresses: Mapping[str, str] | None = None,
        bmcs: Mapping[str, str] | None = None,
        bmc_failure_oids: Iterable[str] = DEFAULT_BMC_FAILURE_OIDS,
        clock: Callable[[], float] = time.monotonic,
        on_link_change: LinkChange | None = None,
    ) -> None:
        if not communities:
            raise ValueError("at least one community is needed")
        self._communities = dict(communities)
        self._links = dict(links)
        self._addresses = dict(addresses or {})
        self._bmcs = dict(bmcs or {})
        self._bmc_oids = tuple(bmc_failure_oids)
        self._clock = clock
        self._on_link_change = on_link_change
        self._link_state: dict[tuple[str, int], tuple[LinkState, float]] = {}
        self._bmc_alerts: dict[str, tuple[float, str]] = {}
        self.counts = {
            "traps": 0,
            "link": 0,
            "bmc_alert": 0,
            "unknown_source": 0,
            "unmapped": 0,
            "ignored": 0,
        }
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise ListenError.from_oserror("SNMP traps (switch links, BMC alerts)", "UDP", host, port, exc) from None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._by_index: dict[str, str] = {}
        self._startup_error: BaseException | None = None

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="snmp-traps", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
        if not self._loop.is_closed():
            self._loop.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            e = engine.SnmpEngine()
            # A bound socket handed over, so the port is known before the loop runs (bind 0).
            transport = udp.UdpTransport(loop=self._loop).open_server_mode(sock=self._sock)
            config.add_transport(e, udp.DOMAIN_NAME, transport)
            # The community index becomes the securityName we read back; indexes are ours, short
            # and safe, whatever the community strings look like.
            for i, community in enumerate(self._communities):
                index = f"c{i}"
                self._by_index[index] = community
                config.add_v1_system(e, index, community)
            ntfrcv.NotificationReceiver(e, self._on_trap)
        except BaseException as exc:  # noqa: BLE001 - re-raised in start()'s caller
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            # Close the transport on its own loop, and let the loop run once more so the close
            # completes before the loop is closed.
            e.close_dispatcher()
            self._loop.run_until_complete(asyncio.sleep(0))

    # ------------------------------------------------------------------ queries

    def link_state(self, server: str, channel: int) -> tuple[LinkState, float | None]:
        """("up"|"down"|"unknown", monotonic time of the last change or None)."""
        got = self._link_state.get((server, channel))
        return ("unknown", None) if got is None else got

    def links_of(self, server: str, channels: Iterable[int]) -> LinkState:
        return aggregate_links(self.link_state(server, ch)[0] for ch in channels)

    def bmc_alert(self, server: str) -> tuple[float, str] | None:
        """(monotonic time, trap OID) of the last BMC failure alert for ``server``."""
        return self._bmc_alerts.get(server)

    # ------------------------------------------------------------------ trap handling

    def _identify(self, security_name: str, address: str, varbinds: dict[str, Any]) -> str | None:
        named = self._communities.get(self._by_index.get(security_name, ""))
        if named:
            return named
        if address in self._addresses:
            return self._addresses[address]
        sys_name = varbinds.get(SYS_NAME)
        return str(sys_name) if sys_name is not None else None

    def _on_trap(
        self, eng: Any, state_ref: Any, ctx_engine: Any, ctx_name: Any, var_binds: Any, cb_ctx: Any
    ) -> None:
        try:
            ctx = eng.observer.get_execution_context("rfc3412.receiveMessage:request")
            address = str(ctx["transportAddress"][0])
            security_name = str(ctx["securityName"])
            binds = {str(oid): val for oid, val in var_binds}
            self.handle(security_name, address, binds)
        except Exception:  # never let one odd trap stop the receiver
            log.exception("could not handle a trap")

    def handle(self, security_name: str, address: str, binds: dict[str, Any]) -> None:
        self.counts["traps"] += 1
        trap_oid = str(binds.get(SNMP_TRAP_OID, ""))
        device = self._identify(security_name, address, binds)
        if device is None:
            self.counts["unknown_source"] += 1
            log.warning(
                "trap %s from %s: unknown sender (no mapped community, address or sysName)", trap_oid, address
            )
            return
        if trap_oid in (LINK_DOWN, LINK_UP):
            self._link_trap(device, trap_oid == LINK_UP, binds)
        elif device in self._bmcs and any(
            trap_oid == p or trap_oid.startswith(p + ".") for p in self._bmc_oids
        ):
            server = self._bmcs[device]
            self._bmc_alerts[server] = (self._clock(), trap_oid)
            self.counts["bmc_alert"] += 1
            log.warning("BMC alert %s for %s", trap_oid, server)
        else:
            self.counts["ignored"] += 1

    def _link_trap(self, switch: str, up: bool, binds: dict[str, Any]) -> None:
        ifindex = _if_index(binds)
        target = self._links.get((switch, ifindex)) if ifindex is not None else None
        if target is None:
            self.counts["unmapped"] += 1
            log.info("link trap for %s ifIndex %s: not a mapped SCN port", switch, ifindex)
            return
        state: LinkState = "up" if up else "down"
        self._link_state[target] = (state, self._clock())
        self.counts["link"] += 1
        log.info("link %s: %s ifIndex %d = %s channel %d", state, switch, ifindex, target[0], target[1])
        if self._on_link_change is not None:
            self._on_link_change(target[0], target[1], state)


def bmc_identities(
    bmc_addresses: Mapping[str, str], other_addresses: Iterable[str] = ()
) -> tuple[dict[str, str], dict[str, str]]:
    """(``addresses``, ``bmcs``) for a TrapReceiver, from ``{server: its BMC's address}``.

    A BMC alert names its server when it comes from the BMC's address (only when no other BMC or
    switch shares that address: in a lab everything sends from 127.0.0.1), or when its sysName is
    the server's name or the BMC's address as the inventory writes it.
    """
    taken = list(other_addresses)
    counts: dict[str, int] = {}
    for a in [*bmc_addresses.values(), *taken]:
        counts[a] = counts.get(a, 0) + 1
    addresses: dict[str, str] = {}
    bmcs: dict[str, str] = {}
    for server, address in bmc_addresses.items():
        device = f"bmc:{server}"
        bmcs[device] = server
        bmcs[server] = server
        if counts[address] == 1:
            addresses[address] = device
            bmcs[address] = server
    return addresses, bmcs


def _if_index(binds: dict[str, Any]) -> int | None:
    """The ifIndex varbind's value, else the instance suffix of ifIndex/ifOperStatus OIDs."""
    for oid, val in binds.items():
        if oid.startswith(IF_INDEX + "."):
            try:
                return int(val)
            except (TypeError, ValueError):
                return int(oid.rsplit(".", 1)[1])
    for oid in binds:
        if oid.startswith(IF_OPER_STATUS + "."):
            return int(oid.rsplit(".", 1)[1])
    return None
