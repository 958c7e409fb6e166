"""The chaos soak's decisions, as pure functions over what the soak saw (table-tested):

- ``plan_round``: which faults a round injects, on which bodies, with which options;
- ``operator_exit``: how an operator answers an operation that waits (approve, retry,
  mark-fenced after pulling the plug, abandon after repeated failures);
- ``heal_plan``: the maintenance an operator does between incidents (a quarantined body is
  powered off, repaired and cleared; a powered standby is switched off; a persona goes home);
- ``settled`` and ``check``: when the world has come to rest, and the invariants it must hold then
  (no double access; each persona on exactly one body with a heartbeat, or waiting for an operator
  with a reason; no waiting operation without its live lease; no leaked process).

The soak (``lab.chaos.soak``) does the I/O: the lab's control API, the real controller process and
the real ``aimctl`` command line.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------------- what the soak sees


@dataclass(frozen=True)
class Body:
    """One server as the lab shows it."""

    power: bool
    booted: str | None = None  # the persona its OS runs (None: none)
    state: str = "off"  # off, booting, running, boot-failed, crashed, halted


@dataclass(frozen=True)
class Waiting:
    """An unfinished operation as the controller shows it."""

    id: str
    persona: str
    state: str  # running, needs-operator, waiting-approval
    reason: str = ""
    kind: str = "failover"


@dataclass(frozen=True)
class World:
    """The reference setup as the definitions give it, and the controller's view now."""

    pool_of: Mapping[str, str]  # persona -> pool
    home: Mapping[str, str]  # persona -> its home server
    members: Mapping[str, tuple[str, ...]]  # pool -> servers
    switches: Mapping[str, tuple[str, ...]]  # pool -> switches its bodies are cabled to
    redfish: frozenset[str]  # servers with a Redfish BMC (storage-step-error needs one)
    dag: frozenset[str]  # personas that are DAG members
    assignment: Mapping[str, str | None] = field(default_factory=dict)  # persona -> server now
    quarantined: frozenset[str] = frozenset()

    def running(self, pool: str) -> list[tuple[str, str]]:
        """(persona, server) of the pool's assigned personas."""
        return sorted((p, s) for p, s in self.assignment.items() if s and self.pool_of.get(p) == pool)

    def standbys(self, pool: str) -> list[str]:
        used = {s for s in self.assignment.values() if s}
        return [s for s in self.members[pool] if s not in used and s not in self.quarantined]


@dataclass(frozen=True)
class Injection:
    kind: str
    target: str
    params: Mapping[str, float] = field(default_factory=dict)

    def text(self) -> str:
        opts = "".join(f" {k}={v:g}" for k, v in sorted(self.params.items()))
        return f"{self.kind} {self.target}{opts}"


@dataclass(frozen=True)
class Plan:
    injections: tuple[Injection, ...]
    death: str | None  # the persona whose body the round kills (None: noise only)
    why: str

    def text(self) -> str:
        return "; ".join(i.text() for i in self.injections) + f" ({self.why})"


# ---------------------------------------------------------------------------- what a round does

# Faults the soak never draws: they need the lab's controller cluster (``lab up --etcd 3
# --controllers 3``), and the soak drives one controller; tests/e2e/test_cluster.py runs them.
CLUSTER_ONLY = ("etcd-member-kill", "controller-etcd-cut")

# How a round kills a body (the victim): a power cut, its links cut (alive, but rule 2's two
# signals), its SCN and BMC gone together (presumed dead), or its service failing (unhealthy).
DEATHS = ("power-button", "link-down", "scn-partition+bmc-down", "service-fail")


def _complications(rng: random.Random, w: World, pool: str, victim: str, server: str,
                   death: str) -> list[Callable[[], list[Injection]]]:
    """What else may go wrong during the victim's failover (each applicable one is a candidate)."""
    out: list[Callable[[], list[Injection]]] = []
    standbys = w.standbys(pool)
    out.append(lambda: [Injection("bmc-lies", server)])
    out.append(lambda: [Injection("bmc-auth", server)])
    out.append(lambda: [Injection("bmc-alert", server)])
    out.append(lambda: [Injection("bmc-slow", server, {"delay_s": round(rng.uniform(0.5, 7.0), 1)})])
    if standbys:
        out.append(lambda: [Injection("bmc-phantom", rng.choice(standbys))])
        out.append(lambda: [Injection("boot-fail", rng.choice(standbys))])
        out.append(lambda: [Injection("bmc-slow", rng.choice(standbys), {"delay_s": round(rng.uniform(3.0, 7.0), 1)})])
    if w.switches.get(pool):
        out.append(lambda: [Injection("switch-hang", rng.choice(w.switches[pool]), {"after": rng.randrange(0, 15)})])
        out.append(lambda: [Injection("switch-reject", rng.choice(w.switches[pool]))])
    out.append(lambda: [Injection("storage-error", "storage")])
    if server in w.redfish and death != "service-fail":
        out.append(lambda: [Injection("storage-step-error", server)])
    if victim in w.dag:
        out.append(lambda: [Injection("dag-copy-failed", victim)])
    out.append(lambda: [Injection("controller-kill", "controller", {"delay_s": round(rng.uniform(0.0, 6.0), 1)})])
    out.append(lambda: [Injection("controller-pause", "controller", {"seconds": round(rng.uniform(1.0, 4.0), 1)})])
    out.append(lambda: [Injection("scn-loss", "all", {"percent": rng.choice((1, 2, 3, 4, 5))})])
    return out


def _noise(rng: random.Random, w: World) -> list[Callable[[], list[Injection]]]:
    """Faults that must not fail anybody over on their own."""
    servers = sorted({s for m in w.members.values() for s in m})
    assigned = sorted(s for s in w.assignment.values() if s)
    spare = sorted(set(servers) - set(assigned))
    out: list[Callable[[], list[Injection]]] = [
        lambda: [Injection("trap-storm", rng.choice(["all", *sorted({x for v in w.switches.values() for x in v})]),
                           {"rate": rng.choice((50, 100, 200))})],
        lambda: [Injection("scn-loss", "all", {"percent": rng.choice((1, 2, 3, 4, 5))})],
        lambda: [Injection("controller-pause", "controller", {"seconds": round(rng.uniform(1.0, 4.0), 1)})],
        lambda: [Injection("controller-kill", "controller", {"delay_s": round(rng.uniform(0.0, 3.0), 1)})],
    ]
    if assigned:
        out.append(lambda: [Injection("scn-partition", rng.choice(assigned))])
        out.append(lambda: [Injection("bmc-down", rng.choice(assigned))])
        out.append(lambda: [Injection("bmc-auth", rng.choice(assigned))])
        out.append(lambda: [Injection("bmc-alert", rng.choice(assigned))])
        out.append(lambda: [Injection("scn-flap", rng.choice(assigned), {"period_s": round(rng.uniform(1.0, 4.0), 1)})])
        # Hardware that starts failing, and changes made behind the controller's back (drift).
        out.append(lambda: [Injection("event-log", rng.choice(assigned))])
        out.append(lambda: [Injection("link-flap", rng.choice(assigned))])
        out.append(lambda: [Injection("vlan-change", f"{rng.choice(assigned)}:{rng.choice((1, 2, 3, 4))}")])
        redfish = [s for s in assigned if s in w.redfish]
        if redfish:
            out.append(lambda: [Injection("health-degrade", rng.choice(redfish))])
    if w.assignment:
        out.append(lambda: [Injection("acl-add", rng.choice(sorted(p for p, s in w.assignment.items() if s)))])
    out.append(lambda: [Injection("hw-mismatch", rng.choice(servers))])
    if spare:
        out.append(lambda: [Injection("bmc-lies", rng.choice(spare))])
        out.append(lambda: [Injection("bmc-phantom", rng.choice(spare))])
    if w.dag:
        out.append(lambda: [Injection("dag-copy-failed", rng.choice(sorted(w.dag)))])
    return out


def plan_round(rng: random.Random, w: World) -> Plan:
    """Three rounds in four kill one body of a random pool (with up to two complications); the
    fourth is noise only. A pool with no persona running is never chosen for a death."""
    pools = sorted(p for p in w.members if w.running(p))
    if pools and rng.random() < 0.75:
        pool = rng.choice(pools)
        victim, server = rng.choice(w.running(pool))
        death = rng.choice(DEATHS)
        inj: list[Injection] = []
        if death == "scn-partition+bmc-down":
            inj += [Injection("scn-partition", server), Injection("bmc-down", server)]
        else:
            inj.append(Injection(death, server))
        extra = _complications(rng, w, pool, victim, server, death)
        kinds = {i.kind for i in inj}
        for make in rng.sample(extra, k=min(len(extra), rng.choice((0, 1, 1, 2)))):
            more = [i for i in make() if i.kind not in kinds]
            kinds |= {i.kind for i in more}
            inj += more
        return Plan(tuple(inj), victim, f"{death} kills {victim}'s body {server}")
    noise = _noise(rng, w)
    inj = []
    for make in rng.sample(noise, k=min(len(noise), rng.choice((1, 2)))):
        inj += [i for i in make() if i.kind not in {x.kind for x in inj}]
    # Two faults on one body can make a death on their own (a partition and a silent BMC: presumed
    # dead), which is fine: the invariants hold whatever the controller decides.
    return Plan(tuple(inj), None, "noise: no body is killed")


def parse_plan(text: str) -> Plan:
    """A plan as ``Plan.text`` wrote it ("kind target k=v; kind target (why)"): a round replayed
    with exactly the faults of a reported violation. Kinds and options are checked by the lab."""
    body = re.sub(r"\s*\([^()]*\)\s*$", "", text.strip())
    out = []
    for part in filter(None, (x.strip() for x in body.split(";"))):
        words = part.split()
        if len(words) < 2:
            raise ValueError(f"want KIND TARGET [OPTION=VALUE...], got {part!r}")
        params: dict[str, float] = {}
        for w in words[2:]:
            key, eq, value = w.partition("=")
            if not eq:
                raise ValueError(f"want OPTION=VALUE, got {w!r} in {part!r}")
            try:
                params[key] = float(value)
            except ValueError:
                raise ValueError(f"{key}: want a number, got {value!r}") from None
        out.append(Injection(words[0], words[1], params))
    if not out:
        raise ValueError("an empty plan")
    return Plan(tuple(out), None, "replayed")


# ---------------------------------------------------------------------------- the operator

# Only the body's own proofs (its power-off, its ports) can be stood in for by an operator's word; a
# storage fence that was not proven is retried once the storage answers.
_NOT_CONFIRMED = re.compile(r"fence of (?P<server>[A-Za-z0-9_.-]+) not confirmed: power-off not read back")


@dataclass(frozen=True)
class Exit:
    action: str  # approve, retry, mark-fenced, abandon
    server: str | None = None  # mark-fenced: the body the operator declares out
    pull_plug: bool = False  # mark-fenced: the operator first cuts the body's power at the PDU
    note: str = ""


def operator_exit(op: Waiting, tries: int, bodies: Mapping[str, Body], max_tries: int = 3) -> Exit:
    """What an operator does for an operation that waits, once the faults are cleared: approve what
    waits for approval; for a fence that could not be confirmed, go to the rack, cut the body's power
    if it still has some, and record it as out; otherwise retry (for a persona stopped by the
    escalation limit, that is the operator's decision that the bodies, not the persona, are at
    fault); and after ``max_tries`` answers that did not end it, abandon it (the persona stays where
    it is, watched again)."""
    if op.state == "waiting-approval":
        return Exit("approve", note="approved by the soak's operator")
    if tries >= max_tries:
        return Exit("abandon", note=f"abandoned after {tries} tries")
    m = _NOT_CONFIRMED.search(op.reason)
    if m:
        server = m.group("server")
        body = bodies.get(server)
        return Exit("mark-fenced", server, pull_plug=body is None or body.power,
                    note=f"{server} seen out at the rack" + (" after cutting its power" if body is None or body.power
                                                             else ""))
    return Exit("retry", note="faults cleared")


# ---------------------------------------------------------------------------- maintenance


@dataclass(frozen=True)
class Heal:
    action: str  # power-off, clear, failback
    target: str


def heal_plan(w: World, bodies: Mapping[str, Body], waiting: Sequence[Waiting], rng: random.Random,
              failback_share: float = 0.5) -> list[Heal]:
    """Between incidents: every quarantined body is powered off, repaired and cleared; a standby
    left powered (a failed boot, a crashed OS) is switched off; a persona away from home goes back
    when its home is free (always when its pool has no standby left, else half the time). Nothing
    is touched that an operation still holds."""
    held = {op.persona for op in waiting}
    busy = {s for p, s in w.assignment.items() if s and p in held}
    out: list[Heal] = []
    assigned = {s for s in w.assignment.values() if s}
    for s in sorted(w.quarantined):
        if s in busy:
            continue
        if bodies.get(s, Body(False)).power:
            out.append(Heal("power-off", s))
        out.append(Heal("clear", s))
    for s, b in sorted(bodies.items()):
        if b.power and s not in assigned and s not in w.quarantined:
            out.append(Heal("power-off", s))
    for persona, server in sorted(w.assignment.items()):
        home = w.home.get(persona)
        if persona in held or not server or server == home or home is None or home in assigned:
            continue
        pool = w.pool_of[persona]
        no_spare = not [s for s in w.standbys(pool) if s != home]
        if no_spare or rng.random() < failback_share:
            out.append(Heal("failback", persona))
    return out


# ---------------------------------------------------------------------------- rest and invariants


@dataclass(frozen=True)
class Seen:
    """One look at the whole world after a round."""

    assignment: Mapping[str, str | None]
    heartbeat_age: Mapping[str, float | None]  # persona -> s since its last heartbeat (controller)
    bodies: Mapping[str, Body]
    waiting: Sequence[Waiting]
    leases: Mapping[str, tuple[str, float]]  # lease name -> (holder, seconds left)
    double_access: int = 0
    evidence: Sequence[Any] = ()
    leaked: Sequence[str] = ()  # processes that outlived what started them
    observer_blind_s: float = 0.0  # the longest the access observer went without a good sample


MAX_HEARTBEAT_AGE_S = 2.5  # five lab heartbeat intervals


def settled(s: Seen) -> bool:
    """At rest: nothing runs, and every persona heartbeats from its body or has an operation that waits."""
    if any(op.state == "running" for op in s.waiting):
        return False
    held = {op.persona for op in s.waiting}
    for persona, server in s.assignment.items():
        if persona in held:
            continue
        age = s.heartbeat_age.get(persona)
        if not server or age is None or age > MAX_HEARTBEAT_AGE_S or s.bodies.get(server, Body(False)).booted != persona:
            return False
    return True


@dataclass(frozen=True)
class Violation:
    invariant: str
    evidence: str

    def text(self) -> str:
        return f"{self.invariant}: {self.evidence}"


def check(s: Seen) -> list[Violation]:
    """The soak's invariants, at rest (see the module docstring)."""
    out: list[Violation] = []
    if s.double_access:
        out.append(Violation("double access", f"{s.double_access} samples; first: {list(s.evidence)[:3]}"))
    if s.observer_blind_s > 5.0:
        out.append(Violation("observer blind", f"the access observer had no good sample for {s.observer_blind_s:.1f}s"))
    held: dict[str, Waiting] = {}
    for op in s.waiting:
        held[op.persona] = op
        if op.state == "running":
            out.append(Violation("operation stuck", f"{op.id} ({op.persona}) still running after the round"))
        elif not op.reason.strip():
            out.append(Violation("waiting without a reason", f"{op.id} ({op.persona}) is {op.state} with no reason"))
        lease = s.leases.get(f"persona:{op.persona}")
        if lease is None or lease[0] != op.id or lease[1] <= 0:
            out.append(Violation("operation without a live lease",
                                 f"{op.id} ({op.persona}) is {op.state}; persona lease: {lease}"))
    ops = {op.id for op in s.waiting}
    for name, (holder, _) in sorted(s.leases.items()):
        if holder not in ops:
            out.append(Violation("lease held by no waiting operation", f"{name} held by {holder}"))
    for persona, server in sorted(s.assignment.items()):
        runs_on = sorted(b for b, body in s.bodies.items() if body.booted == persona)
        if persona in held:
            if len(runs_on) > 1:
                out.append(Violation("persona on two bodies", f"{persona} runs on {runs_on} while "
                                                              f"{held[persona].id} waits"))
            continue
        age = s.heartbeat_age.get(persona)
        if runs_on != [server] or age is None or age > MAX_HEARTBEAT_AGE_S:
            out.append(Violation("persona not on exactly one body with a heartbeat",
                                 f"{persona}: controller says {server}, lab runs it on {runs_on or 'nothing'}, "
                                 f"heartbeat age {age}"))
    for p in s.leaked:
        out.append(Violation("leaked process", p))
    return out
