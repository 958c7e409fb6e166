"""BmcPoller against in-process Power implementations with failure knobs.

(The Redfish and IPMI drivers are checked against the lab's BMC emulators in their own contract
suites; here only the scheduling, translation and backoff are under test.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from aimctl.detect.bmcpoll import BmcPoller
from aimctl.drivers.protocols import PowerState
from aimctl.errors import Unreachable


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)


class FakePower:
    def __init__(self, state: PowerState = PowerState.ON) -> None:
        self.power = state
        self.fail = False
        self.hang = threading.Event()
        self.hanging = False
        self.calls = 0
        self.delay_s = 0.0  # a slow BMC: every request takes this long

    def state(self) -> PowerState:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)  # the BMC's own slowness, not a test waiting for something
        if self.hanging:
            self.hang.wait(10)
        if self.fail:
            raise Unreachable("bmc-x", "connection refused (password hunter2)")
        return self.power

    def off(self, deadline_s: float = 60.0) -> None:
        self.power = PowerState.OFF

    def on(self, deadline_s: float = 60.0) -> None:
        self.power = PowerState.ON


def test_translates_power_states() -> None:
    a, b, c = FakePower(), FakePower(PowerState.OFF), FakePower(PowerState.UNKNOWN)
    with BmcPoller({"a": a, "b": b, "c": c}, interval_s=0.05) as p:
        wait_for(lambda: p.answer("a")[0] == "on" and p.answer("b")[0] == "off" and c.calls > 0)
        assert p.answer("c")[0] == "unknown"  # answered (not silent), but said nothing we can use
        t_before = time.monotonic()
        a.power = PowerState.OFF
        wait_for(lambda: p.answer("a")[0] == "off")
        assert p.answer("a")[1] >= t_before  # "since" is when the answer changed


def test_errors_back_off_and_recover() -> None:
    good, bad = FakePower(), FakePower()
    bad.fail = True
    with BmcPoller({"good": good, "bad": bad}, interval_s=0.02, backoff_max_s=0.5) as p:
        wait_for(lambda: good.calls >= 40)
        answer, since = p.answer("bad")
        assert answer == "no-answer" and since <= time.monotonic()
        # 0.02, 0.04, 0.08, 0.16, 0.32, 0.5 ...: a handful of tries while the good one got 40.
        assert bad.calls <= 10, bad.calls
        bad.fail = False
        wait_for(lambda: p.answer("bad")[0] == "on", timeout=3)


def test_a_hung_poll_counts_as_no_answer() -> None:
    stuck = FakePower()
    with BmcPoller({"stuck": stuck}, interval_s=0.02, stale_after_s=0.2) as p:
        wait_for(lambda: p.answer("stuck")[0] == "on")
        stuck.hanging = True
        wait_for(lambda: p.answer("stuck")[0] == "no-answer")
        stuck.hanging = False
        stuck.hang.set()
        wait_for(lambda: p.answer("stuck")[0] == "on")


def test_never_answered_is_unknown_not_silent_however_slow_the_first_contact() -> None:
    """Issue 11 hole 11a: a BMC taking seconds per request (session setup) was counted silent from
    controller start until its first answer, and a partitioned live host was presumed dead."""
    slow = FakePower()
    slow.delay_s = 0.6
    with BmcPoller({"slow": slow}, interval_s=0.05, stale_after_s=5.0) as p:
        t0 = time.monotonic()
        wait_for(lambda: slow.calls == 1)
        while time.monotonic() - t0 < 0.4:  # inside the first, slow request
            assert p.answer("slow")[0] == "unknown"
            time.sleep(0.02)
        wait_for(lambda: p.answer("slow")[0] == "on")
        assert p.reading("slow")[2] is not None  # when it answered


def test_silence_counts_from_the_unanswered_request_not_from_start() -> None:
    bmc = FakePower()
    with BmcPoller({"bmc": bmc}, interval_s=0.05, backoff_max_s=0.1) as p:
        wait_for(lambda: p.answer("bmc")[0] == "on")
        started = time.monotonic()
        wait_for(lambda: time.monotonic() - started > 0.3 and bmc.calls > 3)
        t_fail = time.monotonic()
        bmc.fail = True
        wait_for(lambda: p.answer("bmc")[0] == "no-answer")
        since = p.answer("bmc")[1]
        # Silent since the failing request was sent (after t_fail minus one poll interval), not since start.
        assert since >= t_fail - 0.1, (since, t_fail)
        wait_for(lambda: bmc.calls > 8)
        assert p.answer("bmc")[1] == since  # later failures do not restart the count
        bmc.fail = False
        wait_for(lambda: p.answer("bmc")[0] == "on")


def test_a_first_contact_that_never_returns_is_silence_after_the_bound() -> None:
    stuck = FakePower()
    stuck.hanging = True
    with BmcPoller({"stuck": stuck}, interval_s=0.02, stale_after_s=0.3) as p:
        t0 = time.monotonic()
        assert p.answer("stuck")[0] == "unknown"
        wait_for(lambda: p.answer("stuck")[0] == "no-answer")
        since = p.answer("stuck")[1]
        # Silence counts from the request, which the poller sent as it started (a moment before t0):
        # "no-answer" only once the bound has passed since then, and "since" is that request, not
        # the moment silence was declared (that would be t0 + 0.3 or later).
        assert time.monotonic() - since >= 0.3
        assert since <= t0 + 0.2
        stuck.hanging = False
        stuck.hang.set()
        wait_for(lambda: p.answer("stuck")[0] == "on")
