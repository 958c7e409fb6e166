"""What the world should look like, from the definitions and the journal's assignment (pure).

Each check names one thing a drift pass reads back, with a stable key (``ports:sw1:1/g3``) so a
finding keeps its identity from pass to pass:

- an active persona: every cabled channel's port carries its networks (mode and VLANs), each of
  its targets lets only its initiator in with only its CHAP account, its body's boot config
  names its identity, its body is powered on;
- a quarantined body: ports in the quarantine VLAN, power off;
- a standby: no port carries a network of its pool, its boot config holds no persona identity;
- every body: its hardware facts (model, cores, memory, declared MACs).

Personas and bodies an operation holds (a lease) are left out: their world is changing on purpose.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal

from aimctl.drivers.protocols import PortIntent
from aimctl.failover.chap import ChapStore
from aimctl.failover.planner import port_intents, quarantine_intents
from aimctl.loader import Definitions

Role = Literal["persona", "quarantine", "standby"]


@dataclass(frozen=True)
class PortCheck:
    key: str
    switch: str
    port: str
    server: str
    channel: int
    role: Role
    persona: str | None = None
    intent: PortIntent | None = None  # persona, quarantine: what the port must carry
    forbidden: tuple[int, ...] = ()  # standby: VLANs it must not carry


@dataclass(frozen=True)
class AccessCheck:
    key: str
    storage: str
    target: str
    persona: str
    initiator: str
    chap_user: str


@dataclass(frozen=True)
class BootCheck:
    key: str
    server: str
    persona: str | None  # None: the body must hold no persona identity
    initiator: str = ""
    target: str = ""
    lun: int = 0
    portal_host: str = ""
    portal_port: int = 0
    chap_user: str = ""
    forbidden: tuple[str, ...] = ()  # initiators a standby's firmware must not carry


@dataclass(frozen=True)
class PowerCheck:
    key: str
    server: str
    want: Literal["on", "off"]
    why: str
    persona: str | None = None


@dataclass(frozen=True)
class FactsCheck:
    key: str
    server: str
    model: str
    cores: int
    memory_gb: int
    macs: tuple[str, ...]
    standby: bool


@dataclass
class Expectation:
    ports: list[PortCheck] = field(default_factory=list)
    access: list[AccessCheck] = field(default_factory=list)
    boot: list[BootCheck] = field(default_factory=list)
    power: list[PowerCheck] = field(default_factory=list)
    facts: list[FactsCheck] = field(default_factory=list)

    def size(self) -> int:
        return len(self.ports) + len(self.access) + len(self.boot) + len(self.power) + len(self.facts)


def _channel(defs: Definitions, server: str, switch: str, port: str) -> int:
    return next(ch for ch, c in defs.servers[server].channels.items() if c.switch == switch and c.port == port)


def expected(defs: Definitions, assignment: Mapping[str, str | None], quarantined: Collection[str],
             skip_personas: Collection[str] = (), skip_servers: Collection[str] = ()) -> Expectation:
    ex = Expectation()
    held = set(skip_servers)
    on: dict[str, str] = {}
    for persona, server in sorted(assignment.items()):
        if not server or persona not in defs.personas:
            continue
        if persona in skip_personas or server in held:
            held.add(server)  # an operation is changing this body: not a standby to check either
            continue
        on[server] = persona
        spec = defs.personas[persona].spec
        for sw, intents in sorted(port_intents(defs, persona, server).items()):
            for i in intents:
                ex.ports.append(PortCheck(f"ports:{sw}:{i.port}", sw, i.port, server,
                                          _channel(defs, server, sw, i.port), "persona", persona, i))
        user = ChapStore.user(persona)
        for t in [spec.boot.target] + [d.target for d in spec.data]:
            ex.access.append(AccessCheck(f"storage:{spec.storage}:{t}", spec.storage, t, persona, spec.initiator, user))
        st = defs.storage[spec.storage]
        ex.boot.append(BootCheck(f"boot:{server}", server, persona, spec.initiator, spec.boot.target, spec.boot.lun,
                                 st.portal, st.port, user))
        ex.power.append(PowerCheck(f"power:{server}", server, "on", f"runs {persona}", persona))
    busy = set(on) | {s for s in assignment.values() if s}
    for server in sorted(quarantined):
        if server in held or server not in defs.servers or server in busy:
            continue
        for sw, intents in sorted(quarantine_intents(defs, server).items()):
            for i in intents:
                ex.ports.append(PortCheck(f"ports:{sw}:{i.port}", sw, i.port, server,
                                          _channel(defs, server, sw, i.port), "quarantine", None, i))
        ex.power.append(PowerCheck(f"power:{server}", server, "off", "quarantined"))
    for pool_name, pool in sorted(defs.pools.items()):
        vlans = tuple(sorted({n.vlan for n in pool.networks.values()}))
        initiators = tuple(sorted(p.spec.initiator for p in defs.pool_personas(pool_name)))
        for server in pool.members:
            if server in held or server in busy or server in quarantined or server not in defs.servers:
                continue
            for ch, cable in sorted(defs.servers[server].channels.items()):
                ex.ports.append(PortCheck(f"ports:{cable.switch}:{cable.port}", cable.switch, cable.port, server, ch,
                                          "standby", None, None, vlans))
            ex.boot.append(BootCheck(f"boot:{server}", server, None, forbidden=initiators))
    for server, srv in sorted(defs.servers.items()):
        if server in held:
            continue
        standby = server not in busy and server not in quarantined
        ex.facts.append(FactsCheck(f"facts:{server}", server, srv.model, srv.cores, srv.memory_gb,
                                   tuple(srv.nic_macs), standby))
    return ex
