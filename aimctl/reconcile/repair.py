"""The ``repair`` operation: put drifted ports (or a quarantined body) back, journaled and read back.

Runs through the same step runner as a failover (intent before acting, result after, resumable),
on the same drivers and switch batching. Steps:

- ``confirm``: read the drifted ports (and power) now; if they already match, nothing is done;
- ``repair``: apply the intents for the ports that still differ (one session per switch, the driver
  reads them back and restores on mismatch); for a quarantined body that reads On, power off and
  read back; for a running persona's body whose boot config differs, write it (the driver reads
  it back) with the persona's identity and current CHAP secret;
- ``verify``: read once more, apart from the driver's own read-back, and compare;
- ``done``.

Only what the pool's ``drift.repair`` allow-list names is ever repaired; storage ACL and CHAP drift
never is (a second initiator may be an attack).

A repair that cannot finish *fails* (``StepFailed``: terminal, its leases released) rather than
waiting for an operator: the switch driver has already put the ports back as it found them, the
finding stays open and is alerted, and a repair must never keep a persona's lease from a failover.
"""

from __future__ import annotations

from typing import Any

from aimctl.drivers.protocols import PortIntent, PowerState
from aimctl.drivers.switch_os import matches
from aimctl.failover.context import Ctx
from aimctl.failover.fence import power_off
from aimctl.failover.ports import change_ports
from aimctl.failover.planner import port_intents, quarantine_intents
from aimctl.failover.runner import NeedsOperator, Step, StepCall, StepFailed, StepOutcome
from aimctl.failover.steps import boot_identity
from aimctl.journal import Operation
from aimctl.reconcile.verdict import port_text

REPAIR_STEPS = ("confirm", "repair", "verify", "done")


def intents_for(ctx: Ctx, op: Operation) -> dict[str, list[PortIntent]]:
    """The intents of the ports this repair is about, from the definitions as they are now."""
    f = op.facts
    server = str(f["server"])
    every = quarantine_intents(ctx.defs, server) if f.get("mode") == "quarantine" else \
        port_intents(ctx.defs, op.persona, server)
    wanted = {(str(sw), str(p)) for sw, p in f.get("ports", [])}
    out: dict[str, list[PortIntent]] = {}
    for sw, intents in every.items():
        for i in intents:
            if (sw, i.port) in wanted:
                out.setdefault(sw, []).append(i)
    return out


def _differing(ctx: Ctx, per: dict[str, list[PortIntent]]) -> tuple[dict[str, list[PortIntent]], dict[str, str]]:
    wrong: dict[str, list[PortIntent]] = {}
    seen: dict[str, str] = {}
    for sw, intents in sorted(per.items()):
        states = {s.port: s for s in ctx.switches.read(sw, [i.port for i in intents])}
        for i in intents:
            st = states[i.port]
            seen[f"{sw} {i.port}"] = port_text(st.mode, st.vlans)
            if not matches(i, st):
                wrong.setdefault(sw, []).append(i)
    return wrong, seen


def _boot_differs(ctx: Ctx, op: Operation) -> bool:
    if not op.facts.get("boot") or not op.persona:
        return False
    want, got = boot_identity(ctx, op.persona), ctx.drivers.bootcfg(str(op.facts["server"])).read()
    fields = ("initiator", "target", "lun", "portal_host", "portal_port", "chap_user")
    return got is None or any(getattr(got, f) != getattr(want, f) for f in fields)


def _needs_power_off(ctx: Ctx, op: Operation) -> bool:
    return op.facts.get("mode") == "quarantine" and bool(op.facts.get("power_off")) and \
        ctx.drivers.power(str(op.facts["server"])).state() == PowerState.ON


def s_confirm(ctx: Ctx, call: StepCall) -> StepOutcome:
    try:
        wrong, seen = _differing(ctx, intents_for(ctx, call.op))
        power = _needs_power_off(ctx, call.op)
        boot = _boot_differs(ctx, call.op)
    except Exception as exc:  # noqa: BLE001 - nothing was changed: a failed repair, not a stuck one
        raise StepFailed(f"could not read back before repairing: {exc}") from None
    if not wrong and not power and not boot:
        return StepOutcome("ok", {"observed": seen, "reason": "already as defined: nothing to repair"},
                           facts={"nothing_to_do": True})
    return StepOutcome("ok", {"observed": seen, "evidence": call.op.facts.get("evidence", "")},
                       facts={"to_fix": [[sw, i.port] for sw, intents in wrong.items() for i in intents],
                              "power_needed": power, "boot_needed": boot})


def s_repair(ctx: Ctx, call: StepCall) -> StepOutcome:
    op = call.op
    if op.facts.get("nothing_to_do"):
        return StepOutcome.skipped("nothing to repair")
    fix = {(str(sw), str(p)) for sw, p in op.facts.get("to_fix", [])}
    per = {sw: [i for i in intents if (sw, i.port) in fix] for sw, intents in intents_for(ctx, op).items()}
    per = {sw: intents for sw, intents in per.items() if intents}
    detail: dict[str, Any] = {}
    try:
        if per:
            detail["ports"] = change_ports(ctx, per, "drift repair")  # all switches or none, read back
        if op.facts.get("power_needed"):
            detail["power"] = power_off(ctx, str(op.facts["server"]))
        if op.facts.get("boot_needed"):
            server = str(op.facts["server"])
            ctx.drivers.bootcfg(server).write(boot_identity(ctx, op.persona))  # reads back, raises on mismatch
            detail["bootcfg"] = f"{server}: {op.persona}'s identity written and read back"
    except NeedsOperator as exc:
        raise StepFailed(f"repair not applied: {exc.reason}") from None
    except Exception as exc:  # noqa: BLE001 - see the module docstring: fail, alert, keep the finding
        raise StepFailed(f"repair not applied: {exc}") from None
    n = sum(len(v) for v in per.values())
    what = [f"{n} port(s) set back" if n else "", "powered off (read back)" if "power" in detail else "",
            "boot config rewritten (read back)" if "bootcfg" in detail else ""]
    detail["sentence"] = f"repaired {op.facts.get('subject')}: " + ", ".join(w for w in what if w)
    return StepOutcome("ok", detail)


def s_verify(ctx: Ctx, call: StepCall) -> StepOutcome:
    op = call.op
    if op.facts.get("nothing_to_do"):
        return StepOutcome.skipped("nothing was repaired")
    try:
        wrong, seen = _differing(ctx, intents_for(ctx, op))
        power, boot = _needs_power_off(ctx, op), _boot_differs(ctx, op)
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(f"could not read back after the repair: {exc}") from None
    if wrong:
        bad = ", ".join(f"{sw} {i.port}" for sw, intents in wrong.items() for i in intents)
        raise StepFailed(f"ports {bad} still differ after the repair (read {seen}); check the switch by hand")
    if power:
        raise StepFailed(f"quarantined body {op.facts['server']} reads On again after the power-off")
    if boot:
        raise StepFailed(f"boot config of {op.facts['server']} still differs after the repair")
    return StepOutcome.ok(observed=seen)


def s_done(ctx: Ctx, call: StepCall) -> StepOutcome:
    f = call.op.facts
    if f.get("nothing_to_do"):
        return StepOutcome.ok(summary=f"{f.get('subject')}: already as defined, nothing repaired")
    return StepOutcome.ok(summary=f"{f.get('subject')} repaired and read back")


def describe_repair(ctx: Ctx, op: Operation) -> dict[str, Any]:
    return {"server": op.facts.get("server"), "ports": op.facts.get("ports", []), "mode": op.facts.get("mode")}


def repair_steps() -> list[Step[Ctx]]:
    fns = {"confirm": s_confirm, "repair": s_repair, "verify": s_verify, "done": s_done}
    return [Step(n, fns[n], describe_repair) for n in REPAIR_STEPS]
