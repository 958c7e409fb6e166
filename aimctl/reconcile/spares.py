"""Spare accounting: each pool's N+k from live state (pure).

A standby counts only if it could take over now: not quarantined, not marked failed, not
drifted, its hardware matching its declared facts, not suspect, its BMC answering. k is how many
counted standbys can take *every* persona of the pool; per persona, how many can take it. k = 0,
or a persona that no counted standby can take, is worth an alert before the next death, not
after.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from aimctl.failover.planner import standbys
from aimctl.loader import Definitions


@dataclass(frozen=True)
class Spares:
    pool: str
    k: int
    per_persona: dict[str, int]
    counted: tuple[str, ...]
    excluded: dict[str, str] = field(default_factory=dict)  # standby -> why it does not count
    sentence: str = ""

    @property
    def uncovered(self) -> list[str]:
        """Personas no counted standby can take."""
        return sorted(p for p, n in self.per_persona.items() if n == 0)


def spares(defs: Definitions, pool: str, assignment: Mapping[str, str], quarantined: Collection[str],
           unusable: Mapping[str, str]) -> Spares:
    """``unusable``: server -> why it cannot count (failed, drifted, unqualified, suspect, BMC down)."""
    free = standbys(defs, pool, dict(assignment), set(quarantined))
    excluded = {s: unusable[s] for s in free if s in unusable}
    counted = tuple(s for s in free if s not in excluded)
    personas = defs.pool_personas(pool)
    per = {p.name: sum(p.spec.qualification.met_by(defs.servers[s]) for s in counted) for p in personas}
    k = sum(all(p.spec.qualification.met_by(defs.servers[s]) for p in personas) for s in counted)
    n = len({s for s in assignment.values() if s in defs.pools[pool].members})
    parts = [f"pool {pool}: N+{k} ({n} active, {len(counted)} usable standby(s)"
             + (f": {', '.join(counted)}" if counted else "") + ")"]
    parts += [f"{s} not counted: {why}" for s, why in sorted(excluded.items())]
    uncovered = sorted(p for p, c in per.items() if c == 0)
    if uncovered:
        parts.append(f"no qualified standby for {', '.join(uncovered)}")
    return Spares(pool, k, per, counted, excluded, "; ".join(parts))
