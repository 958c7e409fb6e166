"""Where detector events go: logging, signed webhooks, a queue for the workflow, or several.

Each is an ``EventSink`` (``emit(event)``). ``emit`` never blocks on the network and never raises
for a delivery failure: a webhook receiver that is down or slow must not delay failure detection.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from urllib.parse import urlsplit

from aimctl import secrets
from aimctl.controller.detector import Event, EventSink
from aimctl.errors import OperatorError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Aimctl-Signature"
TIMESTAMP_HEADER = "X-Aimctl-Timestamp"


def event_json(event: Event) -> dict[str, object]:
    return {
        "event": event.kind,
        "persona": event.persona,
        "reason": event.reason,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, timestamp + "." + body): the timestamp is signed so
    a receiver can refuse old deliveries replayed at it."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class LoggingAlerts:
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("aimctl.alerts")

    def emit(self, event: Event) -> None:
        self._log.warning("ALERT %s %s: %s", event.kind, event.persona, event.reason)


class QueueSink:
    """Hands events to another thread (the workflow) through a queue."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Event] = queue.Queue()

    def emit(self, event: Event) -> None:
        self.queue.put(event)


class FanOut:
    def __init__(self, sinks: Iterable[EventSink]) -> None:
        self._sinks = list(sinks)

    def emit(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                sink.emit(event)
            except Exception:
                log.exception("alert sink %s failed", type(sink).__name__)


class WebhookAlerts:
    """POSTs each event as signed JSON from a background thread, with a bounded timeout."""

    def __init__(self, url: str, secret: str | bytes, timeout_s: float = 3.0, max_queue: int = 1000) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OperatorError(f"webhook URL must be http(s)://host/...: {secrets.mask(url)}")
        self._url = url
        # Log only where it goes: the path or query may carry a token.
        self._where = f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}"
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self._timeout = timeout_s
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=max_queue)
        self.delivered = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="webhook-alerts", daemon=True)
        self._thread.start()

    def emit(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.failed += 1
            log.error("webhook %s: queue full, dropped %s for %s", self._where, event.kind, event.persona)

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (within ``timeout_s``), then stop."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            self._post(event)

    def _post(self, event: Event) -> None:
        body = json.dumps(event_json(event), sort_keys=True).encode()
        ts = str(int(time.time()))
        req = urllib.request.Request(
            self._url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: ts,
                SIGNATURE_HEADER: sign(self._secret, ts, body),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                resp.read(1024)
            self.delivered += 1
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.failed += 1
            log.error(
                "webhook %s: %s for %s not delivered: %s",
                self._where,
                event.kind,
                event.persona,
                secrets.mask(str(exc)),
            )
