"""The lab as a whole: built from the definitions, hosts boot what their LUN says, nothing left behind."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aimctl.drivers.protocols import IscsiBoot
from aimctl.drivers.redfish import RedfishPower
from aimctl.drivers.redfish_boot import RedfishBootConfig
from aimctl.secrets import resolve
from lab.fixtures import LabHandle, lab  # noqa: F401
from tests.conftest import REPO

pytestmark = pytest.mark.lab


def _bmc(labh: LabHandle, server: str) -> tuple[str, str, str, str, str]:
    """URL, system id, user, password and the CA file the overlay gives (the lab BMCs speak HTTPS)."""
    b = labh.overlay()["servers"][server]["bmc"]
    assert b["tls"] is True and b["ca_file"]
    return (
        f"https://127.0.0.1:{b['port']}",
        b["system_id"],
        b["credentials"]["username"],
        resolve(b["credentials"]["password"]),
        b["ca_file"],
    )


def _wait(pred, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_homes_run_and_status_reads_everything(lab: LabHandle) -> None:  # noqa: F811
    lab.reset()
    st = lab.status()
    assert {s: v["booted"] for s, v in st["servers"].items() if v["booted"]} == {
        "r720-1": "exchange1",
        "r720-2": "exchange2",
        "r620-1": "web1",
        "r620-2": "web2",
    }
    boot = st["targets"]["iqn.2026-01.lab.storage:exchange1-boot"]
    assert boot["acl"] == ["iqn.1991-05.com.microsoft:exchange1"]
    assert [s["alias"] for s in boot["sessions"]] == ["r720-1"]
    assert st["servers"]["r720-1"]["channels"]["1"] == {
        "switch": "sw1",
        "port": "1/g1",
        "mode": "trunk",
        "vlans": [4004],
    }
    assert st["observer"]["double_access"] == 0 and st["observer"]["samples"] > 0


def _boot_standby(lab: LabHandle, initiator: str, chap_secret: str) -> dict:  # type: ignore[type-arg]
    url, sysid, user, pw, ca = _bmc(lab, "r720-3")
    tgt = lab.overlay()["storage"]["array1"]
    RedfishBootConfig(url, sysid, user, pw, boot_nic="NIC.Integrated.1-1", verify_tls=ca).write(
        IscsiBoot(
            initiator,
            "iqn.2026-01.lab.storage:exchange2-boot",
            1,
            "127.0.0.1",
            tgt["port"],
            "aimctl-exchange2",
            chap_secret,
        )
    )
    RedfishPower(url, sysid, user, pw, verify_tls=ca).on(10)
    return _wait(
        lambda: (lambda v: v if v["state"] in ("running", "boot-failed") else None)(lab.status()["servers"]["r720-3"]),
        20,
        "r720-3 to boot or fail",
    )


def test_host_refuses_wrong_initiator_and_wrong_secret(lab: LabHandle) -> None:  # noqa: F811
    lab.reset()
    secret = resolve(lab.overlay()["personas"]["exchange2"]["initial_chap"])
    v = _boot_standby(lab, "iqn.2026-01.lab.rogue:intruder", secret)
    assert v["state"] == "boot-failed" and "iSCSI login" in v["detail"], v
    lab.reset()
    v = _boot_standby(lab, "iqn.1991-05.com.microsoft:exchange2", "not-the-secret1")
    assert v["state"] == "boot-failed" and "auth" in v["detail"], v
    lab.reset()


def test_double_login_is_seen_by_the_observer(lab: LabHandle) -> None:  # noqa: F811
    """The right initiator and secret on a second body while the first still runs: the observer must see it."""
    lab.reset()
    secret = resolve(lab.overlay()["personas"]["exchange2"]["initial_chap"])
    v = _boot_standby(lab, "iqn.1991-05.com.microsoft:exchange2", secret)
    assert v["state"] == "running" and v["booted"] == "exchange2"
    verdict = _wait(lambda: (lambda o: o if o["double_access"] else None)(lab.status()["observer"]), 5, "observer")
    assert any({"r720-2", "r720-3"} <= set(e["aliases"]) for e in verdict["evidence"])
    lab.reset()
    assert lab.status()["observer"]["double_access"] == 0


def test_lab_down_leaves_no_process_or_port(tmp_path: Path) -> None:
    state = tmp_path / "lab"
    run = [sys.executable, "-m", "aimctl.cli", "lab"]
    subprocess.run(
        run + ["up", "--state", str(state), "--boot", "0.5", "--power-delay", "0.2"],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    ov = yaml.safe_load((state / "endpoints.yaml").read_text())
    tcp = [v["port"] for v in ov["switches"].values()] + [ov["storage"]["array1"]["port"]]
    pid = int((state / "pid").read_text())
    subprocess.run(run + ["down", "--state", str(state)], check=True, cwd=REPO, capture_output=True)
    assert not state.exists()
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    out = subprocess.run(["pgrep", "-af", str(state)], capture_output=True, text=True).stdout
    assert str(state) not in out
    for port in tcp:
        with socket.socket() as s:
            # SO_REUSEADDR: connections may linger in TIME_WAIT; what must be gone is any listener.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(1)
