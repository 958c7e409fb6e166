"""Suspect bodies: signs that hardware is failing before it dies, and what the pool does about it.

All pure. Three signals, each enough on its own:

- BMC health at or above the pool's ``preempt.health`` (Warning or Critical);
- an event-log entry that matches a row of the predictive-event table (data, in
  ``predictive_events.yaml``: correctable-ECC limit, PSU redundancy lost, fan failure, predictive
  disk failure);
- link flaps: ``preempt.link_flaps`` linkDown traps on one of the body's ports within
  ``flap_window``. A body losing power (a fence, a failback, a pulled plug) sends one linkDown on
  every port at once: those are power events, not flaps, and are not counted.

A suspect body leads to an alert, or (``preempt.action: move``) to a planned move of its persona,
through an approved change record when the pool asks for one and only inside its change window.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml

from aimctl.drivers.protocols import LogEntry
from aimctl.errors import OperatorError
from aimctl.model import ChangeWindow, Preempt

TABLE_PATH = Path(__file__).with_name("predictive_events.yaml")
_RANK = {"unknown": 0, "ok": 1, "warning": 2, "critical": 3}
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class PredictiveEvent:
    id: str
    what: str
    ipmi: tuple[tuple[str, int, int], ...]  # (sensor, event type, offset)
    redfish: tuple[tuple[re.Pattern[str], str | None], ...]  # (message pattern, sensor type or any)


def parse_table(doc: Any, where: str = "predictive events") -> dict[str, PredictiveEvent]:
    if not isinstance(doc, dict):
        raise OperatorError(f"{where}: want a mapping of event id -> row")
    out = {}
    for eid, row in doc.items():
        try:
            ipmi = tuple((str(r["sensor"]), int(r["event_type"]), int(r["offset"])) for r in row.get("ipmi") or ())
            redfish = tuple((re.compile(str(r["message"]), re.IGNORECASE), r.get("sensor"))
                            for r in row.get("redfish") or ())
            out[str(eid)] = PredictiveEvent(str(eid), str(row["what"]), ipmi, redfish)
        except (KeyError, TypeError, ValueError, AttributeError, re.error) as exc:
            raise OperatorError(f"{where}: row {eid!r}: {exc}") from None
    return out


@lru_cache(maxsize=4)
def load_table(path: Path = TABLE_PATH) -> dict[str, PredictiveEvent]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise OperatorError(f"{path}: cannot load the predictive-event table: {exc}") from None
    return parse_table(doc, str(path))


def match(entry: LogEntry, table: Mapping[str, PredictiveEvent], only: Iterable[str] = ()) -> PredictiveEvent | None:
    wanted = set(only)
    for ev in table.values():
        if wanted and ev.id not in wanted:
            continue
        if entry.event_type is not None and entry.offset is not None:
            if any(entry.sensor == s and entry.event_type == t and entry.offset == o for s, t, o in ev.ipmi):
                return ev
            continue
        for pattern, sensor in ev.redfish:
            if (sensor is None or sensor == entry.sensor) and pattern.search(entry.message):
                return ev
    return None


def flaps(link_downs: Sequence[float], now: float, window_s: float) -> int:
    return sum(1 for t in link_downs if 0 <= now - t <= window_s)


POWER_EVENT_S = 2.0  # how close the linkDowns of all of a body's ports are when its power goes


def without_power_events(link_downs: Mapping[int, tuple[float, ...]], channels: int,
                         within_s: float = POWER_EVENT_S) -> dict[int, tuple[float, ...]]:
    """The linkDowns that are not part of a power event: a down on one port is a power event when
    every one of the body's ``channels`` cabled ports went down within ``within_s`` of it. A body
    with one cabled port (or an unknown count) cannot tell the two apart: all its downs count."""
    if channels < 2 or len(link_downs) < channels:
        return dict(link_downs)

    def power_event(t: float) -> bool:
        return all(any(abs(t - u) <= within_s for u in times) for times in link_downs.values())

    return {ch: tuple(t for t in times if not power_event(t)) for ch, times in link_downs.items()}


@dataclass(frozen=True)
class Signals:
    server: str
    health: str = "unknown"  # ok | warning | critical | unknown
    entries: tuple[LogEntry, ...] = ()
    link_downs: Mapping[int, tuple[float, ...]] = field(default_factory=dict)  # channel -> linkDown times
    channels: int = 0  # the body's cabled ports (0: unknown), to tell power events from flaps


@dataclass(frozen=True)
class SuspectVerdict:
    suspect: bool
    reasons: tuple[str, ...]
    sentence: str
    events: tuple[str, ...] = ()  # matched log entry ids (alerted once each)


def suspect_verdict(sig: Signals, policy: Preempt, table: Mapping[str, PredictiveEvent], now: float) -> SuspectVerdict:
    reasons: list[str] = []
    if _RANK.get(sig.health, 0) >= _RANK[policy.health]:
        reasons.append(f"BMC health {sig.health.capitalize()}")
    matched: list[str] = []
    for e in sig.entries:
        ev = match(e, table, policy.events)
        if ev is not None:
            matched.append(e.id)
            reasons.append(f"event log: {ev.what} ({e.message.rstrip('.')})")
    counts = {ch: flaps(times, now, policy.flap_window)
              for ch, times in without_power_events(sig.link_downs, sig.channels).items()}
    worst = max(counts, key=lambda ch: (counts[ch], -ch), default=None)
    if worst is not None and counts[worst] >= policy.link_flaps:
        reasons.append(f"{counts[worst]} linkDown traps on channel {worst} in {policy.flap_window:.0f}s "
                       f"(limit {policy.link_flaps})")
    if not reasons:
        return SuspectVerdict(False, (), f"{sig.server} shows no sign of failing")
    return SuspectVerdict(True, tuple(reasons), f"{sig.server} is suspect: " + "; ".join(reasons), tuple(matched))


# ---------------------------------------------------------------------------- change windows


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def in_window(w: ChangeWindow, when: datetime) -> bool:
    """Is ``when`` (aware) inside the window? A window past midnight belongs to the day it opens."""
    local = when.astimezone(ZoneInfo(w.zone))
    start, end, now = _minutes(w.start), _minutes(w.end), local.hour * 60 + local.minute
    today = DAYS[local.weekday()]
    yesterday = DAYS[(local.weekday() - 1) % 7]
    if start < end:
        return today in w.days and start <= now < end
    return (today in w.days and now >= start) or (yesterday in w.days and now < end)


def next_opening(w: ChangeWindow, when: datetime) -> datetime:
    """The next moment (aware, in the window's zone) at which the window opens after ``when``."""
    zone = ZoneInfo(w.zone)
    local = when.astimezone(zone)
    h, m = (int(x) for x in w.start.split(":"))
    for days in range(0, 8):
        day = (local + timedelta(days=days)).date()
        candidate = datetime(day.year, day.month, day.day, h, m, tzinfo=zone)
        if candidate > local and DAYS[candidate.weekday()] in w.days:
            return candidate
    raise OperatorError("change window never opens")  # pragma: no cover - days is never empty


Action = Literal["none", "alert", "move", "wait-window"]


@dataclass(frozen=True)
class PreemptDecision:
    action: Action
    sentence: str


def preempt_decision(persona: str | None, server: str, verdict: SuspectVerdict, policy: Preempt, busy: bool,
                     has_standby: bool, when: datetime) -> PreemptDecision:
    """What to do about a suspect body (``persona``: what runs on it, None for a standby)."""
    if not verdict.suspect:
        return PreemptDecision("none", verdict.sentence)
    if persona is None:
        return PreemptDecision("alert", f"{verdict.sentence}; a standby: not counted as a spare until cleared")
    if policy.action == "alert":
        return PreemptDecision("alert", f"{verdict.sentence}; pool policy is to alert: {persona} stays on {server}")
    if busy:
        return PreemptDecision("alert", f"{verdict.sentence}; {persona} already has an operation: no planned move")
    if not has_standby:
        return PreemptDecision("alert", f"{verdict.sentence}; no qualified standby to move {persona} to")
    if policy.window is not None and not in_window(policy.window, when):
        opens = next_opening(policy.window, when)
        return PreemptDecision("wait-window", f"{verdict.sentence}; planned move of {persona} waits for the change "
                                              f"window ({opens:%a %H:%M} {policy.window.zone})")
    gate = " through a change record that must be approved" if policy.change_approval else ""
    return PreemptDecision("move", f"{verdict.sentence}; planned move of {persona} off {server}{gate}")
