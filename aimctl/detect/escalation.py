"""Escalation limit: how many automatic failovers one persona may have in a window (pure).

A body that kills every standby it lands on (a poisoned image, a persona that panics the kernel on
boot) would otherwise walk through the whole pool. Beyond ``max_failovers`` automatic failovers in
``window``, the next death stops in needs-operator with the history of the earlier ones: an
operator decides whether the hardware or the persona is at fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aimctl.model import Escalation


@dataclass(frozen=True)
class PastFailover:
    op_id: str
    started: float  # wall clock
    from_server: str | None
    to_server: str | None
    state: str
    result: str = ""


@dataclass(frozen=True)
class EscalationVerdict:
    allowed: bool
    sentence: str
    history: tuple[PastFailover, ...] = ()


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 60}m{s % 60:02d}s ago" if s >= 60 else f"{s}s ago"


def _span(seconds: float) -> str:
    s = int(seconds)
    if s % 3600 == 0:
        return f"{s // 3600}h"
    return f"{s // 60}m" if s % 60 == 0 and s >= 60 else f"{s}s"


def describe(p: PastFailover, now: float) -> str:
    where = f"{p.from_server or '?'} -> {p.to_server or '?'}"
    return f"{p.op_id} ({where}, {p.state}, {_ago(now - p.started)})"


def escalation(persona: str, history: Sequence[PastFailover], now: float, limit: Escalation) -> EscalationVerdict:
    """May one more automatic failover of ``persona`` start? ``history``: its automatic failovers.

    Only those that chose a standby count: the limit is about bodies the persona lands on. A death
    stopped by this very limit, or found "not dead after all" before a standby was chosen, landed
    nowhere; counted, each stop would raise the count that causes the next stop."""
    recent = tuple(sorted((p for p in history if now - p.started <= limit.window and p.to_server),
                          key=lambda p: p.started))
    if len(recent) < limit.max_failovers:
        left = limit.max_failovers - len(recent)
        return EscalationVerdict(True, f"{persona} has had {len(recent)} automatic failover(s) in the last "
                                       f"{_span(limit.window)}; {left} more allowed", recent)
    seen = "; ".join(describe(p, now) for p in recent)
    return EscalationVerdict(False, f"not failed over: {persona} already had {len(recent)} automatic failovers in the "
                                    f"last {_span(limit.window)} (limit {limit.max_failovers}): {seen}; an operator "
                                    "decides whether the bodies or the persona are at fault", recent)
