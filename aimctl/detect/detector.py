"""The failure detector: a pure ``decide`` per persona, and a small loop that applies it to all.

DESIGN.md rule 2, as code:

- a heartbeat older than ``miss_intervals`` intervals makes a persona *suspect*, nothing more;
- *dead* needs a second source: the BMC reports the host off or failed, or SNMP says its SCN
  channels are down;
- the BMC answering "on" with links not down, for ``confirm_intervals`` more, is *unreachable*: a
  partition, alerted, never failed over;
- heartbeats *and* the BMC both silent for the persona's grace period is *presumed dead*: the
  failover may proceed only through a confirmed fence. (Both: a BMC that has been unreachable for
  a day must not turn two lost heartbeats into a failover.)
- a BMC never answered yet is *unknown*: not silent, not on. It is never a second source of death,
  and its time counts toward no grace: silence is counted only from requests that got no answer
  (a BMC's slow first contact, session setup included, is not silence).
- after a stall of the controller itself (a tick gap of ``stall_intervals`` intervals: SIGSTOP, swap,
  a VM pause), every source is re-observed for ``settle_intervals`` before any verdict: what the
  BMC poller and the trap receiver held was read before the stall, and the heartbeat receiver may
  still be draining its backlog.

Fresh heartbeats that say the persona's own services gave up (the agent's auto pilot used up its
restarts) make it *unhealthy*: the agent's signed word, which the workflow may fail over on.

Hysteresis: each event is emitted once per transition. Dead and presumed-dead are left only by
recovery, and recovery from any bad state needs ``recover_beats`` fresh heartbeats, so a flapping
host cannot emit a stream of events. Ages come from the receiver's monotonic clock: a sender's clock
never enters here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal, Protocol

log = logging.getLogger(__name__)

# "unknown": never answered yet (first contact still under way); "no-answer": requests got none.
BmcAnswer = Literal["on", "off", "failed", "no-answer", "unknown"]
LinkState = Literal["up", "down", "unknown"]
State = Literal["alive", "suspect", "unreachable", "dead", "presumed-dead", "unhealthy"]
Health = Literal["ok", "degraded", "unhealthy", "stopped"]


# ---------------------------------------------------------------------------- inputs and outputs


@dataclass(frozen=True, slots=True)
class Observation:
    """What the controller knows about one persona at one instant."""

    persona: str
    hb_age: float  # s since the last accepted heartbeat (or since watching began, if none yet)
    interval: float  # the persona's heartbeat interval, s
    beats: int = 0  # accepted heartbeats so far (grows by one per heartbeat)
    health: Health = "ok"  # from the last heartbeat
    bmc: BmcAnswer = "no-answer"
    bmc_silent_s: float = 0.0  # how long the BMC has not answered (0 while it answers)
    links: LinkState = "unknown"  # its SCN channels, see aggregate_links
    grace_s: float = 30.0  # heartbeats and BMC both silent this long: presumed dead
    # Non-empty while the controller re-observes after its own stall: why no verdict is given yet.
    settling: str = ""

    def __post_init__(self) -> None:
        # Accept the wire's Health enum too (``last_seen(p)[1].health``): compared as a word below,
        # an enum would silently never equal "unhealthy".
        if isinstance(self.health, IntEnum):
            object.__setattr__(self, "health", self.health.name.lower())


@dataclass(frozen=True, slots=True)
class Params:
    # 2.5: two heartbeats missed, plus half an interval for jitter, before any suspicion.
    miss_intervals: float = 2.5
    # BMC "on" must hold this much longer before we call it a partition: the BMC poller may still
    # be reporting "on" from just before a power cut.
    confirm_intervals: float = 1.0
    recover_beats: int = 3
    # A tick gap this many intervals long is a stall of the controller itself (not of the host)...
    stall_intervals: float = 3.0
    # ...after which every source is re-observed this long (in intervals) before any verdict: the
    # BMC poller reads every interval, so two intervals see each BMC answer again at its usual pace.
    settle_intervals: float = 2.0


@dataclass(frozen=True, slots=True)
class DetectorState:
    state: State = "alive"
    # beats count at the first fresh heartbeat after trouble; None while none has come back.
    back_at: int | None = None


@dataclass(frozen=True, slots=True)
class Event:
    persona: str
    reason: str
    at: float = 0.0  # controller monotonic time; set by Detector.tick

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(frozen=True, slots=True)
class PersonaDead(Event):
    pass


@dataclass(frozen=True, slots=True)
class PersonaPresumedDead(Event):
    pass


@dataclass(frozen=True, slots=True)
class PersonaUnreachable(Event):
    pass


@dataclass(frozen=True, slots=True)
class PersonaUnhealthy(Event):
    pass


@dataclass(frozen=True, slots=True)
class PersonaRecovered(Event):
    pass


@dataclass(frozen=True, slots=True)
class Decision:
    state: DetectorState
    reason: str
    event: Event | None = None


class EventSink(Protocol):
    def emit(self, event: Event) -> None: ...


# ---------------------------------------------------------------------------- pure logic


def aggregate_links(states: Iterable[LinkState]) -> LinkState:
    """A persona's SCN is down only when *every* SCN channel is down: with one left, it could
    still heartbeat. Any channel up means up."""
    seen = list(states)
    if any(s == "up" for s in seen):
        return "up"
    if seen and all(s == "down" for s in seen):
        return "down"
    return "unknown"


def _second_source(obs: Observation) -> str | None:
    if obs.bmc in ("off", "failed"):
        return f"BMC reports {obs.bmc}"
    if obs.links == "down":
        return "SNMP linkDown on all its SCN channels"
    return None


VERDICTS = ("dead", "presumed-dead", "unreachable")


def decide(prev: DetectorState, obs: Observation, params: Params = Params()) -> Decision:
    """The next state for one persona, and the event to emit (at most one, only on a transition)."""
    d = _decide(prev, obs, params)
    if obs.settling and d.state.state in VERDICTS and d.state.state != prev.state:
        # Re-observing after our own stall: hold the verdict until every source was read again.
        held = prev.state if prev.state not in ("alive",) else "suspect"
        return Decision(DetectorState(held, prev.back_at), f"{obs.settling}; would be {d.state.state} ({d.reason})")
    return d


def _decide(prev: DetectorState, obs: Observation, params: Params) -> Decision:
    s = prev.state
    silent_for = obs.hb_age / obs.interval if obs.interval > 0 else float("inf")
    if silent_for <= params.miss_intervals:
        return _fresh(prev, obs, params)
    # Heartbeats are missing from here on.
    quiet = DetectorState(s)
    missing = f"no heartbeat for {obs.hb_age:.1f}s"
    if s == "dead":
        return Decision(quiet, "dead; waiting for recovery")
    second = _second_source(obs)
    if second is not None:
        why = f"{missing}; {second}"
        return Decision(DetectorState("dead"), why, PersonaDead(obs.persona, why))
    if s == "presumed-dead":
        return Decision(quiet, "presumed dead; waiting for recovery or a second source")
    if obs.bmc == "no-answer" and min(obs.bmc_silent_s, obs.hb_age) >= obs.grace_s:
        why = f"{missing}; BMC silent for {obs.bmc_silent_s:.0f}s (grace {obs.grace_s:.0f}s)"
        return Decision(DetectorState("presumed-dead"), why, PersonaPresumedDead(obs.persona, why))
    if s == "unreachable":
        return Decision(quiet, f"{missing}; BMC {obs.bmc}, links {obs.links}: unreachable, not dead")
    if obs.bmc == "on" and silent_for > params.miss_intervals + params.confirm_intervals:
        why = f"{missing} but BMC reports on and links are {obs.links}: partition, no failover"
        return Decision(DetectorState("unreachable"), why, PersonaUnreachable(obs.persona, why))
    if obs.bmc == "unknown":
        return Decision(DetectorState("suspect"), f"{missing}; BMC not heard from yet (first contact under way)")
    return Decision(DetectorState("suspect"), f"{missing}; waiting for a second source (BMC {obs.bmc})")


def _fresh(prev: DetectorState, obs: Observation, params: Params) -> Decision:
    s = prev.state
    sick = obs.health == "unhealthy"
    sick_why = "agent reports its services failed after restarts"
    if s in ("alive", "suspect"):
        if sick:
            return Decision(DetectorState("unhealthy"), sick_why, PersonaUnhealthy(obs.persona, sick_why))
        return Decision(DetectorState("alive"), "heartbeats fresh")
    if s == "unhealthy" and sick:
        return Decision(DetectorState("unhealthy"), sick_why)
    back_at = prev.back_at if prev.back_at is not None else obs.beats
    fresh = obs.beats - back_at + 1
    if fresh < params.recover_beats:
        return Decision(DetectorState(s, back_at), f"{s}; {fresh}/{params.recover_beats} fresh heartbeats")
    if sick:  # back from a bad state, but its services are not
        return Decision(DetectorState("unhealthy"), sick_why, PersonaUnhealthy(obs.persona, sick_why))
    why = f"{fresh} fresh heartbeats after {s}"
    return Decision(DetectorState("alive"), why, PersonaRecovered(obs.persona, why))


# ---------------------------------------------------------------------------- the loop

SnapshotProvider = Callable[[float], Iterable[Observation]]


class Detector:
    """Holds every persona's state; ``tick`` runs ``decide`` for each and emits the events.

    No I/O here beyond the sink and logging; the snapshot provider does the reading. The detector
    also watches its own pace: a gap between ticks of ``stall_intervals`` intervals means the
    controller itself stalled, and each persona is re-observed for ``settle_intervals`` before any
    verdict (``Observation.settling``).
    """

    def __init__(self, sink: EventSink, params: Params = Params()) -> None:
        self._sink = sink
        self._params = params
        self._states: dict[str, DetectorState] = {}
        self._reasons: dict[str, str] = {}
        self._last_tick: float | None = None
        self._settle_until: dict[str, float] = {}
        self.stalls = 0  # stalls noticed since start (metrics, tests)
        # persona -> (reason of its last state change, wall time): what status says "since" and "why".
        self._why: dict[str, tuple[str, float]] = {}

    def why(self, persona: str) -> tuple[str, float] | None:
        return self._why.get(persona)

    def state(self, persona: str) -> DetectorState:
        return self._states.get(persona, DetectorState())

    def states(self) -> dict[str, DetectorState]:
        return dict(self._states)

    def reason(self, persona: str) -> str:
        """The last decision's one-sentence reason for ``persona`` ("" before the first tick)."""
        return self._reasons.get(persona, "")

    def forget(self, persona: str) -> None:
        """Drop a persona's state (e.g. when the workflow takes over or it is removed)."""
        self._states.pop(persona, None)
        self._reasons.pop(persona, None)
        self._settle_until.pop(persona, None)
        self._why.pop(persona, None)

    def tick(self, now: float, snapshot_provider: SnapshotProvider) -> list[Event]:
        gap = None if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        events: list[Event] = []
        stalled = False
        for obs in snapshot_provider(now):
            p = self._params
            if gap is not None and obs.interval > 0 and gap > p.stall_intervals * obs.interval:
                stalled = True
                self._settle_until[obs.persona] = now + p.settle_intervals * obs.interval
            until = self._settle_until.get(obs.persona)
            if until is not None:
                if now < until:
                    why = f"re-observing after a controller stall ({until - now:.1f}s left)"
                    obs = dataclasses.replace(obs, settling=why)
                else:
                    del self._settle_until[obs.persona]
            prev = self._states.get(obs.persona, DetectorState())
            d = decide(prev, obs, p)
            self._states[obs.persona] = d.state
            self._reasons[obs.persona] = d.reason
            if d.state.state != prev.state:
                log.info("%s: %s -> %s (%s)", obs.persona, prev.state, d.state.state, d.reason)
                self._why[obs.persona] = (d.reason, time.time())
            if d.event is not None:
                ev = dataclasses.replace(d.event, at=now)
                log.warning("%s: %s: %s", ev.kind, ev.persona, ev.reason)
                events.append(ev)
                try:
                    self._sink.emit(ev)
                except Exception:  # one broken sink must not stop detection for everyone
                    log.exception("event sink failed on %s", ev.kind)
        if stalled:
            self.stalls += 1
            log.warning("detector stalled for %.1fs (no tick): re-observing before any verdict", gap)
        return events
