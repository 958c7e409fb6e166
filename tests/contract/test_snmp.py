"""The lab's trap sender (pysnmp, SNMPv2c over UDP) against the controller's trap receiver."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from aimctl.detect.detector import DetectorState, decide
from aimctl.detect.heartbeat import HeartbeatReceiver
from aimctl.detect.observe import Observer
from aimctl.detect.traps import TrapReceiver, bmc_identities
from lab.network.traps import TrapSender, send_bmc_alert, send_link_trap

DEADLINE = 3.0  # a trap arrives in ~0.06 s; sending builds an engine first


def wait_for(cond: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.01)


@pytest.fixture
def traps() -> Iterator[TrapReceiver]:
    r = TrapReceiver(
        "127.0.0.1",
        0,
        # Lab switches all send from 127.0.0.1: each has its own community.
        communities={"sw1-secret": "sw1", "sw2-secret": "sw2", "public": None, "bmc-secret": "bmc-r720-1"},
        links={("sw1", 7): ("r720-1", 1), ("sw2", 7): ("r720-1", 2), ("sw3", 3): ("r720-2", 1)},
        bmcs={"bmc-r720-1": "r720-1"},
    ).start()
    yield r
    r.stop()


def test_link_traps_map_to_server_and_channel(traps: TrapReceiver) -> None:
    t0 = time.monotonic()
    send_link_trap("127.0.0.1", traps.port, "sw1-secret", "sw1", 7, up=False)
    wait_for(lambda: traps.link_state("r720-1", 1)[0] == "down")
    assert time.monotonic() - t0 < DEADLINE
    # Same ifIndex on the other switch is another channel: untouched so far.
    assert traps.link_state("r720-1", 2)[0] == "unknown"
    assert traps.links_of("r720-1", (1, 2)) == "unknown"
    send_link_trap("127.0.0.1", traps.port, "sw2-secret", "sw2", 7, up=False)
    wait_for(lambda: traps.links_of("r720-1", (1, 2)) == "down")
    send_link_trap("127.0.0.1", traps.port, "sw1-secret", "sw1", 7, up=True)
    wait_for(lambda: traps.links_of("r720-1", (1, 2)) == "up")
    assert traps.counts["link"] == 3


def test_shared_community_identifies_the_switch_by_sysname(traps: TrapReceiver) -> None:
    send_link_trap("127.0.0.1", traps.port, "public", "sw3", 3, up=False)
    wait_for(lambda: traps.link_state("r720-2", 1)[0] == "down")


def test_per_switch_community_wins_over_a_lying_sysname(traps: TrapReceiver) -> None:
    # sw1's community with sw3's name in sysName: it is sw1's port 3, which is not an SCN port.
    send_link_trap("127.0.0.1", traps.port, "sw1-secret", "sw3", 3, up=False)
    wait_for(lambda: traps.counts["unmapped"] == 1)
    assert traps.link_state("r720-2", 1)[0] == "unknown"


def test_unknown_community_and_unmapped_ports_change_nothing(traps: TrapReceiver) -> None:
    send_link_trap("127.0.0.1", traps.port, "wrong-community", "sw1", 7, up=False)
    send_link_trap("127.0.0.1", traps.port, "sw1-secret", "sw1", 99, up=False)
    wait_for(lambda: traps.counts["unmapped"] == 1)  # sent after the bad one: that one had its chance
    assert traps.link_state("r720-1", 1)[0] == "unknown"
    assert traps.counts["traps"] == 1


def test_bmc_alert_marks_the_server_failed(traps: TrapReceiver) -> None:
    assert traps.bmc_alert("r720-1") is None
    send_bmc_alert("127.0.0.1", traps.port, "bmc-secret", "bmc-r720-1")
    wait_for(lambda: traps.bmc_alert("r720-1") is not None)
    # The same trap from a switch is not a BMC alert.
    send_bmc_alert("127.0.0.1", traps.port, "sw1-secret", "sw1")
    wait_for(lambda: traps.counts["ignored"] == 1)


def test_links_down_is_the_second_source_for_the_detector(traps: TrapReceiver) -> None:
    with HeartbeatReceiver("127.0.0.1", 0, {"exchange1": b"k" * 32}) as beats:
        now = [time.monotonic()]
        observer = Observer(beats, None, traps, clock=lambda: now[0])
        observer.watch("exchange1", "r720-1", (1, 2), interval_s=1.0, grace_s=300)
        now[0] += 3.0  # no heartbeat for three intervals; BMC not polled
        o = observer(now[0])[0]
        assert decide(DetectorState("suspect"), o).state.state == "suspect"
        send_link_trap("127.0.0.1", traps.port, "sw1-secret", "sw1", 7, up=False)
        send_link_trap("127.0.0.1", traps.port, "sw2-secret", "sw2", 7, up=False)
        wait_for(lambda: traps.links_of("r720-1", (1, 2)) == "down")
        o = observer(now[0])[0]
        assert o.links == "down"
        assert decide(DetectorState("suspect"), o).state.state == "dead"


def test_bmc_identities_from_the_inventory() -> None:
    # Production: each BMC its own address; a shared one (a lab: all 127.0.0.1) is never trusted.
    addresses, bmcs = bmc_identities({"r720-1": "10.0.0.11", "r720-2": "10.0.0.12", "r720-3": "10.0.0.2"},
                                     ["10.0.0.2", "10.0.0.3"])
    assert addresses == {"10.0.0.11": "bmc:r720-1", "10.0.0.12": "bmc:r720-2"}
    assert bmcs["bmc:r720-1"] == bmcs["r720-1"] == bmcs["10.0.0.11"] == "r720-1"
    assert "10.0.0.2" not in bmcs  # shared with switch sw1: not a BMC's identity
    lab_addresses, lab_bmcs = bmc_identities({"r720-1": "127.0.0.1", "r720-2": "127.0.0.1"}, ["127.0.0.1"])
    assert lab_addresses == {} and lab_bmcs["r720-2"] == "r720-2"


def test_a_bmc_alert_from_the_lab_sender_is_a_death_signal() -> None:
    """Hole 13: wired as the daemon wires it (community shared, BMCs known by ``bmc_identities``), the
    lab's own sender's alert for r720-1 turns a partition (BMC On) into a death."""
    addresses, bmcs = bmc_identities({"r720-1": "127.0.0.1", "r720-2": "127.0.0.1"}, ["127.0.0.1"])
    traps = TrapReceiver("127.0.0.1", 0, communities={"public": None}, links={}, addresses=addresses,
                         bmcs=bmcs).start()
    sender = TrapSender("127.0.0.1", traps.port, "public")
    try:
        with HeartbeatReceiver("127.0.0.1", 0, {"exchange1": b"k" * 32}) as beats:
            now = [time.monotonic()]

            class BmcOn:
                def answer(self, server: str) -> tuple[str, float]:
                    return "on", now[0]

            observer = Observer(beats, BmcOn(), traps, clock=lambda: now[0])  # type: ignore[arg-type]
            observer.watch("exchange1", "r720-1", (1, 2), interval_s=1.0, grace_s=300)
            now[0] += 5.0
            assert decide(DetectorState("suspect"), observer(now[0])[0]).state.state == "unreachable"
            sender.bmc_alert("r720-1")
            wait_for(lambda: traps.bmc_alert("r720-1") is not None)
            assert traps.bmc_alert("r720-2") is None
            o = observer(max(now[0], time.monotonic()))[0]
            assert o.bmc == "failed"
            d = decide(DetectorState("unreachable"), o)
            assert d.state.state == "dead" and "BMC reports failed" in d.reason
    finally:
        sender.stop()
        traps.stop()
