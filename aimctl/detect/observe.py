"""The detector's snapshot provider: heartbeats + BMC answers + SNMP link state, per persona.

Reads only in-memory state of the receiver, the BMC poller and the trap receiver (through the small
protocols below), so a detector tick never waits on the network.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from aimctl.agent.wire import Heartbeat
from aimctl.detect.detector import BmcAnswer, LinkState, Observation
from aimctl.detect.recheck import Evidence


class HeartbeatSource(Protocol):
    def last_seen(self, persona: str) -> tuple[float, Heartbeat] | None: ...

    def beats(self, persona: str) -> int: ...


class BmcSource(Protocol):
    def answer(self, server: str) -> tuple[BmcAnswer, float]: ...


class BmcReadings(Protocol):
    def reading(self, server: str) -> tuple[BmcAnswer, float, float | None]: ...


class TrapSource(Protocol):
    def links_of(self, server: str, channels: Iterable[int]) -> LinkState: ...

    def bmc_alert(self, server: str) -> tuple[float, str] | None: ...


@dataclass(frozen=True)
class Watch:
    server: str  # the body the persona is assigned to now
    scn_channels: tuple[int, ...]  # the SCN network's primary and secondary channels
    interval_s: float
    grace_s: float
    since: float  # when watching began: the age of a persona never heard from counts from here


class Observer:
    def __init__(
        self,
        heartbeats: HeartbeatSource,
        bmc: BmcSource | None = None,
        traps: TrapSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hb, self._bmc, self._traps, self._clock = heartbeats, bmc, traps, clock
        self._watches: dict[str, Watch] = {}
        self._lock = threading.Lock()

    def watch(
        self,
        persona: str,
        server: str,
        scn_channels: Iterable[int],
        interval_s: float = 1.0,
        grace_s: float = 30.0,
    ) -> None:
        """Start (or restart, after a move) watching ``persona`` on ``server``."""
        w = Watch(server, tuple(scn_channels), interval_s, grace_s, self._clock())
        with self._lock:
            self._watches[persona] = w

    def unwatch(self, persona: str) -> None:
        with self._lock:
            self._watches.pop(persona, None)

    def watches(self) -> dict[str, Watch]:
        with self._lock:
            return dict(self._watches)

    def __call__(self, now: float) -> list[Observation]:
        return [self.observe(p, w, now) for p, w in self.watches().items()]

    def observe(self, persona: str, w: Watch, now: float) -> Observation:
        seen = self._hb.last_seen(persona)
        # A heartbeat from before this watch (an old body) does not count as fresh.
        last = w.since if seen is None else max(seen[0], w.since)
        health = seen[1].health.word if seen is not None and seen[0] >= w.since else "ok"
        bmc: BmcAnswer = "no-answer"
        silent = now - w.since
        if self._bmc is not None:
            bmc, since = self._bmc.answer(w.server)
            silent = now - since if bmc == "no-answer" else 0.0
        links: LinkState = "unknown"
        if self._traps is not None:
            links = self._traps.links_of(w.server, w.scn_channels)
            alert = self._traps.bmc_alert(w.server)
            # A BMC alert counts as "failed" only if it came after the last heartbeat.
            if alert is not None and alert[0] > last and bmc != "off":
                bmc, silent = "failed", 0.0
        return Observation(
            persona=persona,
            hb_age=max(0.0, now - last),
            interval=w.interval_s,
            beats=self._hb.beats(persona),
            health=health,  # type: ignore[arg-type]
            bmc=bmc,
            bmc_silent_s=silent,
            links=links,
            grace_s=w.grace_s,
        )

    def evidence(self, persona: str, server: str, scn_channels: Iterable[int], interval_s: float, trigger: str,
                 verdict_body: bool, now: float | None = None) -> Evidence:
        """What the sources hold now about ``persona`` and ``server``, for ``recheck.alive_evidence``.

        Unlike ``observe``, nothing is counted from a watch: a body we have not heard from since
        the controller started has no heartbeat age at all.
        """
        now = self._clock() if now is None else now
        seen = self._hb.last_seen(persona)
        hb_age = None if seen is None else max(0.0, now - seen[0])
        health = seen[1].health.word if seen is not None else "ok"
        bmc: BmcAnswer = "unknown"
        read_age: float | None = None
        if self._bmc is not None:
            if hasattr(self._bmc, "reading"):
                readings: BmcReadings = self._bmc  # type: ignore[assignment]
                bmc, _since, read_at = readings.reading(server)
                read_age = None if read_at is None else max(0.0, now - read_at)
            else:
                bmc, _since = self._bmc.answer(server)
        links: LinkState = "unknown"
        alert = False
        if self._traps is not None:
            links = self._traps.links_of(server, scn_channels)
            got = self._traps.bmc_alert(server)
            alert = got is not None and (seen is None or got[0] > seen[0])
        return Evidence(trigger=trigger, verdict_body=verdict_body, hb_age=hb_age, interval=interval_s,
                        health=health,  # type: ignore[arg-type]
                        bmc=bmc, bmc_read_age=read_age, links=links, bmc_alert=alert)
