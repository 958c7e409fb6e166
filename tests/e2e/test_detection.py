"""Lab stories: no live host is fenced (issue 11, holes 11, 12, 13; deliverable 4).

Each story runs a real controller process against the session lab and ends by asking the access
observer: no two bodies ever held one persona's LUNs.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from lab.controller_proc import ControllerProcess
from lab.fixtures import LabHandle
from tests.e2e.stories import overlay_for, wait_op

pytestmark = pytest.mark.lab


def personas(ctrl: ControllerProcess) -> dict[str, Any]:
    return ctrl.api.get("/v1/status")["personas"]  # type: ignore[no-any-return]


def no_operation_while(ctrl: ControllerProcess, cond: Any) -> Any:
    """A predicate for ``ctrl.wait``: fails the story the moment any operation exists."""
    def check() -> Any:
        ops = ctrl.api.get("/v1/failovers")
        assert ops == [], f"an operation was opened: {ops}"
        return cond()
    return check


def hold_without_operation(ctrl: ControllerProcess, seconds: float) -> None:
    """Assert for ``seconds`` that nothing is failed over (the absence of an action has no event to wait for)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert ctrl.api.get("/v1/failovers") == []
        time.sleep(0.2)


def test_slow_bmc_and_partition_at_start_is_never_presumed_dead(lab: LabHandle, tmp_path: Path) -> None:
    """Hole 11a: a controller started while r720-2 is partitioned and its BMC takes 4 s per request
    (~13 s to the first answer, grace 5 s here): unknown is not silent, so exchange2 is found
    unreachable, never presumed dead, and its live body is never powered off."""
    lab.reset()
    lab.fault("scn-partition", "r720-2")
    lab.fault("bmc-slow", "r720-2", delay_s=4.0)
    ctrl = ControllerProcess(lab.definitions, overlay_for(lab, tmp_path), tmp_path / "ctrl").start()
    try:
        seen: set[str] = set()

        def unreachable() -> bool:
            x2 = personas(ctrl)["exchange2"]
            seen.add(x2["detector"])
            return bool(x2["detector"] == "unreachable")

        ctrl.wait(no_operation_while(ctrl, unreachable), 40, "exchange2 unreachable once its BMC answers")
        assert "presumed-dead" not in seen and "dead" not in seen, seen
        ls = lab.status()
        assert ls["servers"]["r720-2"]["power"] == "on" and ls["servers"]["r720-2"]["booted"] == "exchange2"
        # exchange1 was never in doubt.
        assert personas(ctrl)["exchange1"]["detector"] == "alive"
    finally:
        ctrl.stop()
        verdict = lab.status()["observer"]
        assert verdict["double_access"] == 0, verdict["evidence"][:5]


def test_a_death_queued_while_paused_is_dropped_when_the_persona_recovers(
    world: tuple[LabHandle, ControllerProcess],
) -> None:
    """Hole 11b: exchange2 partitioned and exchange1 powered off: both of the pool in trouble, the
    storm brake pauses and queues exchange1's death. exchange1 comes back; the partition heals;
    the pool resumes -- and the stale trigger must not fail the live exchange1 over."""
    lab, ctrl = world
    lab.fault("scn-partition", "r720-2")
    ctrl.wait(lambda: personas(ctrl)["exchange2"]["detector"] == "unreachable", 20, "exchange2 unreachable")
    lab.fault("power-button", "r720-1")

    def queued_while_paused() -> bool:
        st = ctrl.api.get("/v1/status")
        return "exchange" in st["paused_pools"] and "exchange1" in st["queued"] \
            and st["personas"]["exchange1"]["detector"] == "dead"

    ctrl.wait(no_operation_while(ctrl, queued_while_paused), 20, "exchange1's death queued in a paused pool")
    assert "paused" in str(personas(ctrl)["exchange1"]["queued"])
    lab.fault("power-button", "r720-1", clear=True)  # power back: the body boots exchange1 again
    ctrl.wait(no_operation_while(ctrl, lambda: ctrl.api.get("/v1/status")["queued"] == []
                                 and personas(ctrl)["exchange1"]["detector"] == "alive"), 30,
              "exchange1 recovered and its queued death dropped")
    lab.fault("scn-partition", "r720-2", clear=True)
    ctrl.wait(no_operation_while(ctrl, lambda: ctrl.api.get("/v1/status")["paused_pools"] == {}), 20,
              "the storm brake resumes the pool")
    hold_without_operation(ctrl, 3.0)  # six heartbeat intervals after the resume: nothing started
    assert lab.status()["servers"]["r720-1"]["booted"] == "exchange1"
    log = (ctrl.state / "audit.log").read_text()
    assert "queue.drop" in log and "storm.resume" in log


def test_controller_stalls_with_and_without_a_death(world: tuple[LabHandle, ControllerProcess]) -> None:
    """Hole 12: the controller itself stops (SIGSTOP) for five heartbeat intervals. Without a death:
    no failover. With a power button pressed inside the stall: exactly one failover, of the right
    persona, to its end."""
    lab, ctrl = world
    assert ctrl.proc is not None
    pid = ctrl.proc.pid
    judged = lambda: all(v["detector"] == "alive" for v in personas(ctrl).values())  # noqa: E731
    ctrl.wait(judged, 10, "the detector judging every persona alive")
    stalls = ctrl.api.get("/v1/status")["detector_stalls"]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(2.5)  # the stall itself: the controller is stopped, nothing to poll
    finally:
        os.kill(pid, signal.SIGCONT)
    ctrl.wait(lambda: ctrl.api.get("/v1/status")["detector_stalls"] > stalls, 10, "the stall noticed")
    ctrl.wait(judged, 10, "every persona judged alive again")
    hold_without_operation(ctrl, 2.0)

    os.kill(pid, signal.SIGSTOP)
    try:
        lab.fault("power-button", "r720-1")
        time.sleep(2.5)  # the stall, with the death inside it
    finally:
        os.kill(pid, signal.SIGCONT)
    op = wait_op(ctrl, "exchange1", ("done", "failed", "needs-operator", "aborted"))
    assert op["state"] == "done", op
    ops = ctrl.api.get("/v1/failovers")
    assert [(o["persona"], o["state"]) for o in ops] == [("exchange1", "done")]
    assert personas(ctrl)["exchange1"]["server"] == "r720-3"
    assert personas(ctrl)["exchange2"]["detector"] == "alive"


def test_bmc_alert_trap_is_a_death_signal(world: tuple[LabHandle, ControllerProcess]) -> None:
    """Hole 13: the host's OS crashes under a live BMC -- no heartbeats, power reads On (so far a
    partition) -- and the BMC sends its alert trap: that is the second source, and it fails over."""
    lab, ctrl = world
    lab.fault("scn-partition", "r720-1")
    ctrl.wait(lambda: personas(ctrl)["exchange1"]["detector"] == "unreachable", 20, "exchange1 unreachable")
    assert ctrl.api.get("/v1/failovers") == []
    lab.fault("bmc-alert", "r720-1")
    op = wait_op(ctrl, "exchange1", ("done", "failed", "needs-operator", "aborted"))
    assert op["state"] == "done", op
    assert "BMC reports failed" in op["facts"]["evidence"]
    assert lab.status()["servers"]["r720-1"]["power"] == "off"  # fenced: power-off read back
