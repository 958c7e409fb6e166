"""Who takes over, and what must change: pure functions over the definitions and the assignment.

Nothing here does I/O. The workflow asks the planner, then acts; ``aimctl plan`` asks the same
planner and prints, so a dry run and a real failover cannot disagree about the choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aimctl.drivers.protocols import PortIntent, PortMode
from aimctl.errors import OperatorError
from aimctl.loader import Definitions

@dataclass
class Choice:
    server: str | None
    why: list[str]
    rejected: dict[str, str] = field(default_factory=dict)


def standbys(defs: Definitions, pool: str, assignment: dict[str, str], quarantined: set[str]) -> list[str]:
    """Pool servers with no persona assigned and not quarantined, in preference order."""
    p = defs.pools[pool]
    busy = set(assignment.values())
    free = [m for m in p.members if m not in busy and m not in quarantined]
    rank = {s: i for i, s in enumerate(p.standby_preference)}
    return sorted(free, key=lambda s: (rank.get(s, len(rank)), s))


def choose(defs: Definitions, persona: str, assignment: dict[str, str], quarantined: set[str],
           unavailable: dict[str, str] | None = None, to: str | None = None) -> Choice:
    """The standby this persona should move to, with the reasons an operator would ask for.

    ``unavailable`` maps servers to why they cannot be used right now (BMC unhealthy, failed to
    boot this persona in an earlier try); they are skipped with that reason.
    """
    pd = defs.personas.get(persona)
    if pd is None:
        raise OperatorError(f"unknown persona {persona!r} (known: {', '.join(sorted(defs.personas))})")
    unavailable = unavailable or {}
    pool = defs.pools[pd.pool]
    rejected: dict[str, str] = {}
    busy = {s: p for p, s in assignment.items()}
    for m in pool.members:
        if m in quarantined:
            rejected[m] = "quarantined (an operator must clear it)"
        elif m in busy:
            rejected[m] = f"runs persona {busy[m]}"
        elif not pd.spec.qualification.met_by(defs.servers[m]):
            rejected[m] = "does not meet the persona's qualification"
        elif m in unavailable:
            rejected[m] = unavailable[m]
    if to is not None:
        if to not in pool.members:
            raise OperatorError(f"--to {to}: not a member of pool {pd.pool} ({', '.join(pool.members)})")
        if to in rejected:
            raise OperatorError(f"--to {to}: cannot take {persona}: {rejected[to]}")
        return Choice(to, [f"pool {pd.pool}", "chosen by the operator (--to)", "meets qualification"], rejected)
    candidates = [s for s in standbys(defs, pd.pool, assignment, quarantined) if s not in rejected]
    if not candidates:
        return Choice(None, [f"pool {pd.pool}: no standby can take {persona}"], rejected)
    pick = candidates[0]
    why = [f"pool {pd.pool}", f"standby {pick} meets qualification ({_qual_text(defs, persona)})"]
    if pick in pool.standby_preference:
        why.append(f"standby preference #{pool.standby_preference.index(pick) + 1}")
    else:
        why.append("first eligible standby by name")
    return Choice(pick, why, rejected)


def check_request(defs: Definitions, persona: str, to: str | None, assignment: dict[str, str],
                  quarantined: set[str], in_use: dict[str, str] | None = None) -> None:
    """Refuse, before any operation is opened, a request that names an unknown persona or server, or
    a target that can never take the persona (outside its pool, its own server, busy, quarantined,
    unqualified, held by another operation: ``in_use``). What may pass by itself (a BMC that does
    not answer right now) is left to the choose step, which then waits for an operator with the
    reason."""
    if persona not in defs.personas:
        raise OperatorError(f"unknown persona {persona!r} (known: {', '.join(sorted(defs.personas))})")
    if to is None:
        return
    if to not in defs.servers:
        raise OperatorError(f"unknown server {to!r} (pool {defs.personas[persona].pool}: "
                            f"{', '.join(defs.pools[defs.personas[persona].pool].members)})")
    others = {p: s for p, s in assignment.items() if p != persona and s}
    current = assignment.get(persona)
    if to == current:
        raise OperatorError(f"{persona} already runs on {to}")
    choose(defs, persona, others | ({persona: current} if current else {}), quarantined, in_use, to=to)


def choice_sentence(persona: str, server: str | None, why: Sequence[str], rejected: Mapping[str, str]) -> str:
    """Why this standby, and why not each other one."""
    nots = "; ".join(f"not {s}: {r}" for s, r in sorted(rejected.items()))
    if server is None:
        return f"no standby can take {persona}" + (f" ({nots})" if nots else "")
    reasons = [w for w in why if not w.startswith("pool ")]
    pool = next((w for w in why if w.startswith("pool ")), "")
    head = f"{server} chosen for {persona}" + (f" in {pool}" if pool else "")
    return head + (": " + ", ".join(reasons) if reasons else "") + (f"; {nots}" if nots else "")


def _qual_text(defs: Definitions, persona: str) -> str:
    q = defs.personas[persona].spec.qualification
    parts = []
    if q.models:
        parts.append("model in " + "/".join(q.models))
    if q.min_cores:
        parts.append(f">= {q.min_cores} cores")
    if q.min_memory_gb:
        parts.append(f">= {q.min_memory_gb} GB")
    return ", ".join(parts) or "none required"


def capacity(defs: Definitions, pool: str, assignment: dict[str, str],
             quarantined: set[str]) -> tuple[int, dict[str, int]]:
    """N+k: how many standbys can take *every* persona of the pool, and per persona how many can take it."""
    sb = standbys(defs, pool, assignment, quarantined)
    personas = defs.pool_personas(pool)
    per = {p.name: sum(p.spec.qualification.met_by(defs.servers[s]) for s in sb) for p in personas}
    k = sum(all(p.spec.qualification.met_by(defs.servers[s]) for p in personas) for s in sb)
    return k, per


def port_intents(defs: Definitions, persona: str, server: str) -> dict[str, list[PortIntent]]:
    """Per switch, what ``server``'s channels must carry to run ``persona``.

    A channel carries every network whose primary or secondary it is; it is a trunk when any of
    them is trunk-mode (the reference setup), else an access port of its one VLAN.
    """
    pd = defs.personas[persona]
    pool = defs.pools[pd.pool]
    srv = defs.servers[server]
    out: dict[str, list[PortIntent]] = {}
    for ch, cable in sorted(srv.channels.items()):
        nets = [n for n in pool.networks.values() if ch in (n.primary, n.secondary)]
        if not nets:
            continue
        vlans = tuple(sorted({n.vlan for n in nets}))
        trunk = any(n.mode == "trunk" for n in nets) or len(vlans) > 1
        intent = PortIntent(cable.port, PortMode.TRUNK if trunk else PortMode.ACCESS, vlans,
                            description=f"aimctl {persona} ch{ch}")
        out.setdefault(cable.switch, []).append(intent)
    return out


def quarantine_intents(defs: Definitions, server: str) -> dict[str, list[PortIntent]]:
    """Every cabled channel of ``server`` to its pool's quarantine VLAN, as an access port (no trunk:
    a quarantined body must not reach any tagged network either)."""
    pool = defs.pools[defs.server_pool[server]]
    out: dict[str, list[PortIntent]] = {}
    for ch, cable in sorted(defs.servers[server].channels.items()):
        out.setdefault(cable.switch, []).append(
            PortIntent(cable.port, PortMode.ACCESS, (pool.quarantine_vlan,), description=f"aimctl quarantine ch{ch}",
                       quarantine=True))
    return out


def merge_intents(*parts: dict[str, list[PortIntent]]) -> dict[str, list[PortIntent]]:
    out: dict[str, list[PortIntent]] = {}
    for part in parts:
        for sw, intents in part.items():
            out.setdefault(sw, []).extend(intents)
    return out
