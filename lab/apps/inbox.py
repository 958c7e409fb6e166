"""Where the controller's alerts land in the lab: a real SMTP server and a real SNMP trap receiver.

``Mailbox`` is an aiosmtpd server (the controller's relay in the lab overlay); ``TrapInbox`` a
pysnmp notification receiver for the controller's alert traps. Both keep what they got in memory
for ``lab status`` and the tests (control actions ``mail`` and ``alert-traps``).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import socket

from lab.ports import free_port
import threading
from typing import Any

from aiosmtpd.controller import Controller
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import ntfrcv

log = logging.getLogger(__name__)


class Mailbox:
    def __init__(self, max_messages: int = 1000) -> None:
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._max = max_messages
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = msg.get_body(("plain",))
        entry = {"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "subject": str(msg["Subject"]),
                 "event": str(msg.get("X-Aimctl-Event", "")), "severity": str(msg.get("X-Aimctl-Severity", "")),
                 "body": body.get_content() if body is not None else ""}
        with self._lock:
            self.messages.append(entry)
            del self.messages[:-self._max]
        return "250 Message accepted for delivery"

    def start(self) -> int:
        self._controller.start()
        return self.port

    def stop(self) -> None:
        self._controller.stop()

    def read(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()


class TrapInbox:
    """Alert traps from the controller (SNMPv2c, one community)."""

    def __init__(self, community: str = "public") -> None:
        self.community = community
        self.traps: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-trap-inbox", daemon=True)

    def start(self) -> int:
        self._thread.start()
        self._ready.wait(10)
        return self.port

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        e = engine.SnmpEngine()
        config.add_transport(e, udp.DOMAIN_NAME, udp.UdpTransport(loop=self._loop).open_server_mode(sock=self._sock))
        config.add_v1_system(e, "lab", self.community)
        ntfrcv.NotificationReceiver(e, self._on_trap)
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            e.close_dispatcher()
            self._loop.run_until_complete(asyncio.sleep(0))

    def _on_trap(self, eng: Any, state_ref: Any, ctx_engine: Any, ctx_name: Any, var_binds: Any, cb: Any) -> None:
        binds = {str(oid): val.prettyPrint() for oid, val in var_binds}
        with self._lock:
            self.traps.append(binds)

    def read(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self.traps)

    def clear(self) -> None:
        with self._lock:
            self.traps.clear()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._sock.close()
