"""Poll a BMC until the power state it *reads* is the one asked for (fence-agents' act-then-verify).

Shared by the Redfish and IPMI drivers so both judge the same way:

* success only when a read says the goal state;
* polls start every ``poll_s`` (a slow read does not add a sleep on top of itself), so a change
  is seen at most one poll period plus one read after it lands;
* a read that fails mid-wait (a BMC busy with the change may drop one) is retried until the
  deadline; the failure is only reported if no read succeeded at all;
* at the deadline: still reading the *opposite* state after the BMC accepted the command is a
  StateMismatch (it says it did something it did not); anything else (transitional or unknown
  states) is a Timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aimctl.drivers.protocols import PowerState
from aimctl.errors import DriverError, Rejected, StateMismatch, Timeout, Unreachable

log = logging.getLogger(__name__)


def confirm_power(
    device: str,
    want: PowerState,
    read: Callable[[], PowerState],
    *,
    deadline: float,
    started: float,
    poll_s: float,
    command: str,
) -> None:
    """Poll ``read`` until it returns ``want`` or ``deadline`` (time.monotonic) passes."""
    last: PowerState | None = None
    last_err: DriverError | None = None
    while True:
        next_poll = time.monotonic() + poll_s
        try:
            last, last_err = read(), None
        except (Unreachable, Rejected) as exc:
            last_err = exc
        if last == want and last_err is None:
            log.info("%s: power %s confirmed after %.2fs", device, want.value, time.monotonic() - started)
            return
        now = time.monotonic()
        if now >= deadline:
            break
        time.sleep(max(0.0, min(next_poll, deadline) - now))
    took = time.monotonic() - started
    if last is None and last_err is not None:
        raise Unreachable(device, f"power {want.value}: {command} sent, then no answer for {took:.1f}s")
    opposite = PowerState.ON if want == PowerState.OFF else PowerState.OFF
    if last == opposite:
        raise StateMismatch(
            device,
            f"power {want.value}: BMC accepted {command} but still reads {opposite.value} after {took:.1f}s",
        )
    shown = last.value if last is not None else "nothing"
    raise Timeout(device, f"power {want.value}: not confirmed after {took:.1f}s (last read: {shown})")
