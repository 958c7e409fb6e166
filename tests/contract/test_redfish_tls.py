"""Redfish TLS is verified by default: against the lab's HTTPS BMC (a self-signed certificate,
lab/bmc/selfsigned.py) the driver refuses to talk until it is given the CA, or told explicitly, per
BMC, not to check. The inventory's fields reach the driver through the registry; the vendor row is
read from the BMC itself when the inventory names none."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from aimctl.drivers.protocols import IscsiBoot, PowerState
from aimctl.drivers.redfish import RedfishPower
from aimctl.drivers.redfish_boot import RedfishBootConfig
from aimctl.drivers.registry import make_bootcfg, make_power
from aimctl.errors import OperatorError, Unreachable
from aimctl.model import Server
from lab.bmc.redfish import RedfishLab, RedfishSystemSpec

pytestmark = pytest.mark.lab

USER, PASSWORD = "admin", "lab-tls-pass-58c2"
BOOT = IscsiBoot(initiator="iqn.1991-05.com.microsoft:exchange1", target="iqn.2026-01.lab.storage:exchange1-boot",
                 lun=1, portal_host="127.0.0.1", portal_port=3260, chap_user="exchange1", chap_secret="Zq9-chap-77a1")


@pytest.fixture(scope="module")
def bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedfishLab]:
    lab = RedfishLab([RedfishSystemSpec("s1", power_on=True)], tmp_path_factory.mktemp("tls-bmc"),
                     {USER: PASSWORD}, power_delay_s=0.1, tls=True)
    lab.start()
    yield lab
    lab.stop()


def ca(lab: RedfishLab) -> str:
    return str(lab.state_dir / "cert.pem")


def test_self_signed_certificate_refused_by_default(bmc: RedfishLab) -> None:
    p = RedfishPower(bmc.base_url, bmc.system_path("s1"), USER, PASSWORD, name="s1")
    with pytest.raises(Unreachable) as exc:
        p.state()
    msg = str(exc.value)
    assert "TLS" in msg and "self-signed certificate" in msg and "bmc.ca_file" in msg
    assert PASSWORD not in msg


def test_verified_against_the_ca_file(bmc: RedfishLab) -> None:
    p = RedfishPower(bmc.base_url, bmc.system_path("s1"), USER, PASSWORD, verify_tls=ca(bmc), name="s1")
    p.off(deadline_s=5)
    assert p.state() is PowerState.OFF and bmc.power("s1") is False
    p.on(deadline_s=5)
    assert bmc.power("s1") is True


def test_wrong_ca_file_is_refused(bmc: RedfishLab, tmp_path: Path) -> None:
    from lab.bmc.selfsigned import make_cert

    other, _ = make_cert(tmp_path / "other")  # a CA, but not the one that signed this BMC
    p = RedfishPower(bmc.base_url, bmc.system_path("s1"), USER, PASSWORD, verify_tls=str(other), name="s1")
    with pytest.raises(Unreachable, match="TLS"):
        p.state()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_explicit_opt_out(bmc: RedfishLab) -> None:
    p = RedfishPower(bmc.base_url, bmc.system_path("s1"), USER, PASSWORD, verify_tls=False, name="s1")
    assert p.state() in (PowerState.ON, PowerState.OFF)


def _server(bmc: RedfishLab, monkeypatch: pytest.MonkeyPatch, **tls: object) -> Server:
    monkeypatch.setenv("AIMCTL_TEST_BMC_PASSWORD", PASSWORD)
    return Server.model_validate({
        "bmc": {"kind": "redfish", "address": "127.0.0.1", "port": bmc.port,
                "system_id": bmc.system_path("s1").rsplit("/", 1)[-1],
                "credentials": {"username": USER, "password": "env:AIMCTL_TEST_BMC_PASSWORD"}, **tls},
        "model": "R720", "cores": 8, "memory_gb": 64, "boot_nic": "NIC.Integrated.1-1", "channels": {}})


def test_inventory_fields_reach_the_driver(bmc: RedfishLab, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Unreachable, match="TLS"):
        make_power("s1", _server(bmc, monkeypatch)).state()
    assert make_power("s1", _server(bmc, monkeypatch, ca_file=ca(bmc))).state() is not PowerState.UNKNOWN
    assert make_power("s1", _server(bmc, monkeypatch, verify_tls=False)).state() is not PowerState.UNKNOWN
    with pytest.raises(OperatorError, match="bmc.ca_file /nonexistent/ca.pem: cannot read"):
        make_power("s1", _server(bmc, monkeypatch, ca_file="/nonexistent/ca.pem"))


def test_vendor_row_from_the_bmc(bmc: RedfishLab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No vendor in the inventory: the row follows the BMC's Manufacturer ("Sushy Emulator": generic),
    and a round trip over verified TLS works with it; a named row is used as named."""
    cfg = make_bootcfg("s1", _server(bmc, monkeypatch, ca_file=ca(bmc)), tmp_path)
    assert isinstance(cfg, RedfishBootConfig)
    assert cfg.vendor_name == "generic"
    cfg.write(BOOT)
    assert cfg.read() == dataclasses.replace(BOOT, chap_secret="")
    cfg.clear()
    named = make_bootcfg("s1", _server(bmc, monkeypatch, ca_file=ca(bmc), vendor="dell_idrac"), tmp_path)
    assert isinstance(named, RedfishBootConfig) and named.vendor_name == "dell_idrac"


def test_a_stalled_client_does_not_block_the_lab_bmc(bmc: RedfishLab) -> None:
    """A client that connects and never speaks TLS (or gives up half-way through a handshake, as a
    client refusing the certificate does) holds its own connection thread, not the BMC."""
    import socket

    idle = socket.create_connection(("127.0.0.1", bmc.port))
    try:
        p = RedfishPower(bmc.base_url, bmc.system_path("s1"), USER, PASSWORD, verify_tls=ca(bmc), timeout_s=3,
                         name="s1")
        assert p.state() in (PowerState.ON, PowerState.OFF)
    finally:
        idle.close()
