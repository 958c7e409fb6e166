"""Where change records go: a local JSON-lines file and a signed webhook.

The webhook delivers from its own thread: a change-management system that is slow or down must
not hold a failover step (see ``changes.py`` on why failures are not fatal). Each POST carries
``X-Aimctl-Signature: sha256=<hex HMAC-SHA256 of the body>`` so the receiver can tell it came from
this controller; the body carries a delivery id and a timestamp so a replay is recognisable.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tenacity

from aimctl.secrets import mask, resolve

log = logging.getLogger(__name__)


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class JsonlSink:
    """Appends one line per event; fsync'd, because it is the local copy an auditor reads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def emit(self, event: str, record: Mapping[str, Any]) -> None:
        line = json.dumps({"time": time.time(), "event": event, "record": dict(record)}, sort_keys=True)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        pass


class _Retryable(Exception):
    """A delivery failure worth another try (network error, 5xx, 408, 429)."""


class WebhookSink:
    def __init__(
        self,
        url: str,
        secret_ref: str,
        *,
        timeout_s: float = 5.0,
        attempts: int = 3,
        backoff_s: float = 0.5,
        queue_size: int = 1000,
        base: Path | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http:// or https://, not {url[:40]!r}")
        self.url = url
        self._secret = resolve(secret_ref, base).encode()
        self.timeout_s, self.attempts, self.backoff_s = timeout_s, attempts, backoff_s
        self.delivered = 0
        self.failed = 0
        self._q: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._work, name="change-webhook", daemon=True)
        self._thread.start()

    def emit(self, event: str, record: Mapping[str, Any]) -> None:
        try:
            self._q.put_nowait((event, dict(record)))
        except queue.Full:
            self.failed += 1
            log.warning("change webhook queue full; dropped %s of %s", event, record.get("number"))

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued event was delivered or given up; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._q.all_tasks_done:
            while self._q.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._q.all_tasks_done.wait(left)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        self.flush(timeout_s)
        try:
            self._q.put_nowait(None)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    def _work(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                self._deliver(*item)
            finally:
                self._q.task_done()

    def _deliver(self, event: str, record: dict[str, Any]) -> None:
        body = json.dumps(
            {"event": event, "delivery": str(uuid.uuid4()), "sent": time.time(), "record": record},
            sort_keys=True,
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "aimctl",
            "X-Aimctl-Event": event,
            "X-Aimctl-Signature": sign(self._secret, body),
        }
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential(multiplier=self.backoff_s, max=10 * self.backoff_s),
            retry=tenacity.retry_if_exception_type(_Retryable),
            before_sleep=lambda rs: log.info(
                "change webhook %s: attempt %d failed (%s); retrying", self.url,
                rs.attempt_number, rs.outcome.exception() if rs.outcome else "?",
            ),
            reraise=True,
        )
        try:
            retrying(self._post, body, headers)
            self.delivered += 1
        except Exception as exc:  # noqa: BLE001  (any failure is logged, never raised: see changes.py)
            self.failed += 1
            log.warning("change webhook %s: %s of %s not delivered: %s", self.url, event,
                        record.get("number"), mask(str(exc)))

    def _post(self, body: bytes, headers: dict[str, str]) -> None:
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code in (408, 429):
                raise _Retryable(f"HTTP {exc.code}") from None
            raise RuntimeError(f"refused with HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise _Retryable(str(getattr(exc, "reason", exc))) from None
