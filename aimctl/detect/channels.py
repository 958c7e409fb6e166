"""Alert channels besides the webhook: e-mail through an SMTP relay, and SNMP traps out.

Like every alert sink, ``emit`` never blocks and never raises: delivery runs on the channel's own
thread with a bounded queue, a timeout per try and a few tries (tenacity, each failure logged);
a relay or trap receiver that is down must not slow failure detection.

SNMP traps (SNMPv2c) name the event under ``enterprise``: ``<enterprise>.0.1`` is the notification,
its varbinds ``<enterprise>.1.1`` kind, ``.1.2`` subject (persona, body, pool or rack), ``.1.3``
severity (page, alert, info) and ``.1.4`` the sentence. The default enterprise is 32473, IANA's
number reserved for documentation (RFC 5612): a site sets its own registered number.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import smtplib
import socket
import threading
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import tenacity

from aimctl.detect.detector import Event
from aimctl.detect.events import severity
from aimctl.secrets import mask, resolve

log = logging.getLogger(__name__)

DOC_ENTERPRISE = "1.3.6.1.4.1.32473.1"


class _Channel:
    """A queue and a thread that delivers each item with a few timed tries."""

    name = "alert channel"

    def __init__(self, attempts: int = 3, backoff_s: float = 0.5, queue_size: int = 1000) -> None:
        self.attempts, self.backoff_s = attempts, backoff_s
        self.delivered = 0
        self.failed = 0
        self._q: queue.Queue[Event | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
        self._thread.start()

    def emit(self, event: Event) -> None:
        try:
            self._q.put_nowait(event)
        except queue.Full:
            self.failed += 1
            log.warning("%s queue full; dropped %s %s", self.name, event.kind, event.persona)

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            self._q.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    def _work(self) -> None:
        while True:
            event = self._q.get()
            if event is None:
                return
            retrying = tenacity.Retrying(
                stop=tenacity.stop_after_attempt(self.attempts),
                wait=tenacity.wait_exponential(multiplier=self.backoff_s, max=10 * self.backoff_s),
                before_sleep=lambda rs: log.info("%s: attempt %d failed (%s); retrying", self.name,
                                                 rs.attempt_number,
                                                 mask(str(rs.outcome.exception())) if rs.outcome else "?"),
                reraise=True,
            )
            try:
                retrying(self.deliver, event)
                self.delivered += 1
            except Exception as exc:  # noqa: BLE001 - logged, never raised: alerts never stop detection
                self.failed += 1
                log.warning("%s: %s %s not delivered: %s", self.name, event.kind, event.persona, mask(str(exc)))

    def deliver(self, event: Event) -> None:
        raise NotImplementedError


def subject_line(event: Event) -> str:
    first = event.reason if len(event.reason) <= 120 else event.reason[:117] + "..."
    return f"[aimctl {severity(event)}] {event.kind} {event.persona}: {first}"


class EmailAlerts(_Channel):
    """One mail per event through an SMTP relay (plain, STARTTLS, optional login)."""

    name = "alert-email"

    def __init__(self, relay: str, sender: str, recipients: list[str], *, starttls: bool = False,
                 username: str | None = None, password_ref: str | None = None, timeout_s: float = 10.0,
                 attempts: int = 3, backoff_s: float = 0.5) -> None:
        host, _, port = relay.rpartition(":")
        if not host or not port.isdigit() or not recipients:
            raise ValueError(f"e-mail alerts need a relay HOST:PORT and recipients (got {relay!r}, {recipients})")
        self.host, self.port = host, int(port)
        self.sender, self.recipients = sender, list(recipients)
        self.starttls, self.timeout_s = starttls, timeout_s
        self._login = (username, resolve(password_ref)) if username and password_ref else None
        self.hostname = socket.gethostname()
        super().__init__(attempts, backoff_s)

    def message(self, event: Event) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Subject"] = mask(subject_line(event))
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = make_msgid(domain="aimctl")
        msg["X-Aimctl-Event"] = event.kind
        msg["X-Aimctl-Severity"] = severity(event)
        msg.set_content(mask(f"{event.reason}\n\nevent: {event.kind}\nsubject: {event.persona}\n"
                             f"severity: {severity(event)}\ncontroller: {self.hostname}\n"
                             f"time: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n"))
        return msg

    def deliver(self, event: Event) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            if self.starttls:
                smtp.starttls()
            if self._login:
                smtp.login(*self._login)
            smtp.send_message(self.message(event))


class SnmpTrapAlerts(_Channel):
    """One SNMPv2c trap per event (pysnmp notification originator on its own event loop)."""

    name = "alert-snmp"

    def __init__(self, target: str, community: str = "public", enterprise: str = DOC_ENTERPRISE,
                 timeout_s: float = 2.0, attempts: int = 3, backoff_s: float = 0.2) -> None:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"SNMP alerts need HOST:PORT, got {target!r}")
        self.target = (host, int(port))
        self.community, self.enterprise, self.timeout_s = community, enterprise.rstrip("."), timeout_s
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="alert-snmp-loop", daemon=True)
        self._loop_thread.start()
        self._engine: Any = None
        self._transport: Any = None
        super().__init__(attempts, backoff_s)

    async def _send(self, event: Event) -> None:
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

        if self._engine is None:
            self._engine = SnmpEngine()
            self._transport = await UdpTransportTarget.create(self.target, timeout=self.timeout_s, retries=0)
        e = self.enterprise
        binds = [ObjectType(ObjectIdentity(f"{e}.1.1"), rfc1902.OctetString(event.kind)),
                 ObjectType(ObjectIdentity(f"{e}.1.2"), rfc1902.OctetString(event.persona)),
                 ObjectType(ObjectIdentity(f"{e}.1.3"), rfc1902.OctetString(severity(event))),
                 ObjectType(ObjectIdentity(f"{e}.1.4"), rfc1902.OctetString(mask(event.reason)[:1000]))]
        error, status, _i, _ = await send_notification(
            self._engine, CommunityData(self.community, mpModel=1), self._transport, ContextData(), "trap",
            NotificationType(ObjectIdentity(f"{e}.0.1")).add_varbinds(*binds))
        if error or status:
            raise RuntimeError(f"trap to {self.target[0]}:{self.target[1]} not sent: {error or status}")

    def deliver(self, event: Event) -> None:
        asyncio.run_coroutine_threadsafe(self._send(event), self._loop).result(self.timeout_s + 1)

    def close(self, timeout_s: float = 5.0) -> None:
        super().close(timeout_s)

        async def shut() -> None:
            if self._engine is not None:
                self._engine.close_dispatcher()

        try:
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout_s)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout_s)
