"""``aimctl restore PERSONA --at TIME|ID``: the persona's LUNs back to an archive, on the body it runs on.

confirm -> approve -> fence -> restore -> storage -> bootcfg -> switch -> power_on -> heartbeat ->
recovery -> done. The body is fenced like any body given up on (the persona is stopped by its agent
first, as in a planned move), so nothing reads or writes the LUNs while their bytes change; then it
boots the restored image through the failover's own steps. A restore that cannot finish stops in
needs-operator with the persona down: half a restore must never run.
"""

from __future__ import annotations

from collections.abc import Callable

from aimctl.errors import OperatorError
from aimctl.failover.context import Ctx
from aimctl.failover.ports import change_ports
from aimctl.failover.planner import port_intents
from aimctl.failover.runner import NeedsOperator, Retarget, Step, StepCall, StepFailed, StepOutcome
from aimctl.failover.steps import s_approve, s_bootcfg, s_heartbeat, s_power_on, s_recovery, s_storage
from aimctl.failover.steps import s_fence as fence_body
from aimctl.lifecycle.context import LCtx
from aimctl.lifecycle.policy import ArchiveSet, archive_sets, iso

STEPS = ("confirm", "approve", "fence", "restore", "storage", "bootcfg", "switch", "power_on", "heartbeat",
         "recovery", "done")


def the_archive(lc: LCtx, persona: str, set_id: str) -> ArchiveSet:
    sets = archive_sets(lc.snapshots(persona).snapshots(persona), persona, lc.luns(persona))
    got = next((s for s in sets if s.id == set_id and s.complete), None)
    if got is None:
        raise StepFailed(f"archive {set_id} of {persona} is gone or incomplete; nothing was touched")
    return got


def s_confirm(lc: LCtx, call: StepCall) -> StepOutcome:
    arch = the_archive(lc, call.op.persona, str(call.op.facts["archive"]))
    return StepOutcome.ok(archive=arch.id, taken=iso(arch.created), evidence=call.op.facts.get("evidence", ""))


def s_fence(lc: LCtx, call: StepCall) -> StepOutcome:
    """The failover's own fence of the body (storage fence, power-off read back, boot config cleared,
    ports quarantined when the power-off cannot be read back), after the agent stopped the persona."""
    stopped = False if call.resumed else lc.ctx.stop_persona(call.op.persona, 30.0)
    out = fence_body(lc.ctx, call)
    return StepOutcome(out.status, {**out.detail, "graceful": True, "agent_stopped": stopped}, facts=out.facts)


def s_restore(lc: LCtx, call: StepCall) -> StepOutcome:
    op = call.op
    arch = the_archive(lc, op.persona, str(op.facts["archive"]))
    snaps = lc.snapshots(op.persona)
    done = []
    for target, lun in lc.luns(op.persona):
        snap = arch.of(target, lun)
        assert snap is not None  # a complete set has every LUN
        try:
            snaps.restore(snap.id, target, lun)
        except OperatorError as exc:
            raise NeedsOperator(f"{target} LUN {lun} not restored from {arch.id}: {exc}; the persona stays down "
                                f"(its LUNs may be partly restored): retry once the cause is fixed") from None
        done.append(f"{target} LUN {lun}")
    return StepOutcome.ok(archive=arch.id, restored=done)


def s_switch(lc: LCtx, call: StepCall) -> StepOutcome:
    # The persona's VLANs on its body again (a fence without power read-back quarantined them), read back.
    to = str(call.op.facts["to"])
    return StepOutcome.ok(ports=change_ports(lc.ctx, port_intents(lc.ctx.defs, call.op.persona, to),
                                             f"{call.op.persona}'s ports on {to}"))


def s_heartbeat_once(lc: LCtx, call: StepCall) -> StepOutcome:
    try:
        return s_heartbeat(lc.ctx, call)
    except Retarget as r:
        # There is no other body to try: the restored image did not come up where it ran. It is fenced.
        raise NeedsOperator(f"{r.reason.split(';')[0]}: the restored image did not come up; "
                            f"{call.op.facts['to']} is fenced") from None


def s_done(lc: LCtx, call: StepCall) -> StepOutcome:
    op = call.op
    summary = f"{op.persona} on {op.facts['to']} restored to {op.facts['archive']}"
    if op.facts.get("recovery_failed"):
        summary += ", recovery failed"
    return StepOutcome("ok", {"summary": summary}, assignment={op.persona: str(op.facts["to"])})


def _shared(fn: Callable[[Ctx, StepCall], StepOutcome]) -> Callable[[LCtx, StepCall], StepOutcome]:
    return lambda lc, call: fn(lc.ctx, call)


def restore_steps() -> list[Step[LCtx]]:
    fns = {"confirm": s_confirm, "approve": _shared(s_approve), "fence": s_fence, "restore": s_restore,
           "storage": _shared(s_storage), "bootcfg": _shared(s_bootcfg), "switch": s_switch,
           "power_on": _shared(s_power_on), "heartbeat": s_heartbeat_once, "recovery": _shared(s_recovery),
           "done": s_done}
    return [Step(n, fns[n]) for n in STEPS]
