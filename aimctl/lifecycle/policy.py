"""The persona lifecycle's decisions, as small pure functions over plain values (table-tested).

Which archives a persona has, which one ``--at`` means, which ones the pool's policy lets go, when
the next archive or rehearsal is due, when the last good rehearsal is too old, where a rehearsal
runs and what its ports carry, and what a persona made from a gold image is called and addressed.
Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from aimctl.drivers import snapnames
from aimctl.drivers.protocols import PortIntent, PortMode, PortState, Snapshot
from aimctl.errors import OperatorError
from aimctl.failover.planner import Choice, choose
from aimctl.failover.ports import restore_intent
from aimctl.journal import BACKGROUND_KINDS
from aimctl.loader import Definitions
from aimctl.model import ArchivePolicy, RehearsalPolicy
from aimctl.validation import IQN_RE, NAME_RE, REHEARSAL_SUFFIX, rehearsal_initiator

__all__ = ["ArchiveSet", "NoArchive", "archive_due", "archive_sets", "expired", "pick_archive", "rehearsal_due",
           "rehearsal_initiator", "rehearsal_stale"]


OpView = tuple[str, str, str]  # (operation id, kind, persona)
NEEDS_STANDBY = ("failover", "move", "failback")


class NoArchive(OperatorError):
    """``--at`` names no archive the persona has; nothing is touched."""

    http_status = 404


@dataclass(frozen=True)
class ArchiveSet:
    """A persona's LUNs frozen and copied together."""

    id: str
    created: float
    snapshots: tuple[Snapshot, ...]
    complete: bool  # every LUN the persona has now is in it

    def of(self, target: str, lun: int) -> Snapshot | None:
        return next((s for s in self.snapshots if s.target == target and s.lun == lun), None)


def archive_sets(snaps: Iterable[Snapshot], label: str, luns: Sequence[tuple[str, int]]) -> list[ArchiveSet]:
    """The sets of ``label`` (a persona), oldest first; complete when each of ``luns`` is in it."""
    by: dict[str, list[Snapshot]] = {}
    for s in snaps:
        if s.label == label:
            by.setdefault(s.set, []).append(s)
    want = set(luns)
    out = [ArchiveSet(k, v[0].created, tuple(sorted(v, key=lambda s: (s.target, s.lun))),
                      want <= {(s.target, s.lun) for s in v}) for k, v in by.items()]
    return sorted(out, key=lambda a: (a.created, a.id))


def when(text: str) -> float:
    """An operator's time: ISO 8601 (``2026-11-27T10:15``, ``...Z``, ``+01:00``, a space for T); UTC
    when no zone is given."""
    value = text.strip().replace(" ", "T")
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise NoArchive(f"--at {text!r}: not an archive id nor a time (write e.g. 2026-11-27T10:15Z)") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(t * 1000) % 1000:03d}Z"


def pick_archive(sets: Sequence[ArchiveSet], persona: str, at: str) -> ArchiveSet:
    """The archive ``at`` names: its id, ``latest``, or the newest complete one taken at or before a time."""
    complete = [s for s in sets if s.complete]
    if not complete:
        raise NoArchive(f"persona {persona} has no archive yet")
    if at.strip().lower() in ("latest", "now"):
        return complete[-1]
    if snapnames.SET_RE.match(at):
        got = next((s for s in complete if s.id == at), None)
        if got is None:
            raise NoArchive(f"persona {persona} has no archive {at} (it has {len(complete)}: "
                            f"{complete[0].id} ... {complete[-1].id})")
        return got
    t = when(at)
    before = [s for s in complete if s.created <= t]
    if not before:
        raise NoArchive(f"persona {persona} has no archive at or before {iso(t)} "
                        f"(the oldest is {complete[0].id}, taken {iso(complete[0].created)})")
    return before[-1]


def expired(sets: Sequence[ArchiveSet], now: float, policy: ArchivePolicy, keep_ids: Iterable[str] = ()) -> list[ArchiveSet]:
    """Sets the policy lets go: complete ones older than ``keep`` (never the newest complete one, so
    a persona always has an archive), and incomplete ones (a copy cut short) other than ``keep_ids``."""
    keep = set(keep_ids)
    complete = [s for s in sets if s.complete]
    newest = complete[-1].id if complete else None
    out = []
    for s in sets:
        if s.id in keep or s.id == newest:
            continue
        if not s.complete or now - s.created > policy.keep:
            out.append(s)
    return out


def archive_due(last: float | None, now: float, policy: ArchivePolicy) -> bool:
    return policy.every is not None and (last is None or now - last >= policy.every)


def rehearsal_due(last_attempt: float | None, now: float, policy: RehearsalPolicy) -> bool:
    return policy.every is not None and policy.vlan is not None and (last_attempt is None or
                                                                     now - last_attempt >= policy.every)


def duration(seconds: float) -> str:
    """``1209600`` -> ``14d``: the way durations are written in the definitions."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def stale_after(policy: RehearsalPolicy) -> float | None:
    if policy.stale_after is not None:
        return policy.stale_after
    return 2 * policy.every if policy.every is not None else None


def rehearsal_stale(last_good: float | None, now: float, policy: RehearsalPolicy) -> str | None:
    """Why the persona's proof is too old, or None while it is fresh (or the pool asks for none)."""
    limit = stale_after(policy)
    if limit is None:
        return None
    if last_good is None:
        return f"never rehearsed successfully (the policy wants one every {duration(limit)} at most)"
    if now - last_good > limit:
        return f"last good rehearsal {iso(last_good)} is older than {duration(limit)}"
    return None


def in_the_way(ops: Iterable[OpView], persona: str, kind: str, pool_of: Mapping[str, str]) -> list[str]:
    """Which background operations an operation of ``kind`` on ``persona`` pre-empts: any archive or
    rehearsal of the persona (they share its lease), and every rehearsal of its pool when it may need
    a standby (a failover, move or failback: a rehearsal may hold the very standby it needs)."""
    pool = pool_of.get(persona)
    out = []
    for op_id, op_kind, op_persona in ops:
        if op_kind not in BACKGROUND_KINDS:
            continue
        if op_persona == persona or (op_kind == "rehearsal" and kind in NEEDS_STANDBY and pool is not None
                                     and pool_of.get(op_persona) == pool):
            out.append(op_id)
    return out


# ---------------------------------------------------------------------------- rehearsal


def rehearsal_target(boot_target: str) -> str:
    return boot_target + REHEARSAL_SUFFIX


def rehearsal_chap_user(persona: str) -> str:
    return f"aimctl-{persona}{REHEARSAL_SUFFIX}"


def rehearsal_standby(defs: Definitions, persona: str, assignment: Mapping[str, str], quarantined: set[str],
                      unavailable: Mapping[str, str], on: str | None = None) -> Choice:
    """Where a rehearsal of ``persona`` runs: ``on`` if given, else the pool's ``rehearsal.on`` order,
    else the standby a failover would choose now (the one the rehearsal should prove)."""
    pool = defs.pools[defs.personas[persona].pool]
    if on is not None:
        return choose(defs, persona, dict(assignment), quarantined, dict(unavailable), to=on)
    for s in pool.rehearsal.on:
        try:
            return choose(defs, persona, dict(assignment), quarantined, dict(unavailable), to=s)
        except OperatorError:
            continue
    return choose(defs, persona, dict(assignment), quarantined, dict(unavailable))


def rehearsal_intents(defs: Definitions, server: str, vlan: int) -> dict[str, list[PortIntent]]:
    """Every cabled channel of ``server`` an access port of the rehearsal VLAN: nothing tagged, nothing
    production reaches it (isolation is a property the switch read-back can prove)."""
    out: dict[str, list[PortIntent]] = {}
    for ch, cable in sorted(defs.servers[server].channels.items()):
        out.setdefault(cable.switch, []).append(
            PortIntent(cable.port, PortMode.ACCESS, (vlan,), description=f"aimctl rehearsal ch{ch}"))
    return out


def captured(states: Mapping[str, Sequence[PortState]]) -> dict[str, list[list[object]]]:
    """Port states as journal facts (JSON), to put back after the rehearsal."""
    return {sw: [[s.port, s.mode.value if s.mode else None, list(s.vlans), s.native_vlan] for s in ports]
            for sw, ports in states.items()}


def put_back(facts: Mapping[str, Sequence[Sequence[object]]]) -> dict[str, list[PortIntent]]:
    """The intents that restore what ``captured`` recorded, as the switch step's own restore does (a
    mode aimctl does not set comes back as an access port of VLAN 1, the lab's and a switch's default)."""
    out: dict[str, list[PortIntent]] = {}
    for sw, ports in facts.items():
        for port, mode, vlans, native in ports:
            vl = tuple(int(v) for v in vlans) if isinstance(vlans, list) else ()
            state = PortState(str(port), PortMode(mode) if mode in ("access", "trunk") else None, vl,
                              int(native) if isinstance(native, int) else None)
            out.setdefault(sw, []).append(restore_intent(state) or PortIntent(str(port), PortMode.ACCESS, (1,)))
    return out


# ---------------------------------------------------------------------------- gold-image personas


def next_address(subnet: ipaddress.IPv4Network, used: Iterable[ipaddress.IPv4Address]) -> ipaddress.IPv4Address:
    """The address after the highest one in use in ``subnet`` (the operator reviews it in the stanza)."""
    mine = sorted(a for a in used if a in subnet)
    hosts = list(subnet.hosts()) if subnet.num_addresses <= 4096 else None
    start = mine[-1] + 1 if mine else (hosts[9] if hosts and len(hosts) > 9 else subnet.network_address + 1)
    if start not in subnet or start == subnet.broadcast_address:
        raise OperatorError(f"no free address left after {mine[-1]} in {subnet}; give the persona's addresses by hand")
    return start


def renamed(example: str, example_name: str, name: str) -> str | None:
    """``example`` (an IQN of persona ``example_name``) with that name replaced by ``name``, if it
    contains it exactly once as a word."""
    hits = list(re.finditer(rf"(?<![a-z0-9]){re.escape(example_name)}(?![a-z0-9])", example))
    if len(hits) != 1:
        return None
    out = example[:hits[0].start()] + name + example[hits[0].end():]
    return out if IQN_RE.match(out) else None


@dataclass(frozen=True)
class NewPersona:
    name: str
    pool: str
    storage: str
    home: str
    initiator: str
    target: str
    lun: int
    addresses: dict[str, str]


def new_persona(defs: Definitions, name: str, pool: str, home: str | None, initiator: str | None,
                target: str | None, standbys: Sequence[str]) -> NewPersona:
    """What a persona made from a gold image is called and addressed, or a clear refusal."""
    if not NAME_RE.match(name):
        raise OperatorError(f"persona name {name!r} refused: lower-case letters, digits and '-', starting with a letter")
    if name in defs.personas:
        raise OperatorError(f"persona {name} already exists (pool {defs.personas[name].pool})")
    if pool not in defs.pools:
        raise OperatorError(f"unknown pool {pool!r} (known: {', '.join(sorted(defs.pools))})")
    p = defs.pools[pool]
    siblings = [x for x in defs.pool_personas(pool)]
    example = siblings[0] if siblings else None
    if initiator is None and example is not None:
        initiator = renamed(example.spec.initiator, example.name, name)
    if target is None and example is not None:
        target = renamed(example.spec.boot.target, example.name, name)
    if initiator is None or target is None:
        raise OperatorError(f"cannot name the new persona's initiator and boot target after pool {pool}'s personas: "
                            "give --initiator and --target")
    for what, v in (("initiator", initiator), ("target", target)):
        if not IQN_RE.match(v):
            raise OperatorError(f"--{what} {v!r} refused: not an iSCSI qualified name")
    if initiator.endswith(REHEARSAL_SUFFIX):
        raise OperatorError(f"--initiator {initiator}: names ending in {REHEARSAL_SUFFIX} are reserved for rehearsals")
    for other in defs.personas.values():
        if other.spec.initiator == initiator:
            raise OperatorError(f"initiator {initiator} is already persona {other.name}'s")
        if target in [other.spec.boot.target] + [d.target for d in other.spec.data]:
            raise OperatorError(f"target {target} is already persona {other.name}'s")
    storages = sorted({x.spec.storage for x in siblings})
    if len(storages) != 1:
        raise OperatorError(f"pool {pool}'s personas use {len(storages) or 'no'} storage(s): cannot tell where "
                            "the new persona's LUN goes")
    if home is None:
        if not standbys:
            raise OperatorError(f"pool {pool} has no standby to be the new persona's home; give --home")
        home = standbys[0]
    elif home not in p.members:
        raise OperatorError(f"--home {home}: not a member of pool {pool}")
    used = [a for x in defs.personas.values() for a in x.spec.addresses.values()]
    addresses = {net: str(next_address(n.subnet, used)) for net, n in sorted(p.networks.items())}
    return NewPersona(name, pool, storages[0], home, initiator, target, example.spec.boot.lun if example else 1,
                      addresses)
