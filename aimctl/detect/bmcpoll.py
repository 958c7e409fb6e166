"""Polls every server's BMC power state in a small thread pool, backing off on errors.

The detector asks ``answer(server)`` for the BMC's word on a server: "on", "off", "no-answer" or
"unknown", and since when that has been the answer. A BMC that errors is polled again after an
exponentially growing pause (``interval_s`` doubling up to ``backoff_max_s``), so a dead BMC costs
little while a live one is read every interval.

Silence is counted from requests that got no answer, never from when the controller started: a BMC
never heard from is "unknown" while its first poll is under way, however slow (a BMC taking 4 s per
request needs ~13 s for its first answer: service root, session login, system). A poll that failed
makes it "no-answer" *since that poll was sent*. A poll still in flight after ``stale_after_s``
(default 30 s: six requests at the drivers' 5 s timeout, the longest first contact we allow) counts
as no answer from when it was sent, even before it returns: a hung driver must not keep an old "on"
alive forever.

Translation of the Power protocol's words: ON -> "on", OFF -> "off", UNKNOWN (the BMC answered but
could not say, e.g. mid-transition) -> "unknown": it answered, so it is not silent, and it said
nothing about death. Any error is "no-answer". "failed" is never a poll result: it comes from BMC
alert traps (see observe.py).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Self

from aimctl import secrets
from aimctl.detect.detector import BmcAnswer
from aimctl.drivers.protocols import Power, PowerState

log = logging.getLogger(__name__)

_ANSWERS: dict[PowerState, BmcAnswer] = {PowerState.ON: "on", PowerState.OFF: "off", PowerState.UNKNOWN: "unknown"}


STALE_AFTER_S = 30.0


class _Server:
    __slots__ = ("answer", "errors", "in_flight_since", "read_at", "since", "silent_since")

    def __init__(self, now: float) -> None:
        self.answer: BmcAnswer = "unknown"
        self.since = now
        self.errors = 0
        self.in_flight_since: float | None = None
        self.read_at: float | None = None  # when the last poll came back with an answer
        self.silent_since: float | None = None  # when the first of the unanswered polls in a row was sent


class BmcPoller:
    def __init__(
        self,
        powers: Mapping[str, Power],
        interval_s: float = 1.0,
        backoff_max_s: float = 30.0,
        workers: int = 8,
        stale_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._powers = dict(powers)
        self._interval = interval_s
        self._backoff_max = max(backoff_max_s, interval_s)
        self._stale_after = stale_after_s if stale_after_s is not None else max(2 * interval_s, STALE_AFTER_S)
        self._clock = clock
        now = clock()
        self._servers = {name: _Server(now) for name in self._powers}
        self._lock = threading.Lock()
        self._due: list[tuple[float, str]] = [(now, name) for name in self._powers]
        self._wake = threading.Event()
        self._stopping = False
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(workers, len(self._powers) or 1)), thread_name_prefix="bmc-poll"
        )
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._schedule, name="bmc-poller", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries

    def answer(self, server: str) -> tuple[BmcAnswer, float]:
        """(answer, monotonic time since which it has been the answer)."""
        answer, since, _read_at = self.reading(server)
        return answer, since

    def reading(self, server: str) -> tuple[BmcAnswer, float, float | None]:
        """(answer, since when, when the BMC last gave an answer or None): the recheck wants the age."""
        s = self._servers[server]
        with self._lock:
            answer, since, started, read_at = s.answer, s.since, s.in_flight_since, s.read_at
        if started is not None and answer != "no-answer" and self._clock() - started > self._stale_after:
            return "no-answer", started, read_at
        return answer, since, read_at

    # ------------------------------------------------------------------ polling

    def _schedule(self) -> None:
        while not self._stopping:
            now = self._clock()
            with self._lock:
                ready = []
                while self._due and self._due[0][0] <= now:
                    ready.append(heapq.heappop(self._due)[1])
                next_due = self._due[0][0] if self._due else None
                for name in ready:
                    self._servers[name].in_flight_since = now
            for name in ready:
                try:
                    self._pool.submit(self._poll, name, now)
                except RuntimeError:  # the pool is shutting down
                    return
            self._wake.wait(None if next_due is None else max(0.0, next_due - self._clock()))
            self._wake.clear()

    def poll_once(self, server: str, sent: float | None = None) -> BmcAnswer:
        """Read one server's power now and record it (used by the scheduler and by tests)."""
        sent = self._clock() if sent is None else sent
        try:
            state = self._powers[server].state()
            answer = _ANSWERS.get(state, "unknown")
            error = None
        except Exception as exc:  # noqa: BLE001 - drivers raise DriverError; anything else is no answer too
            answer, error = "no-answer", secrets.mask(str(exc)) or type(exc).__name__
        self._record(server, answer, error, sent)
        return answer

    def _poll(self, server: str, sent: float) -> None:
        self.poll_once(server, sent)
        with self._lock:
            s = self._servers[server]
            s.in_flight_since = None
            pause = self._interval if s.errors == 0 else min(self._backoff_max, self._interval * 2**s.errors)
            heapq.heappush(self._due, (self._clock() + pause, server))
        self._wake.set()

    def _record(self, server: str, answer: BmcAnswer, error: str | None, sent: float) -> None:
        now = self._clock()
        with self._lock:
            s = self._servers[server]
            s.errors = s.errors + 1 if error else 0
            changed_at = now
            if answer == "no-answer":
                # Silent since the first unanswered request of this run was sent, not since we started.
                changed_at = sent if s.silent_since is None else s.silent_since
                s.silent_since = changed_at
            else:
                s.silent_since, s.read_at = None, now
            if answer != s.answer:
                s.answer, s.since = answer, changed_at
                if error:
                    log.warning("BMC of %s: no answer (%s); backing off", server, error)
                else:
                    log.info("BMC of %s: %s", server, answer)
            elif error:
                log.debug("BMC of %s: still no answer (%s)", server, error)
