"""The drift verdict: expected vs observed, one finding per difference (pure).

A check whose device did not answer is *unchecked*, never a finding and never "fixed": unknown
is reported as unknown. Each finding says what differs, where, what was expected and what was
read, in words an operator can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aimctl.drivers.protocols import HardwareFacts, IscsiBoot, PortMode, PortState, PowerState, TargetAccess
from aimctl.drivers.switch_os import matches
from aimctl.reconcile.expect import AccessCheck, BootCheck, Expectation, FactsCheck, PortCheck, PowerCheck

# Kinds of finding; a pool's ``drift.repair`` allow-list names the repairable ones.
KINDS = ("ports", "quarantine", "standby-ports", "acl", "chap", "bootcfg", "power", "hardware")
REPAIRABLE = {"ports": "ports", "quarantine": "quarantine", "bootcfg": "bootcfg"}


@dataclass(frozen=True)
class Finding:
    key: str
    kind: str
    persona: str | None
    server: str | None
    device: str
    what: str
    expected: str
    observed: str


@dataclass
class Observed:
    """What one pass read. A missing entry means "not read" (its device is in ``errors``)."""

    ports: dict[tuple[str, str], PortState] = field(default_factory=dict)
    access: dict[tuple[str, str], TargetAccess | None] = field(default_factory=dict)  # None: no such target
    boot: dict[str, IscsiBoot | None] = field(default_factory=dict)
    power: dict[str, PowerState] = field(default_factory=dict)
    facts: dict[str, HardwareFacts] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # device -> why it could not be read


def port_text(mode: PortMode | None, vlans: tuple[int, ...]) -> str:
    if mode is None:
        return "a mode aimctl does not set"
    shown = "all" if len(vlans) > 64 else ",".join(str(v) for v in sorted(vlans)) or "none"
    return f"{mode.value} vlan {shown}"


def _who(c: PortCheck) -> str:
    return f"{c.server} channel {c.channel}" + (f", {c.persona}" if c.persona else "")


def _port(c: PortCheck, st: PortState) -> Finding | None:
    where = f"{c.switch} port {c.port} ({_who(c)})"
    seen = port_text(st.mode, st.vlans)
    if c.role == "standby":
        bad = sorted(set(st.vlans) & set(c.forbidden))
        if not bad:
            return None
        return Finding(c.key, "standby-ports", None, c.server, c.switch,
                       f"{where} is a standby's port but carries network VLAN(s) {','.join(map(str, bad))}",
                       "none of the pool's network VLANs", seen)
    assert c.intent is not None
    if matches(c.intent, st):
        return None
    want = port_text(c.intent.mode, c.intent.vlans)
    kind = "quarantine" if c.role == "quarantine" else "ports"
    what = f"{where} carries {seen}, expected {want}"
    if c.role == "quarantine":
        what = f"{where} of a quarantined body carries {seen}, expected quarantine {want}"
    return Finding(c.key, kind, c.persona, c.server, c.switch, what, want, seen)


def _access(c: AccessCheck, got: TargetAccess | None) -> list[Finding]:
    where = f"target {c.target} on {c.storage} ({c.persona})"
    if got is None:
        return [Finding(c.key, "acl", c.persona, None, c.storage, f"{where} does not exist",
                        f"ACL {c.initiator}", "no such target")]
    out = []
    if list(got.acl) != [c.initiator]:
        extra = [i for i in got.acl if i != c.initiator]
        what = f"{where} lets in {', '.join(extra)} besides {c.initiator}: never repaired automatically, it may be " \
               "an attack" if extra and c.initiator in got.acl else f"{where} ACL is {', '.join(got.acl) or 'empty'}"
        out.append(Finding(c.key, "acl", c.persona, None, c.storage, what, c.initiator, ", ".join(got.acl) or "empty"))
    if list(got.chap_users) != [c.chap_user]:
        out.append(Finding(c.key + ":chap", "chap", c.persona, None, c.storage,
                           f"{where} CHAP accounts are {', '.join(got.chap_users) or 'none'}, expected {c.chap_user} "
                           "only", c.chap_user, ", ".join(got.chap_users) or "none"))
    return out


def _boot_text(b: IscsiBoot | None) -> str:
    if b is None:
        return "no iSCSI boot config"
    return f"{b.initiator} -> {b.target} LUN {b.lun} at {b.portal_host}:{b.portal_port}, CHAP user {b.chap_user or '-'}"


def _boot(c: BootCheck, got: IscsiBoot | None) -> Finding | None:
    if c.persona is None:
        if got is None or got.initiator not in c.forbidden:
            return None
        return Finding(c.key, "bootcfg", None, c.server, c.server,
                       f"standby {c.server}'s firmware holds persona identity {got.initiator}: it could boot that "
                       "persona", "no persona identity", _boot_text(got))
    want = IscsiBoot(c.initiator, c.target, c.lun, c.portal_host, c.portal_port, c.chap_user, "")
    fields = ("initiator", "target", "lun", "portal_host", "portal_port", "chap_user")
    if got is not None and all(getattr(got, f) == getattr(want, f) for f in fields):
        return None
    return Finding(c.key, "bootcfg", c.persona, c.server, c.server,
                   f"{c.server} boot config is {_boot_text(got)}, expected {c.persona}'s", _boot_text(want),
                   _boot_text(got))


def _power(c: PowerCheck, got: PowerState) -> Finding | None:
    if got == PowerState.UNKNOWN or got.value == c.want:
        return None
    kind = "quarantine" if c.why == "quarantined" else "power"
    what = f"{c.server} reads power {got.value} but is {c.why}" + ("" if kind == "power" else "; it must stay off")
    return Finding(c.key, kind, c.persona, c.server, c.server, what, c.want, got.value)


def _facts(c: FactsCheck, got: HardwareFacts) -> Finding | None:
    wrong = []
    if got.model is not None and got.model.strip().lower() != c.model.strip().lower():
        wrong.append(f"model {got.model} (declared {c.model})")
    if got.cores is not None and got.cores != c.cores:
        wrong.append(f"{got.cores} cores (declared {c.cores})")
    if got.memory_gb is not None and got.memory_gb != c.memory_gb:
        wrong.append(f"{got.memory_gb} GB memory (declared {c.memory_gb} GB)")
    if c.macs and got.macs is not None:
        missing = sorted(set(c.macs) - set(got.macs))
        if missing:
            wrong.append(f"no NIC with MAC {', '.join(missing)} (declared)")
    if not wrong:
        return None
    tail = ": not counted as a qualified standby" if c.standby else ""
    declared = f"{c.model}, {c.cores} cores, {c.memory_gb} GB" + (f", MACs {', '.join(c.macs)}" if c.macs else "")
    seen = ", ".join(x for x in (got.model, f"{got.cores} cores" if got.cores is not None else None,
                                 f"{got.memory_gb} GB" if got.memory_gb is not None else None) if x)
    return Finding(c.key, "hardware", None, c.server, c.server,
                   f"{c.server} reports {'; '.join(wrong)}{tail}", declared, seen or "unknown")


def findings(ex: Expectation, ob: Observed) -> tuple[list[Finding], set[str]]:
    """(findings, keys of the checks that were actually read)."""
    out: list[Finding] = []
    checked: set[str] = set()

    def add(f: Finding | None) -> None:
        if f is not None:
            out.append(f)

    for p in ex.ports:
        st = ob.ports.get((p.switch, p.port))
        if st is not None:
            checked.add(p.key)
            add(_port(p, st))
    for a in ex.access:
        if (a.storage, a.target) in ob.access:
            checked.update((a.key, a.key + ":chap"))
            out.extend(_access(a, ob.access[(a.storage, a.target)]))
    for b in ex.boot:
        if b.server in ob.boot:
            checked.add(b.key)
            add(_boot(b, ob.boot[b.server]))
    for w in ex.power:
        if w.server in ob.power and ob.power[w.server] != PowerState.UNKNOWN:
            checked.add(w.key)
            add(_power(w, ob.power[w.server]))
    for f in ex.facts:
        if f.server in ob.facts:
            checked.add(f.key)
            add(_facts(f, ob.facts[f.server]))
    return out, checked


def unqualified(found: list[Finding]) -> Mapping[str, str]:
    """Bodies a finding makes unfit to count as a spare: server -> the finding's sentence."""
    return {f.server: f.what for f in found if f.server and f.kind in ("hardware", "standby-ports", "bootcfg")
            and f.persona is None}
