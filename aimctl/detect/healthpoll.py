"""Reads every body's BMC health and event log now and then, and counts link flaps from traps.

Both feed the suspect verdict (``suspect.py``) from memory, so a controller tick never waits on a
BMC. Health is polled slowly (default every 60 s: hardware degrades over hours) with a few
workers and its own driver instances, apart from the power poller and the workflow.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from aimctl.drivers.protocols import BodyHealth, Hardware
from aimctl.secrets import mask

log = logging.getLogger(__name__)


class HealthPoller:
    def __init__(self, hardware: Mapping[str, Hardware], interval_s: float = 60.0, workers: int = 4,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._hw = dict(hardware)
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._health: dict[str, tuple[BodyHealth, float]] = {}
        self._errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max(1, min(workers, len(self._hw) or 1)), thread_name_prefix="health")
        self._thread: threading.Thread | None = None
        self.passes = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_all()
            self._stop.wait(self.interval_s)

    def poll_all(self) -> None:
        for _ in self._pool.map(self.poll_once, list(self._hw)):
            pass
        self.passes += 1

    def poll_once(self, server: str) -> None:
        try:
            h = self._hw[server].health()
        except Exception as exc:  # noqa: BLE001 - a BMC that does not answer is the power poller's business
            with self._lock:
                if self._errors.get(server) is None:
                    log.info("health of %s not read: %s", server, mask(str(exc)))
                self._errors[server] = mask(str(exc))
            return
        with self._lock:
            self._health[server] = (h, self._clock())
            self._errors.pop(server, None)

    def health(self, server: str) -> BodyHealth | None:
        with self._lock:
            got = self._health.get(server)
        return got[0] if got else None


class LinkFlaps:
    """linkDown traps per body and channel, the last ``keep`` of each; fed by the trap receiver.

    Per channel, because a body that loses power sends one linkDown on every port at once: that is
    a power event, not a flapping link."""

    def __init__(self, keep: int = 100, clock: Callable[[], float] = time.monotonic) -> None:
        self._downs: dict[tuple[str, int], deque[float]] = {}
        self._keep = keep
        self._clock = clock
        self._lock = threading.Lock()

    def on_link_change(self, server: str, channel: int, state: str) -> None:
        if state != "down":
            return
        with self._lock:
            self._downs.setdefault((server, channel), deque(maxlen=self._keep)).append(self._clock())

    def downs(self, server: str) -> dict[int, tuple[float, ...]]:
        with self._lock:
            return {ch: tuple(d) for (s, ch), d in self._downs.items() if s == server}
