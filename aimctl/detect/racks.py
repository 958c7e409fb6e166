"""Blast radius by rack: many deaths in one rack are one event, and a rack has its own limit (pure).

Bodies in one rack share a top-of-rack switch and usually a PDU; when several die within
``rack_window`` it is one failure (power, ToR), not N. It is reported and paged once, and its
failovers run at most ``storm.per_rack`` at a time so one rack cannot take every standby and every
switch session of the pool at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Death:
    persona: str
    server: str
    rack: str | None
    pdu: str | None
    at: float  # monotonic


@dataclass(frozen=True)
class RackEvent:
    rack: str
    servers: tuple[str, ...]
    personas: tuple[str, ...]
    pdus: tuple[str, ...]
    sentence: str


def rack_events(deaths: Sequence[Death], now: float, window_s: float, threshold: int,
                paged: Mapping[str, float]) -> list[RackEvent]:
    """Racks with at least ``threshold`` deaths within ``window_s`` of ``now`` that were not paged since
    their first such death. ``paged``: rack -> when it was last paged."""
    by_rack: dict[str, list[Death]] = {}
    for d in deaths:
        if d.rack is not None and now - d.at <= window_s:
            by_rack.setdefault(d.rack, []).append(d)
    out = []
    for rack, ds in sorted(by_rack.items()):
        first = min(d.at for d in ds)
        if len({d.server for d in ds}) < threshold or paged.get(rack, float("-inf")) >= first:
            continue
        servers = tuple(sorted({d.server for d in ds}))
        personas = tuple(sorted({d.persona for d in ds}))
        pdus = tuple(sorted({d.pdu for d in ds if d.pdu}))
        span = max(d.at for d in ds) - first
        cause = f"power (PDU {pdus[0]}) or the top-of-rack switch" if len(pdus) == 1 else \
            "the top-of-rack switch or rack power"
        out.append(RackEvent(rack, servers, personas, pdus,
                             f"rack {rack}: {len(servers)} bodies died within {span:.0f}s "
                             f"({', '.join(servers)}; personas {', '.join(personas)}): one rack event, likely {cause}; "
                             f"their failovers run within the rack limit"))
    return out


def rack_allows(rack: str | None, running_in_rack: int, limit: int | None) -> tuple[bool, str]:
    """May one more automatic failover out of ``rack`` start now?"""
    if rack is None or limit is None:
        return True, "no rack limit"
    if running_in_rack >= limit:
        return False, (f"rack brake: {running_in_rack} failover(s) out of rack {rack} already running "
                       f"(limit {limit}); queued until one ends")
    return True, f"{running_in_rack} of {limit} failovers out of rack {rack} running"
