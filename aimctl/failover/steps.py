"""The failover: idempotent steps through the journal, in DESIGN.md's order.

confirm -> approve -> choose -> fence -> storage -> bootcfg -> switch -> power_on -> heartbeat
-> recovery -> done. Each step reads what earlier steps decided from the operation's facts (the
journal), acts, reads back, and returns what it observed. A step that cannot prove its effect
raises ``NeedsOperator``: the operation stops there and moves nothing further (rule 1).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from aimctl.drivers.protocols import IscsiBoot, PortIntent, PowerState
from aimctl.errors import DriverError, OperatorError
from aimctl.failover.context import Ctx, targets_of
from aimctl.failover.fence import fence_body, not_dead_after_all, operator_out
from aimctl.failover.planner import choice_sentence, choose, merge_intents, port_intents, quarantine_intents
from aimctl.failover.ports import change_ports
from aimctl.failover.describe import View, candidates, view_of
from aimctl.failover.runner import (
    Aborted,
    AwaitingApproval,
    NeedsOperator,
    Retarget,
    Step,
    StepCall,
    StepOutcome,
)
from aimctl.journal import Operation, ServerMark, server_lease
from aimctl.loader import Definitions

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- the steps


def s_confirm(ctx: Ctx, call: StepCall) -> StepOutcome:
    f = call.op.facts
    # The verdict is asked again before anything is touched: a second source may say the body lives.
    alive = ctx.alive_evidence(call.op.persona, call.op.from_server) if call.op.from_server else None
    if alive:
        raise Aborted(f"not dead after all: {alive}; nothing was touched")
    return StepOutcome.ok(evidence=f.get("evidence", "planned by operator"), trigger=f.get("trigger", call.op.kind))


def s_approve(ctx: Ctx, call: StepCall) -> StepOutcome:
    op = call.op
    spec = ctx.defs.personas[op.persona].spec
    if op.kind == "failover" and spec.policy == "automatic":
        return StepOutcome.skipped("automatic policy")
    if op.kind != "failover":
        # A planned operation is an operator's own act; it waits only when gated on a change record.
        change = op.facts.get("change")
        if not change:
            return StepOutcome.skipped(f"planned by {op.facts.get('actor', 'an operator')}")
        if ctx.change_approved(str(change)):
            return StepOutcome.ok(approved_by=f"change {change}")
        raise AwaitingApproval(f"waiting for change {change} to be approved")
    if op.facts.get("approved_by"):
        return StepOutcome.ok(approved_by=op.facts["approved_by"])
    if op.kind == "failover" and time.time() - op.created > spec.confirm_timeout:
        if spec.on_confirm_timeout == "proceed":
            return StepOutcome.ok(approved_by=f"confirm timeout ({int(spec.confirm_timeout)}s): proceed")
        raise Aborted(f"not approved within the confirm timeout ({int(spec.confirm_timeout)}s): aborted")
    raise AwaitingApproval(f"waiting for `aimctl approve {op.id}`")


_choose_lock = threading.Lock()


def s_choose(ctx: Ctx, call: StepCall) -> StepOutcome:
    op = call.op
    # Two failovers in one pool must never pick the same standby: the choice and the server lease
    # that claims it happen under one lock, and servers leased by other operations are skipped.
    with _choose_lock:
        try:
            c = choose(ctx.defs, op.persona, *candidates(ctx, op), to=op.facts.get("requested_to"))
        except OperatorError as exc:  # e.g. the requested standby's BMC stopped answering
            raise NeedsOperator(f"no standby: {exc}") from None
        if c.server is None:
            raise NeedsOperator("no standby: " + "; ".join(c.why + [f"{s}: {r}"
                                                                   for s, r in sorted(c.rejected.items())]))
        if not ctx.journal.acquire_lease(server_lease(c.server), op.id, 3 * 3600.0):
            raise NeedsOperator(f"standby {c.server} was taken by another operation")
    detail = {"to": c.server, "why": c.why, "rejected": c.rejected,
              "sentence": choice_sentence(op.persona, c.server, c.why, c.rejected)}
    return StepOutcome("ok", detail, facts={"to": c.server, "to_server": c.server})


def s_fence(ctx: Ctx, call: StepCall) -> StepOutcome:
    op = call.op
    old = op.from_server
    if not old:
        return StepOutcome.skipped("persona had no server")
    graceful = op.kind in ("move", "failback")
    # An unplanned failover fences a body believed dead: a second source is asked first, before the
    # hooks and again before any power-off. A planned one fences a live body on purpose.
    unplanned = op.kind == "failover"
    if unplanned and not operator_out(op, old):
        not_dead_after_all(ctx, op, old, call.resumed)
    stopped = False
    hooks: list[dict[str, Any]] = []
    if not call.resumed:
        # The operator's hooks see the persona before it is touched (e.g. move DAG actives away first).
        # Their failure is recorded, not obeyed: nothing may stand between a dead body and its fence.
        if op.kind == "failback":
            hooks += ctx.run_hooks(op, "pre-failback")
        if graceful:
            # Planned: the application stops cleanly first; the fence below still proves the body is out.
            stopped = ctx.stop_persona(op.persona, 30.0)
        hooks += ctx.run_hooks(op, "pre-fence")
    f = fence_body(ctx, op, old, key=op.id, quarantine_now=False, check_alive=unplanned, resumed=call.resumed)
    detail: dict[str, Any] = {**f.detail, "graceful": graceful, "agent_stopped": stopped, "hooks": hooks}
    facts: dict[str, Any] = {"power_confirmed": f.power_read_back}
    if f.ports_quarantined:
        facts["quarantined_in_fence"] = True
        facts["ports_quarantined"] = sorted({*op.facts.get("ports_quarantined", []), old})
    return StepOutcome("ok", detail, facts=facts)


def s_storage(ctx: Ctx, call: StepCall) -> StepOutcome:
    op = call.op
    spec = ctx.defs.personas[op.persona].spec
    st = ctx.drivers.storage(spec.storage)
    user = ctx.chap.user(op.persona)
    out = {}
    try:
        for t in targets_of(ctx, op.persona):
            for ini in st.initiators(t):
                if ini != spec.initiator:
                    st.unbind(t, ini)
            if spec.initiator not in st.initiators(t):
                st.bind(t, spec.initiator)
            acl, account = st.initiators(t), st.chap_user(t)
            if acl != [spec.initiator] or account != user:
                raise NeedsOperator(f"storage read-back of {t}: ACL {acl}, CHAP {account}; "
                                    f"wanted {spec.initiator}, {user}")
            out[t] = {"acl": acl, "chap_user": account}
    except DriverError as exc:
        # The old body is fenced (the fence step proved it) and nothing of the persona is on the
        # standby yet: a safe place to wait for the array.
        raise NeedsOperator(f"storage {spec.storage}: {exc}; {op.from_server or 'the old body'} is fenced and "
                            f"nothing is on {op.facts.get('to')} yet: fix the storage, then "
                            f"`aimctl retry {op.id}`") from None
    return StepOutcome.ok(targets=out)


def boot_identity(ctx: Ctx, persona: str) -> IscsiBoot:
    """What a body's firmware needs to boot ``persona`` now (its current CHAP secret included)."""
    spec = ctx.defs.personas[persona].spec
    storage = ctx.defs.storage[spec.storage]
    return IscsiBoot(spec.initiator, spec.boot.target, spec.boot.lun, storage.portal, storage.port,
                     ctx.chap.user(persona), ctx.chap.current(persona, spec.initial_chap))


def s_bootcfg(ctx: Ctx, call: StepCall) -> StepOutcome:
    to = call.op.facts["to"]
    b = boot_identity(ctx, call.op.persona)
    ctx.drivers.bootcfg(to).write(b)
    return StepOutcome.ok(server=to, initiator=b.initiator, target=b.target, lun=b.lun)


def switch_intents(defs: Definitions, persona: str, old: str | None, new: str,
                   facts: Mapping[str, Any]) -> dict[str, list[PortIntent]]:
    """The switch step's port changes: the standby gets the persona's VLANs; every body this
    operation gave up on (the old body, failed standbys) whose ports the fence did not already
    quarantine goes to the quarantine VLAN, in the same sessions."""
    done = set(facts.get("ports_quarantined", []))
    given_up = [s for s in [old, *facts.get("failed_standbys", [])] if s and s != new]
    return merge_intents(port_intents(defs, persona, new),
                         *[quarantine_intents(defs, s) for s in dict.fromkeys(given_up) if s not in done])


def s_switch(ctx: Ctx, call: StepCall) -> StepOutcome:
    op = call.op
    per = switch_intents(ctx.defs, op.persona, op.from_server, op.facts["to"], op.facts)
    return StepOutcome.ok(ports=change_ports(ctx, per, "switch step"))


def s_power_on(ctx: Ctx, call: StepCall) -> StepOutcome:
    to = call.op.facts["to"]
    p = ctx.drivers.power(to)
    if call.resumed and p.state() == PowerState.ON:
        return StepOutcome.ok(server=to, power="on (already)")
    p.on(ctx.settings.power_deadline_s)
    return StepOutcome("ok", {"server": to, "power": "on (read back)"}, facts={"powered_on_at": time.time()})


def s_heartbeat(ctx: Ctx, call: StepCall) -> StepOutcome:
    op = call.op
    to = op.facts["to"]
    spec = ctx.defs.personas[op.persona].spec
    timer = ctx.settings.boot_timer_override_s or spec.boot_timer
    since = float(op.facts.get("powered_on_at", time.time()))
    deadline = since + timer
    while time.time() < deadline:
        if ctx.heartbeat_since(op.persona, since):
            return StepOutcome.ok(server=to, waited_s=round(time.time() - since, 3))
        time.sleep(ctx.settings.heartbeat_poll_s)
    if ctx.heartbeat_since(op.persona, since):  # it came at the last moment: nothing to fence
        return StepOutcome.ok(server=to, waited_s=round(time.time() - since, 3))
    pool = ctx.defs.pools[ctx.defs.personas[op.persona].pool]
    failed_before = list(op.facts.get("failed_standbys", []))
    if to in failed_before:
        # This standby was fenced and given up already; the operation stopped for an operator.
        if int(op.facts.get("retries", 0)) > int(op.facts.get("gave_up_at_retry", -1)):
            # ... who asked to try again: choose afresh (bodies given up stay quarantined until cleared).
            raise Retarget(f"operator retry: choosing a standby for {op.persona} again", "choose",
                           facts={"failed_standbys": [], "given_up_standbys": failed_before})
        raise NeedsOperator(_gave_up(op.persona, failed_before, timer))
    # No heartbeat in time: this standby is fenced exactly like a dead body, marked, and the next tried.
    mark = {to: ServerMark(quarantine=True, failed=True, reason=f"did not boot {op.persona} in {op.id}")}
    try:
        f = fence_body(ctx, op, to, key=f"{op.id}-{to}", quarantine_now=True, check_alive=False,
                       resumed=call.resumed)
    except NeedsOperator as exc:
        raise NeedsOperator(f"{to} did not heartbeat {op.persona} within {int(timer)}s; {exc.reason}",
                            server_marks=mark) from None
    failed = failed_before + [to]
    facts: dict[str, Any] = {"failed_standbys": failed,
                             "fenced_standbys": {**op.facts.get("fenced_standbys", {}), to: f.detail}}
    if f.ports_quarantined:
        facts["ports_quarantined"] = sorted({*op.facts.get("ports_quarantined", []), to})
    if len(failed) > pool.max_retargets:
        facts["gave_up_at_retry"] = int(op.facts.get("retries", 0))
        raise NeedsOperator(_gave_up(op.persona, failed, timer), facts=facts, server_marks=mark)
    raise Retarget(f"no heartbeat from {op.persona} on {to} within {int(timer)}s; {to} fenced; retargeting",
                   "choose", facts=facts, server_marks=mark)


def _gave_up(persona: str, failed: list[str], timer: float) -> str:
    return (f"no heartbeat from {persona} on {', '.join(failed)} within {int(timer)}s each (each fenced and "
            f"quarantined); fix or clear a standby, then retry")


def s_recovery(ctx: Ctx, call: StepCall) -> StepOutcome:
    results = ctx.run_hooks(call.op, "post-boot") + ctx.run_hooks(call.op, "post-recovery")
    ok = all(r.get("ok") for r in results)
    return StepOutcome("ok", {"hooks": results, "recovery": "ok" if ok else "failed"},
                       facts={"recovery_failed": not ok})


def s_done(ctx: Ctx, call: StepCall) -> StepOutcome:
    op = call.op
    to = op.facts["to"]
    marks = {}
    if op.from_server and op.kind == "failover":
        marks[op.from_server] = ServerMark(quarantine=True, failed=True, reason=f"failed body, fenced by {op.id}")
    elif op.from_server and op.facts.get("suspect"):
        # A planned move off a failing body: it stays out of the pool until someone repairs it.
        marks[op.from_server] = ServerMark(quarantine=True, failed=True,
                                           reason=f"suspect body, moved off by {op.id}: {op.facts.get('evidence', '')}")
    summary = f"{op.persona} on {to}" + (", recovery failed" if op.facts.get("recovery_failed") else "")
    return StepOutcome("ok", {"summary": summary}, assignment={op.persona: to}, server_marks=marks)


# ---------------------------------------------------------------------------- what each step is about to do
# One function per step, from a View of the operation: the journal's intent records and `aimctl plan`
# are both made of these lines. A step with nothing to do for this operation says nothing ([]).


def d_confirm(v: View) -> list[str]:
    if v.kind != "failover":
        return [f"{v.kind} of {v.persona} from {v.old or 'no server'}: planned by an operator"]
    bmc = v.defs.servers[v.old].bmc.kind if v.old else "?"
    return [f"{v.persona} on {v.old}: missing heartbeats confirmed by a second source "
            f"(BMC {bmc} reports off/failed, or SNMP linkDown on SCN channels)"]


def d_approve(v: View) -> list[str]:
    if v.kind != "failover":
        change = v.facts.get("change")
        return [f"wait for change {change} to be approved (`aimctl approve {change}`)"] if change else []
    if v.spec.policy != "manual":
        return []
    return [f"wait for `aimctl approve` (confirm timeout {int(v.spec.confirm_timeout)}s, "
            f"then {v.spec.on_confirm_timeout})"]


def d_choose(v: View) -> list[str]:
    if v.new is None:
        return ["no standby: " + "; ".join(v.why), *[f"not {s}: {r}" for s, r in sorted(v.rejected.items())]]
    return [f"{v.new}: " + "; ".join(v.why), *[f"not {s}: {r}" for s, r in sorted(v.rejected.items())]]


def d_fence(v: View) -> list[str]:
    if not v.old:
        return []
    spec, old = v.spec, v.old
    srv = v.defs.servers[old]
    out = [f"rotate CHAP account of {v.persona} on {t} ({spec.storage}); kill every session to it; "
           f"prove a login with the old secret is refused" for t in [spec.boot.target, *(d.target for d in spec.data)]]
    by = (v.facts.get("operator_fenced") or {}).get(old)
    if by:
        out.append(f"{old} recorded as out by {by.get('by', 'an operator')}: no power-off or quarantine here "
                   f"(its ports go to quarantine in the switch step)")
        return out
    if v.kind != "failover":
        out.insert(0, f"ask {v.persona}'s agent to stop it cleanly first")
    else:
        out.insert(0, f"ask a second source whether {old} is alive after all; if so, stop and touch nothing")
    out += [f"power off {old} via {srv.bmc.kind} BMC {srv.bmc.address} (ForceOff) and read back Off",
            f"clear iSCSI boot config of {old} (NIC {srv.boot_nic})",
            f"if the power-off cannot be read back: quarantine {old}'s ports now (VLAN "
            f"{v.defs.pools[v.defs.personas[v.persona].pool].quarantine_vlan}) and read back; else in the switch step",
            "if neither is confirmed: stop in needs-operator, move nothing"]
    return out


def d_storage(v: View) -> list[str]:
    spec = v.spec
    return [f"{t}: ACL bound to {spec.initiator} only; CHAP account aimctl-{v.persona} with the new secret; read back"
            for t in [spec.boot.target, *(d.target for d in spec.data)]]


def d_bootcfg(v: View) -> list[str]:
    if v.new is None:
        return []
    spec, srv = v.spec, v.defs.servers[v.new]
    storage = v.defs.storage[spec.storage]
    how = (f"Redfish iSCSIBoot on {srv.boot_nic}" if srv.bmc.kind == "redfish"
           else f"iPXE sanboot script /boot/{v.new}.ipxe + next boot from network (IPMI)")
    return [f"{v.new}: {how}: initiator {spec.initiator}, target {spec.boot.target} LUN {spec.boot.lun} "
            f"at {storage.portal}:{storage.port}, CHAP aimctl-{v.persona}/<new secret>; read back"]


def _intent_text(i: PortIntent) -> str:
    return f"{i.port}: {i.mode.value} vlan {','.join(str(x) for x in i.vlans)}"


def d_switch(v: View) -> list[str]:
    if v.new is None:
        return []
    out = []
    for sw, intents in sorted(switch_intents(v.defs, v.persona, v.old, v.new, v.facts).items()):
        out.append(f"{sw} ({v.defs.switches[sw].os}, one session): " + "; ".join(_intent_text(i) for i in intents))
        if v.render is not None:
            out.extend(f"  {sw}> {line}" for line in v.render(sw, intents))
        out.append(f"  {sw}: read back touched ports and compare; on mismatch restore and stop")
    out.append(f"all switches or none: every touched port is captured first; a switch that still fails after "
               f"retries within {int(v.switch_deadline_s)}s has every changed port put back as captured "
               f"(read back), and the step stops in needs-operator")
    return out


def d_power_on(v: View) -> list[str]:
    if v.new is None:
        return []
    return [f"power on {v.new} via {v.defs.servers[v.new].bmc.kind} BMC and read back On"]


def d_heartbeat(v: View) -> list[str]:
    if v.new is None:
        return []
    pool = v.defs.pools[v.defs.personas[v.persona].pool]
    return [f"wait up to {int(v.boot_timer_s)}s for {v.persona}'s signed heartbeat from {v.new}; else fence "
            f"{v.new} like a dead body (storage fence, power-off, ports to VLAN {pool.quarantine_vlan}, read back), "
            f"mark it failed and retarget (at most {pool.max_retargets})"]


def d_recovery(v: View) -> list[str]:
    hooks = [f"{h.point}: {h.hook}" + (f" {h.dag} on {h.server}" if h.hook == "exchange-dag" else "")
             for h in v.spec.recovery]
    return hooks or ["no recovery hooks defined"]


def d_done(v: View) -> list[str]:
    if v.new is None:
        return []
    old = f"; {v.old} quarantined until cleared" if v.old and v.kind == "failover" else ""
    return [f"assignment {v.persona} -> {v.new}{old}; change record closed"]


Explain = Callable[[View], list[str]]
StepFn = Callable[[Ctx, StepCall], StepOutcome]

# The failover, in DESIGN.md's order: each step's action and its words.
FAILOVER: tuple[tuple[str, StepFn, Explain], ...] = (
    ("confirm", s_confirm, d_confirm), ("approve", s_approve, d_approve), ("choose", s_choose, d_choose),
    ("fence", s_fence, d_fence), ("storage", s_storage, d_storage), ("bootcfg", s_bootcfg, d_bootcfg),
    ("switch", s_switch, d_switch), ("power_on", s_power_on, d_power_on), ("heartbeat", s_heartbeat, d_heartbeat),
    ("recovery", s_recovery, d_recovery), ("done", s_done, d_done),
)
STEPS = tuple(name for name, _, _ in FAILOVER)


def _describer(name: str, explain: Explain) -> Callable[[Ctx, Operation], Mapping[str, Any]]:
    def describe(ctx: Ctx, op: Operation) -> Mapping[str, Any]:
        return {"actions": explain(view_of(ctx, op, name))}

    return describe


def failover_steps() -> list[Step[Ctx]]:
    return [Step(name, fn, describe=_describer(name, explain)) for name, fn, explain in FAILOVER]
