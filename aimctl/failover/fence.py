"""Fencing and port changes, shared by the fence step and by every retarget (DESIGN.md rule 1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aimctl.drivers.protocols import PortIntent, PowerState
from aimctl.errors import DriverError
from aimctl.failover.context import Ctx, parallel, targets_of
from aimctl.failover.runner import NeedsOperator


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


def apply_switches(ctx: Ctx, per_switch: dict[str, list[PortIntent]]) -> dict[str, Any]:
    """One session per switch, switches in parallel; each driver reads its ports back."""
    def job(sw: str, intents: list[PortIntent]) -> Callable[[], Any]:
        return lambda: ctx.switches.apply(sw, intents)

    res = parallel(ctx, {sw: job(sw, intents) for sw, intents in per_switch.items()})
    bad = {sw: str(r) for sw, r in res.items() if isinstance(r, Exception)}
    if bad:
        raise NeedsOperator("switch: " + "; ".join(f"{sw}: {e}" for sw, e in sorted(bad.items())))
    return {sw: [f"{s.port} {s.mode.value if s.mode else '?'} {','.join(map(str, s.vlans))}" for s in states]
            for sw, states in res.items()}
