"""Where detector events go: logging, signed webhooks, a queue for the workflow, or several.

Each is an ``EventSink`` (``emit(event)``). ``emit`` never blocks on the network and never raises
for a delivery failure: a webhook receiver that is down or slow must not delay failure detection.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aimctl.detect.detector import Event, EventSink
from aimctl.errors import OperatorError
from aimctl.records.sinks import WebhookSink

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RehearsalFailed(Event):
    """A spare rehearsal did not boot the persona (or could not be set up or torn down)."""


@dataclass(frozen=True, slots=True)
class RehearsalStale(Event):
    """The persona's last good rehearsal is older than its pool's policy allows (or there is none)."""


@dataclass(frozen=True, slots=True)
class ArchiveFailed(Event):
    """A scheduled or requested archive of the persona was not taken."""


def event_json(event: Event) -> dict[str, object]:
    return {"persona": event.persona, "reason": event.reason}


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
    """POSTs each event as signed JSON, through the change records' webhook delivery
    (``change_sinks.WebhookSink``: its own thread, bounded timeout, a few retries, failures logged;
    ``X-Aimctl-Signature: sha256=<HMAC-SHA256 of the body>``, body with a delivery id and time)."""

    def __init__(
        self, url: str, secret_ref: str, timeout_s: float = 3.0, attempts: int = 2, base: Path | None = None
    ) -> None:
        try:
            self._sink = WebhookSink(
                url, secret_ref, timeout_s=timeout_s, attempts=attempts, backoff_s=0.2, base=base
            )
        except ValueError as exc:
            raise OperatorError(f"alert webhook: {exc}") from None

    @property
    def delivered(self) -> int:
        return self._sink.delivered

    @property
    def failed(self) -> int:
        return self._sink.failed

    def emit(self, event: Event) -> None:
        self._sink.emit(event.kind, event_json(event))

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (within ``timeout_s``), then stop."""
        self._sink.close(timeout_s)
