"""The lab's SNMP trap sender: what a switch says when a port goes down, what a BMC says on a crash.

The lab calls these when a server's power changes or a ``link-down`` fault is injected. Each switch
sends with its own community (that is how the controller tells lab switches apart, all on
127.0.0.1) and also names itself in a ``sysName.0`` varbind.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    NotificationType,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    send_notification,
)
from pysnmp.proto import rfc1902

LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"
LINK_UP = "1.3.6.1.6.3.1.1.5.4"
IF_INDEX = "1.3.6.1.2.1.2.2.1.1"
IF_ADMIN_STATUS = "1.3.6.1.2.1.2.2.1.7"
IF_OPER_STATUS = "1.3.6.1.2.1.2.2.1.8"
SYS_NAME = "1.3.6.1.2.1.1.5.0"
# IPMI Platform Event Trap: sensor type 0x20 (OS critical stop), event type 0x6F, offset 1 —
# specific trap 0x206F01, as a v2 trap OID enterprise.0.specific.
PET_OS_CRITICAL_STOP = "1.3.6.1.4.1.3183.1.1.0.2125569"


async def _send(host: str, port: int, community: str, trap_oid: str, binds: list[ObjectType]) -> None:
    snmp = SnmpEngine()
    try:
        error, status, _index, _ = await send_notification(
            snmp,
            CommunityData(community, mpModel=1),
            await UdpTransportTarget.create((host, port), timeout=1, retries=0),
            ContextData(),
            "trap",
            NotificationType(ObjectIdentity(trap_oid)).add_varbinds(*binds),
        )
        if error or status:
            raise RuntimeError(f"trap {trap_oid} to {host}:{port} not sent: {error or status}")
    finally:
        snmp.close_dispatcher()


def send_link_trap(host: str, port: int, community: str, switch: str, ifindex: int, up: bool) -> None:
    """linkUp/linkDown for ``ifindex`` with ifIndex, ifAdminStatus, ifOperStatus and sysName."""
    status = 1 if up else 2  # IF-MIB: up(1), down(2)
    binds = [
        ObjectType(ObjectIdentity(f"{IF_INDEX}.{ifindex}"), rfc1902.Integer32(ifindex)),
        ObjectType(ObjectIdentity(f"{IF_ADMIN_STATUS}.{ifindex}"), rfc1902.Integer32(1)),
        ObjectType(ObjectIdentity(f"{IF_OPER_STATUS}.{ifindex}"), rfc1902.Integer32(status)),
        ObjectType(ObjectIdentity(SYS_NAME), rfc1902.OctetString(switch)),
    ]
    asyncio.run(_send(host, port, community, LINK_UP if up else LINK_DOWN, binds))


def send_bmc_alert(
    host: str, port: int, community: str, bmc: str, trap_oid: str = PET_OS_CRITICAL_STOP
) -> None:
    """A BMC alert trap (default: IPMI PET "OS critical stop") naming the BMC in sysName."""
    binds = [ObjectType(ObjectIdentity(SYS_NAME), rfc1902.OctetString(bmc))]
    asyncio.run(_send(host, port, community, trap_oid, binds))


class TrapSender:
    """One engine on its own event loop thread: power changes send their traps without waiting.

    Building an SnmpEngine per trap costs a few hundred milliseconds; a body losing power sends a
    trap per cabled port, and the lab must not make the host (or the caller) wait for them.
    """

    def __init__(self, host: str, port: int, community: str) -> None:
        import threading

        self.targets = [(host, port)]  # every controller of a cluster gets the switches' traps
        self.community = community
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lab-traps", daemon=True)
        self._thread.start()
        self._engine: SnmpEngine | None = None
        self._transports: dict[tuple[str, int], UdpTransportTarget] = {}
        self.sent = 0
        self.failed = 0

    def add_target(self, addr: tuple[str, int]) -> None:
        if addr not in self.targets:
            self.targets.append(addr)

    def remove_target(self, addr: tuple[str, int]) -> None:
        if addr in self.targets[1:]:
            self.targets.remove(addr)

    async def _send(self, trap_oid: str, binds: list[ObjectType], community: str | None = None) -> None:
        if self._engine is None:
            self._engine = SnmpEngine()
        for target in list(self.targets):
            if target not in self._transports:
                self._transports[target] = await UdpTransportTarget.create(target, timeout=1, retries=0)
            error, status, _i, _ = await send_notification(
                self._engine, CommunityData(community or self.community, mpModel=1), self._transports[target],
                ContextData(),
                "trap", NotificationType(ObjectIdentity(trap_oid)).add_varbinds(*binds))
            if error or status:
                self.failed += 1
            else:
                self.sent += 1

    def link(self, switch: str, ifindex: int, up: bool, community: str | None = None) -> None:
        """linkUp/linkDown for ``ifindex`` (``community``: another than the configured one, as a
        misconfigured switch would send)."""
        status = 1 if up else 2
        binds = [
            ObjectType(ObjectIdentity(f"{IF_INDEX}.{ifindex}"), rfc1902.Integer32(ifindex)),
            ObjectType(ObjectIdentity(f"{IF_ADMIN_STATUS}.{ifindex}"), rfc1902.Integer32(1)),
            ObjectType(ObjectIdentity(f"{IF_OPER_STATUS}.{ifindex}"), rfc1902.Integer32(status)),
            ObjectType(ObjectIdentity(SYS_NAME), rfc1902.OctetString(switch)),
        ]
        asyncio.run_coroutine_threadsafe(self._send(LINK_UP if up else LINK_DOWN, binds, community), self._loop)

    def bmc_alert(self, bmc: str, trap_oid: str = PET_OS_CRITICAL_STOP) -> None:
        """What a BMC sends when its host crashes (IPMI PET "OS critical stop"), naming itself in sysName."""
        binds = [ObjectType(ObjectIdentity(SYS_NAME), rfc1902.OctetString(bmc))]
        asyncio.run_coroutine_threadsafe(self._send(trap_oid, binds), self._loop)

    def stop(self) -> None:
        async def close() -> None:
            if self._engine is not None:
                self._engine.close_dispatcher()

        try:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=2)
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=2)


def cable_ifindex(defs: Any, cable: Any) -> int:
    """The ifIndex a switch reports for a cable's port: the inventory's, else the OS rule."""
    from aimctl.drivers.ifindex import ifindex

    return int(cable.ifindex or ifindex(defs.switches[cable.switch].os, cable.port))
