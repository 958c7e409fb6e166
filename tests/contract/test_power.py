"""Contract suite for ``Power``: every implementation, against its real protocol server in the lab.

Redfish: sushy-tools emulator (RedfishLab) + RedfishPower over sushy.
IPMI: pyghmi BMCs (IpmiLab) + IpmiPower over pyghmi.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sushy
from pyghmi.ipmi.command import Command

from aimctl.drivers.ipmi import IpmiPower
from aimctl.drivers.protocols import Power, PowerState
from aimctl.drivers.redfish import RedfishPower
from aimctl.errors import AuthFailed, DriverError, StateMismatch, Timeout, Unreachable
from lab.bmc.ipmi import IpmiLab, IpmiSystemSpec
from lab.bmc.redfish import RedfishLab, RedfishSystemSpec

pytestmark = pytest.mark.lab

USER, PASSWORD = "admin", "lab-pass-7d41"
DELAY = 0.2  # the BMCs' fixed power delay
SLOW = 0.1  # added per request while "slow" is on


@dataclass
class Rig:
    kind: str
    lab: Any
    make: Callable[..., Power]
    events: list[tuple[str, bool]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def record(self, name: str, on: bool) -> None:
        with self.cond:
            self.events.append((name, on))
            self.cond.notify_all()

    def wait_events(self, n: int, timeout: float = 2.0) -> list[tuple[str, bool]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.events) >= n, timeout=timeout)
            return list(self.events)


def _redfish_rig(tmp: Path, request: pytest.FixtureRequest) -> Rig:
    lab = RedfishLab([RedfishSystemSpec("s1", power_on=True)], tmp, {USER: PASSWORD}, power_delay_s=DELAY, slow_s=SLOW)
    port = lab.start()
    request.addfinalizer(lab.stop)

    def make(password: str = PASSWORD, timeout_s: float = 2.0) -> Power:
        return RedfishPower(
            f"http://127.0.0.1:{port}", lab.system_path("s1"), USER, password, timeout_s=timeout_s, name="s1"
        )

    return Rig("redfish", lab, make)


def _ipmi_rig(tmp: Path, request: pytest.FixtureRequest) -> Rig:
    lab = IpmiLab([IpmiSystemSpec("s1", power_on=True)], {USER: PASSWORD}, power_delay_s=DELAY, slow_s=SLOW)
    ports = lab.start()
    request.addfinalizer(lab.stop)

    def make(password: str = PASSWORD, timeout_s: float = 1.0, user: str = USER) -> Power:
        return IpmiPower("127.0.0.1", ports["s1"], user, password, timeout_s=timeout_s, name="s1")

    return Rig("ipmi", lab, make)


@pytest.fixture(params=["redfish", "ipmi"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Rig:
    r = _redfish_rig(tmp_path, request) if request.param == "redfish" else _ipmi_rig(tmp_path, request)
    r.lab.subscribe(r.record)
    return r


def test_implements_the_protocol(rig: Rig) -> None:
    assert isinstance(rig.make(), Power)


def test_state_reads_the_truth(rig: Rig) -> None:
    p = rig.make()
    assert p.state() == PowerState.ON
    rig.lab.set_power("s1", False)
    assert p.state() == PowerState.OFF


def test_off_and_on_are_confirmed_by_read_back(rig: Rig) -> None:
    p = rig.make()
    t0 = time.monotonic()
    p.off(deadline_s=5)
    took = time.monotonic() - t0
    assert rig.lab.power("s1") is False
    # it waited for the change to land (and, with 50 ms polls, not seconds longer)
    assert DELAY * 0.9 <= took < DELAY + 1.0, took
    assert rig.lab.power_commands["s1"] == 1
    assert p.state() == PowerState.OFF
    p.on(deadline_s=5)
    assert rig.lab.power("s1") is True
    assert rig.wait_events(2) == [("s1", False), ("s1", True)]


def test_idempotent_off_sends_nothing(rig: Rig) -> None:
    p = rig.make()
    p.off(deadline_s=5)
    p.off(deadline_s=5)
    p.off(deadline_s=5)
    assert rig.lab.power_commands["s1"] == 1
    assert rig.wait_events(1) == [("s1", False)]
    assert rig.lab.power("s1") is False


def test_wrong_password_is_auth_failed(rig: Rig) -> None:
    p = rig.make(password="not-the-password")
    with pytest.raises(AuthFailed) as exc:
        p.off(deadline_s=2)
    assert exc.value.device == "s1"
    assert "not-the-password" not in str(exc.value) and PASSWORD not in str(exc.value)
    assert rig.lab.power("s1") is True
    assert rig.lab.power_commands["s1"] == 0


def test_bmc_down_is_unreachable_fast(rig: Rig) -> None:
    p = rig.make()
    assert p.state() == PowerState.ON  # an established session must not hide the outage
    rig.lab.set_fault("s1", "down", True)
    for call in (p.state, lambda: p.off(deadline_s=5)):
        t0 = time.monotonic()
        with pytest.raises(Unreachable):
            call()
        assert time.monotonic() - t0 < 3.0  # at most one timeout (IPMI 1 s), never retried to the 5 s deadline
    assert rig.lab.power("s1") is True and rig.lab.power_commands["s1"] == 0
    rig.lab.set_fault("s1", "down", False)
    assert rig.make().state() == PowerState.ON


def test_fresh_driver_to_down_bmc_is_unreachable(rig: Rig) -> None:
    rig.lab.set_fault("s1", "down", True)
    t0 = time.monotonic()
    with pytest.raises(Unreachable):
        rig.make().state()
    assert time.monotonic() - t0 < 3.0  # at most one timeout, no retries


def test_lying_bmc_never_confirms(rig: Rig) -> None:
    rig.lab.set_fault("s1", "lies", True)
    p = rig.make()
    with pytest.raises((StateMismatch, Timeout)) as exc:
        p.off(deadline_s=DELAY + 0.6)
    assert "off" in str(exc.value)
    assert rig.lab.power("s1") is False  # the BMC really cut power; it just reads On


def test_lying_bmc_after_power_button(rig: Rig) -> None:
    rig.lab.press_power_button("s1")
    rig.lab.set_fault("s1", "lies", True)
    with pytest.raises((StateMismatch, Timeout)):
        rig.make().off(deadline_s=DELAY + 0.4)


def test_slow_bmc_still_works_within_deadline(rig: Rig) -> None:
    rig.lab.set_fault("s1", "slow", True)
    p = rig.make()
    p.off(deadline_s=5)
    assert rig.lab.power("s1") is False
    assert p.state() == PowerState.OFF


def test_power_button_behind_the_controllers_back(rig: Rig) -> None:
    p = rig.make()
    rig.lab.press_power_button("s1")
    assert rig.wait_events(1) == [("s1", False)]
    assert p.state() == PowerState.OFF


def test_reset_clears_faults(rig: Rig) -> None:
    rig.lab.set_fault("s1", "down", True)
    rig.lab.reset("s1", power_on=False)
    assert rig.make().state() == PowerState.OFF


def test_errors_are_driver_errors_only(rig: Rig) -> None:
    rig.lab.set_fault("s1", "down", True)
    with pytest.raises(DriverError):
        rig.make(timeout_s=0.5).on(deadline_s=1)


# --- third-party clients against the lab ------------------------------------------------------


@pytest.fixture
def redfish_lab(tmp_path: Path) -> Iterator[RedfishLab]:
    lab = RedfishLab(
        [RedfishSystemSpec("a", power_on=True), RedfishSystemSpec("b")],
        tmp_path,
        {USER: PASSWORD},
        power_delay_s=DELAY,
    )
    lab.start()
    yield lab
    lab.stop()


def test_plain_sushy_client(redfish_lab: RedfishLab) -> None:
    # one try per request: sushy's default (10 tries, 2 s apart) would stall its session logout
    # at garbage collection, after the lab is gone
    root = sushy.Sushy(redfish_lab.base_url, username=USER, password=PASSWORD, server_side_retries=1)
    paths = {m.path for m in root.get_system_collection().get_members()}
    assert paths == {redfish_lab.system_path("a"), redfish_lab.system_path("b")}
    system = root.get_system(redfish_lab.system_path("b"))
    assert system.power_state == sushy.PowerState.OFF
    system.reset_system(sushy.ResetType.ON)
    deadline = time.monotonic() + 3
    while system.power_state != sushy.PowerState.ON and time.monotonic() < deadline:
        time.sleep(0.05)
        system.refresh()
    assert system.power_state == sushy.PowerState.ON
    assert redfish_lab.power("b") is True


def test_unknown_user_is_auth_failed_over_ipmi(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # stock pyghmi BMCs ignore unknown names (the client would time out); the lab answers RAKP2 0x0d
    r = _ipmi_rig(tmp_path, request)
    p = IpmiPower("127.0.0.1", r.lab.port("s1"), "nobody", PASSWORD, timeout_s=2.0, name="s1")
    with pytest.raises(AuthFailed):
        p.state()


def test_ipmi_session_is_renewed_after_idle(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pyghmi's keepalives are off for driver sessions; an idle one is logged out and replaced
    import aimctl.drivers.ipmi as ipmi_driver

    r = _ipmi_rig(tmp_path, request)
    p = r.make()
    assert p.state() == PowerState.ON
    monkeypatch.setattr(ipmi_driver, "IDLE_RELOGIN_S", 0.0)
    p.off(deadline_s=3)
    assert p.state() == PowerState.OFF
    assert r.lab.power("s1") is False


def test_plain_pyghmi_client(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # the client proposes HMAC-SHA256 first; logging in at all proves the SHA-1 refusal works
    r = _ipmi_rig(tmp_path, request)
    c = Command("127.0.0.1", USER, PASSWORD, port=r.lab.port("s1"))
    assert c.get_power() == {"powerstate": "on"}
    c.set_power("off", wait=False)
    deadline = time.monotonic() + 3
    while c.get_power()["powerstate"] != "off" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert r.lab.power("s1") is False
    c.set_bootdev("network")
    assert c.get_bootdev()["bootdev"] == "network"
    assert r.lab.boot_device("s1") == "network"
    c.ipmi_session.logout()  # a session left behind would be kept alive against a stopped BMC
