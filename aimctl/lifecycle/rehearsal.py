"""A spare rehearsal: proof, before the night it is needed, that a standby boots the persona.

clone -> bootcfg -> capture -> switch -> power_on -> heartbeat -> checks -> teardown -> verdict.

The persona's latest archive is cloned to a scratch target (``<boot target>-rehearsal``) that only
the rehearsal initiator name (``<initiator>-rehearsal``) may reach, with a CHAP account of its own:
the persona's own LUNs, ACL and secret are never touched, and the running persona never notices.
The standby's ports become access ports of the pool's isolated rehearsal VLAN; it boots; its agent,
told by the boot facts that this is a rehearsal, sends rehearsal heartbeats (never counted as the
persona's) and starts no service; the persona's service checks must then report healthy for
``healthy_beats`` heartbeats in a row.

``teardown`` always runs: power off (read back), boot config cleared, the scratch target deleted
(its sessions killed), the ports put back as they were captured — or, when the power-off cannot be
read back, to quarantine, as the fence does for any body given up on. A step that fails or is
pre-empted (a failover needs the standby) records why in the facts and the steps after it skip
until teardown; ``verdict`` then ends the operation ``failed`` or ``aborted``. A boot that failed
marks the standby (failed, not quarantined: it may still be the one that saves a persona tonight);
a teardown that left something behind quarantines it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aimctl.agent.wire import Health
from aimctl.drivers.protocols import IscsiBoot, PortState
from aimctl.errors import OperatorError, StateMismatch
from aimctl.failover.context import parallel
from aimctl.failover.fence import power_off
from aimctl.failover.planner import quarantine_intents
from aimctl.failover.ports import change_ports
from aimctl.failover.runner import Aborted, NeedsOperator, Step, StepCall, StepFailed, StepOutcome
from aimctl.failover.steps import s_power_on
from aimctl.journal import ServerMark
from aimctl.lifecycle.context import LCtx
from aimctl.lifecycle.policy import captured, put_back, rehearsal_intents

STEPS = ("clone", "bootcfg", "capture", "switch", "power_on", "heartbeat", "checks", "teardown", "verdict")


def chap_key(persona: str) -> str:
    return f"{persona}-rehearsal"


def _over(lc: LCtx, call: StepCall) -> StepOutcome | None:
    """Skip the step when the rehearsal already failed or was pre-empted (teardown still runs)."""
    f = call.op.facts
    if f.get("failed") or f.get("preempted"):
        return StepOutcome.skipped(str(f.get("failed") or f"pre-empted by {f['preempted']}"))
    by = lc.preempted(call.op.id)
    if by:
        return StepOutcome("skipped", {"reason": f"pre-empted by {by}"}, facts={"preempted": by})
    return None


def _failed(reason: str, boot: bool = False, **detail: Any) -> StepOutcome:
    """The rehearsal failed here: said in the timeline, kept in the facts for teardown and verdict."""
    return StepOutcome("ok", {"verdict": "failed", "reason": reason, **detail},
                       facts={"failed": reason, "failed_boot": boot})


def s_clone(lc: LCtx, call: StepCall) -> StepOutcome:
    if (skip := _over(lc, call)) is not None:
        return skip
    op, f = call.op, call.op.facts
    spec = lc.ctx.defs.personas[op.persona].spec
    target, ini, user = str(f["rehearsal_target"]), str(f["rehearsal_initiator"]), str(f["chap_user"])
    st = lc.ctx.drivers.storage(spec.storage)
    try:
        lc.snapshots(op.persona).clone(str(f["boot_snapshot"]), target, spec.boot.lun, scratch=True)
        secret = lc.ctx.chap.pending(chap_key(op.persona), op.id)
        # CHAP before the ACL: there is no moment the clone admits a login without the secret.
        st.set_chap(target, user, secret)
        st.bind(target, ini)
        acl, account = st.initiators(target), st.chap_user(target)
        if acl != [ini] or account != user:
            raise StateMismatch(spec.storage, f"{target} reads ACL {acl} and CHAP {account}; want {ini} and {user}")
    except OperatorError as exc:
        return _failed(f"rehearsal target not made: {exc}")
    return StepOutcome.ok(target=target, snapshot=f["boot_snapshot"], acl=acl, chap_user=account)


def s_bootcfg(lc: LCtx, call: StepCall) -> StepOutcome:
    if (skip := _over(lc, call)) is not None:
        return skip
    op, f = call.op, call.op.facts
    spec = lc.ctx.defs.personas[op.persona].spec
    storage = lc.ctx.defs.storage[spec.storage]
    boot = IscsiBoot(str(f["rehearsal_initiator"]), str(f["rehearsal_target"]), spec.boot.lun, storage.portal,
                     storage.port, str(f["chap_user"]), lc.ctx.chap.pending(chap_key(op.persona), op.id))
    try:
        lc.ctx.drivers.bootcfg(str(f["to"])).write(boot)
    except OperatorError as exc:
        return _failed(f"boot config of {f['to']} not written: {exc}")
    return StepOutcome.ok(server=f["to"], initiator=boot.initiator, target=boot.target, lun=boot.lun)


def s_capture(lc: LCtx, call: StepCall) -> StepOutcome:
    """What the standby's ports carry now, committed before they change (teardown puts it back)."""
    if (skip := _over(lc, call)) is not None:
        return skip
    to = str(call.op.facts["to"])
    defs = lc.ctx.defs
    per: dict[str, list[str]] = {}
    for cable in defs.servers[to].channels.values():
        per.setdefault(cable.switch, []).append(cable.port)
    def read(sw: str, ports: list[str]) -> Callable[[], list[PortState]]:
        return lambda: lc.ctx.drivers.switch(sw).read(sorted(ports))

    got = parallel(lc.ctx, {sw: read(sw, ports) for sw, ports in per.items()})  # one session per switch, at once
    bad = {sw: r for sw, r in got.items() if isinstance(r, Exception)}
    if bad:
        return _failed(f"ports of {to} not read: " + "; ".join(f"{sw}: {e}" for sw, e in sorted(bad.items())))
    states: dict[str, list[PortState]] = dict(sorted(got.items()))
    return StepOutcome("ok", {"ports": captured(states)}, facts={"ports_before": captured(states)})


def s_switch(lc: LCtx, call: StepCall) -> StepOutcome:
    if (skip := _over(lc, call)) is not None:
        return skip
    f = call.op.facts
    try:
        ports = change_ports(lc.ctx, rehearsal_intents(lc.ctx.defs, str(f["to"]), int(f["vlan"])),
                             f"rehearsal VLAN on {f['to']}")
    except NeedsOperator as exc:
        return _failed(f"ports of {f['to']} not moved to the rehearsal VLAN {f['vlan']}: {exc.reason}")
    return StepOutcome.ok(vlan=f["vlan"], ports=ports)


def s_power(lc: LCtx, call: StepCall) -> StepOutcome:
    if (skip := _over(lc, call)) is not None:
        return skip
    try:
        return s_power_on(lc.ctx, call)
    except OperatorError as exc:
        return _failed(f"{call.op.facts['to']} not powered on: {exc}")


def _boot_timer(lc: LCtx, persona: str) -> float:
    return lc.ctx.settings.boot_timer_override_s or lc.ctx.defs.personas[persona].spec.boot_timer


def _since(wall: float) -> float:
    """A wall-clock instant as this process's monotonic clock (the receiver's)."""
    return time.monotonic() - (time.time() - wall)


def s_heartbeat(lc: LCtx, call: StepCall) -> StepOutcome:
    if (skip := _over(lc, call)) is not None:
        return skip
    op, f = call.op, call.op.facts
    powered = float(f.get("powered_on_at", time.time()))
    timer = _boot_timer(lc, op.persona)
    while time.time() < powered + timer:
        by = lc.preempted(op.id)
        if by:
            return StepOutcome("ok", {"verdict": "pre-empted", "reason": f"pre-empted by {by}"}, facts={"preempted": by})
        seen = lc.rehearsal_seen(op.persona)
        if seen is not None and seen[0] >= _since(powered):
            return StepOutcome("ok", {"server": f["to"], "waited_s": round(time.time() - powered, 3)},
                               facts={"rehearsal_boot": seen[1].boot_id})
        time.sleep(lc.ctx.settings.heartbeat_poll_s)
    return _failed(f"no rehearsal heartbeat from {op.persona} on {f['to']} within {timer:g}s", boot=True)


def s_checks(lc: LCtx, call: StepCall) -> StepOutcome:
    """The persona's service checks, as its agent reports them: ``healthy_beats`` healthy in a row."""
    if (skip := _over(lc, call)) is not None:
        return skip
    op, f = call.op, call.op.facts
    want = lc.ctx.defs.pools[lc.ctx.defs.personas[op.persona].pool].rehearsal.healthy_beats
    boot = f.get("rehearsal_boot")
    deadline = time.monotonic() + want * lc.interval_s * 3 + 5.0
    good, last = 0, -1
    while time.monotonic() < deadline:
        by = lc.preempted(op.id)
        if by:
            return StepOutcome("ok", {"verdict": "pre-empted", "reason": f"pre-empted by {by}"}, facts={"preempted": by})
        seen = lc.rehearsal_seen(op.persona)
        if seen is not None and seen[2] != last:
            _, hb, last = seen
            if hb.boot_id != boot:
                return _failed(f"the rehearsal's agent restarted (boot {hb.boot_id:x}): not a stable boot", boot=True)
            if hb.health != Health.OK:
                return _failed(f"checks: {hb.health.word}: {hb.reason or 'no reason given'}", boot=True)
            good += 1
            if good >= want:
                return StepOutcome.ok(healthy_beats=good, health="ok")
        time.sleep(lc.ctx.settings.heartbeat_poll_s)
    return _failed(f"{good} of {want} healthy rehearsal heartbeats before the deadline", boot=True)


def s_teardown(lc: LCtx, call: StepCall) -> StepOutcome:
    op, f = call.op, call.op.facts
    to = str(f["to"])
    ctx = lc.ctx
    detail: dict[str, Any] = {}
    problems: list[str] = []
    power_ok = True
    try:
        detail["power"] = power_off(ctx, to)
    except OperatorError as exc:
        power_ok = False
        problems.append(f"power-off of {to} not read back: {exc}")
    try:
        ctx.drivers.bootcfg(to).clear()
        detail["bootcfg"] = f"cleared on {to}"
    except OperatorError as exc:
        problems.append(f"boot config of {to} not cleared: {exc}")
    try:
        lc.snapshots(op.persona).delete_clone(str(f["rehearsal_target"]))
        detail["target"] = f"{f['rehearsal_target']} deleted"
    except OperatorError as exc:
        problems.append(f"rehearsal target {f['rehearsal_target']} not deleted: {exc}")
    try:
        if not power_ok:
            # A body whose power-off cannot be read back is fenced by its ports, as any body given up on.
            detail["ports"] = change_ports(ctx, quarantine_intents(ctx.defs, to), f"quarantine of {to}")
            detail["ports_to"] = "quarantine"
        elif f.get("ports_before"):
            detail["ports"] = change_ports(ctx, put_back(f["ports_before"]), f"ports of {to} back")
    except NeedsOperator as exc:
        problems.append(f"ports of {to} not put back: {exc.reason}")
    ctx.chap.discard(chap_key(op.persona), op.id)
    marks: dict[str, ServerMark] = {}
    if problems:
        marks[to] = ServerMark(f"rehearsal {op.id} of {op.persona} left it unsure: {problems[0]}", quarantine=True)
    elif f.get("failed_boot"):
        marks[to] = ServerMark(f"did not boot {op.persona} in rehearsal {op.id}: {f['failed']}", quarantine=False,
                               failed=True)
    if problems:
        detail["reason"] = "; ".join(problems)
    return StepOutcome("ok", detail, facts={"teardown_problems": problems}, server_marks=marks or None)


def s_verdict(lc: LCtx, call: StepCall) -> StepOutcome:
    f = call.op.facts
    left = f.get("teardown_problems") or []
    tail = f"; teardown: {'; '.join(left)}" if left else "; torn down"
    if f.get("preempted"):
        raise Aborted(f"pre-empted by {f['preempted']}{tail}")
    if f.get("failed"):
        raise StepFailed(f"{f['failed']}{tail}")
    if left:
        raise StepFailed(f"{call.op.persona} booted on {f['to']} but{tail}")
    return StepOutcome.ok(summary=f"{call.op.persona} booted on {f['to']} from archive {f['archive']}; torn down")


def rehearsal_steps() -> list[Step[LCtx]]:
    fns = {"clone": s_clone, "bootcfg": s_bootcfg, "capture": s_capture, "switch": s_switch, "power_on": s_power,
           "heartbeat": s_heartbeat, "checks": s_checks, "teardown": s_teardown, "verdict": s_verdict}
    return [Step(n, fns[n]) for n in STEPS]
