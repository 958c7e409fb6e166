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
from collections.abc import Callable
from typing import Any

from aimctl.drivers.protocols import IscsiBoot, PortIntent, PowerState
from aimctl.failover.context import Ctx, parallel, targets_of
from aimctl.failover.fence import apply_switches, power_off, storage_fence
from aimctl.failover.planner import choose, port_intents, quarantine_intents
from aimctl.failover.runner import (
    AwaitingApproval,
    NeedsOperator,
    Retarget,
    Step,
    StepCall,
    StepFailed,
    StepOutcome,
)
from aimctl.journal import ServerMark, server_lease
from aimctl.records.sentences import choice_sentence

log = logging.getLogger(__name__)

STEPS = ("confirm", "approve", "choose", "fence", "storage", "bootcfg", "switch", "power_on", "heartbeat",
         "recovery", "done")


# ---------------------------------------------------------------------------- the steps


def s_confirm(ctx: Ctx, call: StepCall) -> StepOutcome:
    f = call.op.facts
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
        raise StepFailed(f"not approved within the confirm timeout ({int(spec.confirm_timeout)}s): aborted")
    raise AwaitingApproval(f"waiting for `aimctl approve {op.id}`")


_choose_lock = threading.Lock()


def s_choose(ctx: Ctx, call: StepCall) -> StepOutcome:
    op = call.op
    # Two failovers in one pool must never pick the same standby: the choice and the server lease
    # that claims it happen under one lock, and servers leased by other operations are skipped.
    with _choose_lock:
        assignment = {p: s for p, s in ctx.journal.assignment().items() if s}
        assignment[op.persona] = op.from_server or assignment.get(op.persona, "")
        quarantined = set(ctx.journal.quarantined())
        unavailable = dict(ctx.bmc_unhealthy())
        for lease in ctx.journal.leases():
            if lease.name.startswith("server:") and lease.holder != op.id:
                unavailable[lease.name[7:]] = f"in use by {lease.holder}"
        for s in op.facts.get("failed_standbys", []):
            unavailable[s] = "failed to boot this persona in this operation"
        wanted = op.facts.get("requested_to")
        c = choose(ctx.defs, op.persona, assignment, quarantined, unavailable, to=wanted)
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
    jobs: dict[str, Callable[[], Any]] = {
        "storage": lambda: storage_fence(ctx, op.persona, op.id),
        "power": lambda: power_off(ctx, old),
    }
    res = parallel(ctx, jobs)
    if isinstance(res["storage"], Exception):
        raise NeedsOperator(f"storage fence not proven: {res['storage']}")
    detail: dict[str, Any] = {"storage": res["storage"], "graceful": graceful, "agent_stopped": stopped,
                              "hooks": hooks}
    power_ok = not isinstance(res["power"], Exception)
    detail["power"] = res["power"] if power_ok else f"not confirmed: {res['power']}"
    try:
        ctx.drivers.bootcfg(old).clear()
        detail["bootcfg"] = f"cleared on {old}"
    except Exception as exc:  # noqa: BLE001 - a dead BMC cannot clear; the CHAP rotation already locks it out
        detail["bootcfg"] = f"not cleared: {exc}"
    facts: dict[str, Any] = {"power_confirmed": power_ok}
    if not power_ok:
        try:
            detail["quarantine"] = apply_switches(ctx, quarantine_intents(ctx.defs, old))
            facts["quarantined_in_fence"] = True
        except NeedsOperator as exc:
            raise NeedsOperator(f"fence not confirmed: power-off not read back ({res['power']}) and "
                                f"quarantine failed ({exc.reason}); nothing moved") from None
    return StepOutcome("ok", detail, facts=facts)


def s_storage(ctx: Ctx, call: StepCall) -> StepOutcome:
    op = call.op
    spec = ctx.defs.personas[op.persona].spec
    st = ctx.drivers.storage(spec.storage)
    user = ctx.chap.user(op.persona)
    out = {}
    for t in targets_of(ctx, op.persona):
        for ini in st.initiators(t):
            if ini != spec.initiator:
                st.unbind(t, ini)
        if spec.initiator not in st.initiators(t):
            st.bind(t, spec.initiator)
        acl, account = st.initiators(t), st.chap_user(t)
        if acl != [spec.initiator] or account != user:
            raise NeedsOperator(f"storage read-back of {t}: ACL {acl}, CHAP {account}; wanted {spec.initiator}, {user}")
        out[t] = {"acl": acl, "chap_user": account}
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


def s_switch(ctx: Ctx, call: StepCall) -> StepOutcome:
    op = call.op
    to = op.facts["to"]
    per: dict[str, list[PortIntent]] = {}
    parts = [port_intents(ctx.defs, op.persona, to)]
    if op.from_server and not op.facts.get("quarantined_in_fence"):
        parts.append(quarantine_intents(ctx.defs, op.from_server))
    for part in parts:
        for sw, intents in part.items():
            per.setdefault(sw, []).extend(intents)
    return StepOutcome.ok(ports=apply_switches(ctx, per))


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
    # No heartbeat in time: this standby is fenced like any failed body, marked, and the next tried.
    fenced: dict[str, Any] = {}
    for name, job in (("power", lambda: power_off(ctx, to)),
                      ("storage", lambda: storage_fence(ctx, op.persona, f"{op.id}-{to}")),
                      ("bootcfg", lambda: ctx.drivers.bootcfg(to).clear())):
        try:
            fenced[name] = job()
        except Exception as exc:  # noqa: BLE001
            if name == "storage":
                raise NeedsOperator(f"{to} did not heartbeat and its storage fence failed: {exc}") from None
            fenced[name] = f"failed: {exc}"
    failed = list(op.facts.get("failed_standbys", [])) + [to]
    pool = ctx.defs.pools[ctx.defs.personas[op.persona].pool]
    if len(failed) > pool.max_retargets:
        raise NeedsOperator(f"no heartbeat from {op.persona} on {', '.join(failed)} within {int(timer)}s each")
    raise Retarget(f"no heartbeat from {op.persona} on {to} within {int(timer)}s; retargeting", "choose",
                   facts={"failed_standbys": failed, "fenced_standby": fenced},
                   server_marks={to: ServerMark(quarantine=True, failed=True,
                                                reason=f"did not boot {op.persona} in {op.id}")})


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


def failover_steps() -> list[Step[Ctx]]:
    fns = {"confirm": s_confirm, "approve": s_approve, "choose": s_choose, "fence": s_fence, "storage": s_storage,
           "bootcfg": s_bootcfg, "switch": s_switch, "power_on": s_power_on, "heartbeat": s_heartbeat,
           "recovery": s_recovery, "done": s_done}
    return [Step(n, fns[n]) for n in STEPS]
