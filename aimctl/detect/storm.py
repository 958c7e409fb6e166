"""The storm brake: which pools pause, which resume, which queued failovers start, which are dropped.

Many personas of one pool in trouble at once is a switch or power event, not N independent deaths:
failing them all over would fence healthy bodies and exhaust the standbys. So automatic failover
pauses in such a pool, the operators are paged, and deaths queue. A pure function of the moment
(table-tested); ``daemon.py`` applies what it says.

- pause: more than ``pause_above_percent`` of the pool's personas in trouble, and more than one;
- resume: an automatic pause whose storm subsided. An operator's pause is never lifted here;
- drop: a queued trigger whose persona recovered (its detector state is alive again), whose body
  changed since the verdict (another operation moved it), or that an operation already holds (its
  operator decides; the detector keeps watching and will speak again once the operation ends);
- start: queued triggers of pools paused by nobody, oldest first, while the pool runs fewer
  operations than ``max_concurrent``; the rest are held, each with its reason.

Taking a trigger up is not the last word: the daemon asks the sources again (``recheck``) before it
opens the operation, and the confirm step asks once more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PoolLoad:
    personas: tuple[str, ...]
    troubled: tuple[str, ...]  # personas whose detector state is not alive
    running: int  # unfinished operations of the pool (any kind), plus those being opened
    max_concurrent: int
    pause_above_percent: int


@dataclass(frozen=True, slots=True)
class Queued:
    persona: str
    pool: str
    trigger: str  # the detector event's kind
    evidence: str
    server: str | None  # the body the verdict was about


@dataclass(frozen=True)
class StormPlan:
    pause: dict[str, str] = field(default_factory=dict)  # pool -> why
    resume: dict[str, str] = field(default_factory=dict)  # pool -> why
    start: list[tuple[Queued, str]] = field(default_factory=list)  # oldest first
    drop: list[tuple[Queued, str]] = field(default_factory=list)
    hold: dict[str, str] = field(default_factory=dict)  # persona -> why it waits


def plan_storm(
    pools: Mapping[str, PoolLoad],
    queued: Sequence[Queued],
    states: Mapping[str, str],
    assignment: Mapping[str, str | None],
    busy: Set[str],
    auto_paused: Set[str],
    operator_paused: Set[str] = frozenset(),
) -> StormPlan:
    """``states``: persona -> detector state word; ``busy``: personas an operation holds;
    ``auto_paused``: pools the storm brake paused before; ``operator_paused``: pools an operator paused."""
    plan = StormPlan()
    paused = set(auto_paused)
    for name, load in sorted(pools.items()):
        if not load.personas:
            continue
        share = 100 * len(load.troubled) / len(load.personas)
        storm = share > load.pause_above_percent and len(load.troubled) > 1
        if storm and name not in paused:
            plan.pause[name] = (
                f"{len(load.troubled)} of {len(load.personas)} personas of pool {name} in trouble at once "
                f"({', '.join(sorted(load.troubled))}): automatic failover paused; an operator decides"
            )
            paused.add(name)
        elif not storm and name in paused:
            plan.resume[name] = f"storm over in pool {name}: automatic failover resumes"
            paused.discard(name)
    slots = {name: max(0, load.max_concurrent - load.running) for name, load in pools.items()}
    for q in queued:
        state = states.get(q.persona, "alive")
        if q.persona in busy:
            plan.drop.append((q, "an operation already holds it; its operator decides"))
        elif state == "alive":
            plan.drop.append((q, f"recovered since the {q.trigger} verdict"))
        elif q.server is not None and assignment.get(q.persona) != q.server:
            plan.drop.append((q, f"no longer on {q.server}"))
        elif q.pool in operator_paused:
            plan.hold[q.persona] = f"pool {q.pool} paused by an operator"
        elif q.pool in paused:
            plan.hold[q.persona] = f"pool {q.pool} paused by the storm brake"
        elif slots.get(q.pool, 0) <= 0:
            limit = pools[q.pool].max_concurrent if q.pool in pools else 0
            plan.hold[q.persona] = f"pool {q.pool} already runs its limit of {limit} operation(s)"
        else:
            slots[q.pool] -= 1
            plan.start.append((q, f"pool {q.pool} has room ({slots[q.pool]} more after this)"))
    return plan
