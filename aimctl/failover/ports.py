"""Switch port changes over several switches, all or nothing per step (DESIGN.md rule 6).

One switch already keeps this promise by itself (``drivers/switch.py``: capture, apply, read back,
restore in one session). A step that touches several switches keeps the same promise over all of
them:

1. capture every touched port on every switch first (one read per switch, in parallel); a switch
   that cannot be read is retried, and if it still cannot be read nothing is changed at all;
2. apply on every switch in parallel; a switch that fails for a reason that may pass (no answer,
   unreachable, read-back mismatch) is retried until the step's deadline, with the reason logged;
3. if a switch still fails, every switch whose ports differ from the capture is put back as
   captured and read back; the operator gets one sentence naming each port's observed state.

Changes go through the ``SwitchBatcher`` so concurrent operations still share one session per
switch; the restore goes to the driver directly (rare, and it must not wait behind a batch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

from aimctl.drivers.protocols import PortIntent, PortMode, PortState
from aimctl.errors import DriverError, StateMismatch, Timeout, Unreachable
from aimctl.failover.context import Ctx, parallel
from aimctl.failover.runner import NeedsOperator

log = logging.getLogger(__name__)
T = TypeVar("T")

# Worth another try within the deadline: the switch may answer again. A refused line or refused
# credentials will be refused again: the operator must fix something first.
TRANSIENT = (Timeout, Unreachable, StateMismatch)


def state_text(s: PortState | None) -> str:
    if s is None:
        return "unknown"
    mode = s.mode.value if s.mode else "unknown mode"
    vlans = "all" if len(s.vlans) > 64 else ",".join(map(str, s.vlans)) or "none"
    return f"{mode} {vlans}" + (f" native {s.native_vlan}" if s.native_vlan else "")


def same(a: PortState, b: PortState) -> bool:
    return a.mode is b.mode and set(a.vlans) == set(b.vlans) and (a.native_vlan or 1) == (b.native_vlan or 1)


def restore_intent(s: PortState) -> PortIntent | None:
    """The intent that puts a port back as captured (None for modes aimctl does not set)."""
    if s.mode is None or not s.vlans or (s.mode is PortMode.ACCESS and len(s.vlans) != 1):
        return None
    return PortIntent(s.port, s.mode, s.vlans, s.native_vlan)


@dataclass(frozen=True)
class PortSeen:
    """One touched port at the end of a failed step: as captured, and as read back now."""

    switch: str
    port: str
    before: PortState
    now: PortState | None  # None: the switch could not be read


def ports_report(seen: Sequence[PortSeen]) -> str:
    """What the operator reads: every touched port and whether it is as it was before the step."""
    parts = []
    for p in seen:
        if p.now is None:
            parts.append(f"{p.switch} {p.port}: unknown (could not be read; was {state_text(p.before)})")
        elif same(p.now, p.before):
            parts.append(f"{p.switch} {p.port}: {state_text(p.now)} (as before)")
        else:
            parts.append(f"{p.switch} {p.port}: {state_text(p.now)} (CHANGED, was {state_text(p.before)})")
    return "; ".join(parts)


def _deadline_stop(deadline: float) -> Callable[[RetryCallState], bool]:
    return lambda rs: time.monotonic() >= deadline


def _retried(what: str, switch: str, deadline: float, call: Callable[[], T]) -> T:
    """``call`` again while it fails for a transient reason and the deadline allows, reason logged."""
    def before_sleep(rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        log.warning("%s on %s failed (try %d): %s; retrying", what, switch, rs.attempt_number, exc)

    for attempt in Retrying(stop=_deadline_stop(deadline), reraise=True, before_sleep=before_sleep,
                            wait=wait_exponential(multiplier=0.2, max=2.0),
                            retry=retry_if_exception(lambda e: isinstance(e, TRANSIENT))):
        with attempt:
            return call()
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


def change_ports(ctx: Ctx, per_switch: Mapping[str, Sequence[PortIntent]], what: str) -> dict[str, Any]:
    """Apply ``per_switch`` on every switch, or on none: raise ``NeedsOperator`` after putting back
    what changed. Returns each switch's ports as read back."""
    per = {sw: list(intents) for sw, intents in per_switch.items() if intents}
    if not per:
        return {}
    deadline = time.monotonic() + ctx.settings.switch_deadline_s
    ports = {sw: [i.port for i in intents] for sw, intents in per.items()}

    def capture(sw: str) -> Callable[[], list[PortState]]:
        return lambda: _retried(f"{what}: capture", sw, deadline, lambda: ctx.switches.read(sw, ports[sw]))

    got = parallel(ctx, {sw: capture(sw) for sw in per})
    unread = {sw: r for sw, r in got.items() if isinstance(r, Exception)}
    if unread:
        raise NeedsOperator(f"{what}: nothing changed: could not read "
                            + "; ".join(f"{sw} ({_why(e)})" for sw, e in sorted(unread.items())))
    before: dict[str, dict[str, PortState]] = {sw: {s.port: s for s in got[sw]} for sw in per}

    def change(sw: str) -> Callable[[], list[PortState]]:
        return lambda: _retried(what, sw, deadline, lambda: ctx.switches.apply(sw, per[sw]))

    res = parallel(ctx, {sw: change(sw) for sw in per})
    failed = {sw: r for sw, r in res.items() if isinstance(r, Exception)}
    if not failed:
        return {sw: [f"{s.port} {state_text(s)}" for s in states] for sw, states in sorted(res.items())}
    restored = parallel(ctx, {sw: _restorer(ctx, sw, before[sw]) for sw in per})
    seen = [PortSeen(sw, p, before[sw][p], restored[sw].get(p) if isinstance(restored[sw], dict) else None)
            for sw in sorted(per) for p in ports[sw] if p in before[sw]]
    all_back = all(s.now is not None and same(s.now, s.before) for s in seen)
    raise NeedsOperator(
        f"{what} not done: " + "; ".join(f"{sw} failed ({_why(e)})" for sw, e in sorted(failed.items()))
        + (". Every touched port is back as captured (read back): " if all_back
           else ". NOT every port could be put back; check them by hand: ")
        + ports_report(seen))


def _why(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, DriverError) and text.startswith(f"{exc.device}: "):
        text = text[len(exc.device) + 2:]
    return text


def _restorer(ctx: Ctx, sw: str, captured: Mapping[str, PortState]) -> Callable[[], dict[str, PortState | None]]:
    """Put ``sw``'s touched ports back as captured (once: the step's deadline is spent), then read
    them; returns each port's state as read back (None where it could not be read)."""

    def run() -> dict[str, PortState | None]:
        driver = ctx.drivers.switch(sw)
        names = list(captured)
        try:
            now = {s.port: s for s in driver.read(names)}
        except DriverError as exc:
            log.error("switch %s: cannot read %s to restore them: %s", sw, ", ".join(names), exc)
            return dict.fromkeys(names)
        back = [restore_intent(captured[p]) for p in names if not same(now[p], captured[p])]
        intents = [i for i in back if i is not None]
        if intents:
            try:
                driver.apply(intents)
                log.warning("switch %s: ports %s put back as captured", sw, ", ".join(i.port for i in intents))
            except DriverError as exc:
                log.error("switch %s: restoring %s failed: %s", sw, ", ".join(i.port for i in intents), exc)
            try:
                now = {s.port: s for s in driver.read(names)}
            except DriverError as exc:
                log.error("switch %s: cannot read %s after restoring: %s", sw, ", ".join(names), exc)
                return dict.fromkeys(names)
        return {p: now.get(p) for p in names}

    return run
