"""The lab's BMC emulators themselves: timing, isolation, callbacks, TLS (LAB.md quirks covered)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import sushy

from aimctl.drivers.ipmi import IpmiPower
from aimctl.drivers.protocols import PowerState
from aimctl.drivers.redfish import RedfishPower
from lab.bmc.common import DueTimer
from lab.bmc.ipmi import IpmiLab, IpmiSystemSpec
from lab.bmc.redfish import RedfishLab, RedfishSystemSpec

pytestmark = pytest.mark.lab
USERS = {"admin": "lab-pass-7d41"}


def _wait_for(cond: threading.Condition, pred: Callable[[], bool], timeout: float = 3.0) -> bool:
    with cond:
        return cond.wait_for(pred, timeout=timeout)


def test_redfish_change_lands_on_time_without_anyone_reading(tmp_path: Path) -> None:
    # stock fake driver: 1-11 s at random, and only applied when the system is next read
    lab = RedfishLab([RedfishSystemSpec("s1", power_on=True)], tmp_path, USERS, power_delay_s=0.3)
    lab.start()
    try:
        seen: list[float] = []
        cond = threading.Condition()

        def on_change(name: str, on: bool) -> None:
            with cond:
                seen.append(time.monotonic())
                cond.notify_all()

        lab.subscribe(on_change)
        root = sushy.Sushy(lab.base_url, username="admin", password=USERS["admin"], server_side_retries=1)
        t0 = time.monotonic()
        root.get_system(lab.system_path("s1")).reset_system(sushy.ResetType.FORCE_OFF)
        assert _wait_for(cond, lambda: bool(seen))
        # stock: 1-11 s, and only once someone reads the system
        assert 0.28 <= seen[0] - t0 < 0.9
        assert lab.power("s1") is False
    finally:
        lab.stop()


def test_two_redfish_labs_in_one_process_are_isolated(tmp_path: Path) -> None:
    a = RedfishLab([RedfishSystemSpec("s1", power_on=True)], tmp_path / "a", {"u": "password-a"}, power_delay_s=0.1)
    b = RedfishLab([RedfishSystemSpec("s1", power_on=False)], tmp_path / "b", {"u": "password-b"}, power_delay_s=0.1)
    pa, pb = a.start(), b.start()
    try:
        assert pa != pb
        ra = RedfishPower(a.base_url, a.system_path("s1"), "u", "password-a", name="a")
        rb = RedfishPower(b.base_url, b.system_path("s1"), "u", "password-b", name="b")
        assert (ra.state(), rb.state()) == (PowerState.ON, PowerState.OFF)
        ra.off(deadline_s=3)
        assert (a.power("s1"), b.power("s1")) == (False, False)
        rb.on(deadline_s=3)
        assert (a.power("s1"), b.power("s1")) == (False, True)
    finally:
        a.stop()
        b.stop()


def test_redfish_over_tls(tmp_path: Path) -> None:
    lab = RedfishLab([RedfishSystemSpec("s1", power_on=True)], tmp_path, USERS, power_delay_s=0.1, tls=True)
    lab.start()
    try:
        assert lab.base_url.startswith("https://")
        p = RedfishPower(lab.base_url, lab.system_path("s1"), "admin", USERS["admin"], verify_tls=False, name="s1")
        p.off(deadline_s=3)
        assert lab.power("s1") is False
    finally:
        lab.stop()


def test_redfish_last_power_command_wins(tmp_path: Path) -> None:
    lab = RedfishLab([RedfishSystemSpec("s1", power_on=True)], tmp_path, USERS, power_delay_s=0.3)
    lab.start()
    try:
        root = sushy.Sushy(lab.base_url, username="admin", password=USERS["admin"], server_side_retries=1)
        system = root.get_system(lab.system_path("s1"))
        system.reset_system(sushy.ResetType.FORCE_OFF)
        assert lab.pending("s1") is False
        system.reset_system(sushy.ResetType.ON)  # still on: the pending off is dropped
        assert lab.pending("s1") is None
        assert lab.power("s1") is True
    finally:
        lab.stop()


def test_redfish_session_service(tmp_path: Path) -> None:
    lab = RedfishLab([RedfishSystemSpec("s1", power_on=True)], tmp_path, USERS, power_delay_s=0.1)
    lab.start()
    try:
        root = requests.get(lab.base_url + "/redfish/v1/", timeout=5).json()
        sessions = root["Links"]["Sessions"]["@odata.id"]
        bad = requests.post(lab.base_url + sessions, json={"UserName": "admin", "Password": "nope"}, timeout=5)
        assert bad.status_code == 401 and "X-Auth-Token" not in bad.headers
        ok = requests.post(lab.base_url + sessions, json={"UserName": "admin", "Password": USERS["admin"]}, timeout=5)
        assert ok.status_code == 201
        token, location = ok.headers["X-Auth-Token"], ok.headers["Location"]
        system = lab.base_url + lab.system_path("s1")
        assert requests.get(system, headers={"X-Auth-Token": token}, timeout=5).json()["PowerState"] == "On"
        assert requests.get(system, headers={"X-Auth-Token": "forged"}, timeout=5).status_code == 401
        assert requests.get(system, timeout=5).status_code == 401  # neither token nor Basic
        assert requests.get(system, auth=("admin", USERS["admin"]), timeout=5).status_code == 200  # Basic
        assert requests.delete(lab.base_url + location, headers={"X-Auth-Token": token}, timeout=5).status_code == 204
        assert requests.get(system, headers={"X-Auth-Token": token}, timeout=5).status_code == 401
    finally:
        lab.stop()


def test_ipmi_many_bmcs_each_on_its_own_port() -> None:
    # 5 s, the driver's default: an IPMI session takes several round trips, and this test is about ports,
    # not speed (under the two test workers 2 s was once too short for the fifth BMC).
    lab = IpmiLab([IpmiSystemSpec(f"s{i}", power_on=i % 2 == 0) for i in range(6)], USERS, power_delay_s=0.1)
    ports = lab.start()
    try:
        assert len(set(ports.values())) == 6
        for name, port in ports.items():
            p = IpmiPower("127.0.0.1", port, "admin", USERS["admin"], timeout_s=5, name=name)
            assert p.state() == (PowerState.ON if lab.power(name) else PowerState.OFF)
            p.close()
    finally:
        lab.stop()


def test_ipmi_labs_come_and_go_in_one_process() -> None:
    # closing BMC sockets must not disturb pyghmi's process-wide I/O thread
    for _ in range(5):
        lab = IpmiLab([IpmiSystemSpec("s1", power_on=True)], USERS, power_delay_s=0.05)
        ports = lab.start()
        try:
            p = IpmiPower("127.0.0.1", ports["s1"], "admin", USERS["admin"], timeout_s=5, name="s1")
            p.off(deadline_s=2)
            p.close()
        finally:
            lab.stop()


def test_due_timer_replaces_and_cancels() -> None:
    fired: list[tuple[str, float]] = []
    cond = threading.Condition()

    def fire(key: str) -> None:
        with cond:
            fired.append((key, time.time()))
            cond.notify_all()

    timer = DueTimer("test", fire)
    try:
        now = time.time()
        timer.schedule("a", now + 0.05)
        timer.schedule("a", now + 0.10)  # replaces
        timer.schedule("b", now + 0.02)
        timer.schedule("c", now + 0.03)
        timer.cancel("c")
        assert _wait_for(cond, lambda: len(fired) >= 2)
        assert [k for k, _ in fired] == ["b", "a"]
        assert fired[1][1] >= now + 0.10
    finally:
        timer.close()
