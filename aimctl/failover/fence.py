"""The one fence (DESIGN.md rule 1), for every body an operation gives up on.

The fence step uses it for the persona's old body; the heartbeat step uses it, the same way, for a
standby that did not boot the persona in time. What each part observed goes into one pure
function, ``fence_verdict``: the fence is *confirmed* when the storage fence is proven AND either
the power-off was read back, or the body's ports were read back in the quarantine VLAN, or an
operator recorded that the body is out (``aimctl mark-fenced``). Anything less stops the operation
in needs-operator, and nothing further moves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aimctl.drivers.protocols import PowerState
from aimctl.errors import DriverError
from aimctl.failover.context import Ctx, parallel, targets_of
from aimctl.failover.planner import quarantine_intents
from aimctl.failover.ports import change_ports
from aimctl.failover.runner import Aborted, NeedsOperator
from aimctl.journal import Operation


# ---------------------------------------------------------------------------- the verdict (pure)


@dataclass(frozen=True)
class FenceSeen:
    """What each part of one fence observed. Notes say why a part is not proven ("" when it is)."""

    server: str
    storage_proven: bool
    power_read_back: bool
    ports_read_back: bool
    operator_out: str = ""  # who recorded that the body is out, and why ("" when nobody did)
    storage_note: str = ""
    power_note: str = ""
    ports_note: str = ""  # "" when the ports were not tried (e.g. left for the switch step)


@dataclass(frozen=True)
class FenceVerdict:
    confirmed: bool
    reason: str


def fence_verdict(s: FenceSeen) -> FenceVerdict:
    """Confirmed or not, and the one sentence that says why."""
    if not s.storage_proven:
        return FenceVerdict(False, f"fence of {s.server} not confirmed: storage fence not proven "
                                   f"({s.storage_note or 'no reason given'}); nothing moved")
    if s.power_read_back:
        return FenceVerdict(True, f"{s.server} fenced: storage fence proven, power-off read back")
    power = f"power-off not read back ({s.power_note or 'no reason given'})"
    if s.ports_read_back:
        return FenceVerdict(True, f"{s.server} fenced: storage fence proven, ports read back in quarantine; {power}")
    ports = f"ports not quarantined ({s.ports_note or 'not tried'})"
    if s.operator_out:
        return FenceVerdict(True, f"{s.server} fenced: storage fence proven, {s.operator_out} recorded the body "
                                  f"is out; {power}; {ports}")
    return FenceVerdict(False, f"fence of {s.server} not confirmed: {power} and {ports}; nothing moved")


# ---------------------------------------------------------------------------- the parts


def storage_fence(ctx: Ctx, persona: str, key: str) -> dict[str, Any]:
    """Rotate the persona's CHAP secret on every target, kill every session, prove the old secret is refused."""
    spec = ctx.defs.personas[persona].spec
    st = ctx.drivers.storage(spec.storage)
    user = ctx.chap.user(persona)
    old = ctx.chap.current(persona, spec.initial_chap)
    new = ctx.chap.pending(persona, key)
    proven = []
    for t in targets_of(ctx, persona):
        st.set_chap(t, user, new)
        st.kill_sessions(t, ctx.settings.kill_deadline_s)
        left = st.sessions(t)
        if left:
            raise NeedsOperator(f"storage fence: {len(left)} session(s) to {t} will not die")
        if old != new and not st.login_refused(t, spec.initiator, user, old):
            raise NeedsOperator(f"storage fence: {t} still accepts the old CHAP secret")
        proven.append(t)
    ctx.chap.commit(persona, key)
    return {"targets": proven, "chap_user": user, "old_secret_refused": True}


def power_off(ctx: Ctx, server: str) -> dict[str, Any]:
    p = ctx.drivers.power(server)
    p.off(ctx.settings.power_deadline_s)
    if p.state() != PowerState.OFF:
        raise DriverError(server, "power-off not read back")
    return {"power": "off (read back)"}


def operator_out(op: Operation, server: str) -> str:
    """The operator's record that ``server`` is out (``mark-fenced``), as a phrase; "" if none."""
    mark = (op.facts.get("operator_fenced") or {}).get(server)
    if not mark:
        return ""
    note = f" ({mark['note']})" if mark.get("note") else ""
    return f"{mark.get('by', 'an operator')} at {time.strftime('%H:%M:%S', time.gmtime(mark.get('at', 0)))}Z{note}"


def not_dead_after_all(ctx: Ctx, op: Operation, server: str, resumed: bool) -> None:
    """Ask a second source at the moment of acting (before any power-off): a body that turns out to be
    alive is not fenced. On the first try nothing was touched yet, so the operation is aborted and the
    persona stays where it is; on a re-run the fence may already have acted, so an operator decides."""
    why = ctx.alive_evidence(op.persona, server)
    if not why:
        return
    reason = f"not dead after all: {why}"
    if resumed:
        raise NeedsOperator(f"{reason}; the fence may already have acted on {server}: check it, then "
                            f"`aimctl retry {op.id}` or `aimctl abandon {op.id}`")
    raise Aborted(f"{reason}; nothing was touched")


@dataclass(frozen=True)
class Fenced:
    detail: dict[str, Any]
    power_read_back: bool
    ports_quarantined: bool


def fence_body(ctx: Ctx, op: Operation, server: str, *, key: str, quarantine_now: bool,
               check_alive: bool, resumed: bool) -> Fenced:
    """Fence ``server`` for ``op.persona``, or raise NeedsOperator (or Aborted, if it is alive after all).

    ``quarantine_now``: put the body's ports in the quarantine VLAN here whatever the power-off did
    (a failed standby). Otherwise only when the power-off is not read back; when it is, the switch
    step quarantines them in the same session as the standby's ports (a dead active's fence).
    A body an operator marked as out is not powered off or quarantined here (its BMC and ports may
    be gone with it); the switch step still quarantines its ports.
    """
    out = operator_out(op, server)
    if check_alive and not out:
        not_dead_after_all(ctx, op, server, resumed)
    jobs = {"storage": lambda: storage_fence(ctx, op.persona, key)}
    if not out:
        jobs["power"] = lambda: power_off(ctx, server)
    res = parallel(ctx, jobs)
    storage, power = res["storage"], res.get("power")
    power_ok = "power" in res and not isinstance(power, Exception)
    detail: dict[str, Any] = {
        "storage": storage if not isinstance(storage, Exception) else f"not proven: {_text(storage)}",
        "power": power if power_ok else (f"not read back: {_text(power)}" if power is not None else "not tried"),
    }
    if not out:
        try:
            ctx.drivers.bootcfg(server).clear()
            detail["bootcfg"] = f"cleared on {server}"
        except Exception as exc:  # noqa: BLE001 - a dead BMC cannot clear; the CHAP rotation already locks it out
            detail["bootcfg"] = f"not cleared: {_text(exc)}"
    ports_ok, ports_note = False, ""
    if not out and not isinstance(storage, Exception) and (quarantine_now or not power_ok):
        try:
            detail["quarantine"] = change_ports(ctx, quarantine_intents(ctx.defs, server), f"quarantine of {server}")
            ports_ok = True
        except NeedsOperator as exc:
            ports_note = exc.reason
    verdict = fence_verdict(FenceSeen(
        server, storage_proven=not isinstance(storage, Exception), power_read_back=power_ok,
        ports_read_back=ports_ok, operator_out=out,
        storage_note=_text(storage) if isinstance(storage, Exception) else "",
        power_note=_text(power) if isinstance(power, Exception) else ("not tried" if power is None else ""),
        ports_note=ports_note))
    if not verdict.confirmed:
        raise NeedsOperator(verdict.reason)
    detail["verdict"] = verdict.reason
    return Fenced(detail, power_ok, ports_ok)


def _text(exc: object) -> str:
    return exc.reason if isinstance(exc, NeedsOperator) else str(exc)
