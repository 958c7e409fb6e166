"""Contract suite for ``Hardware``: inventory, health and event log, against both lab BMCs.

Redfish: the sushy-tools emulator with the lab's inventory/LogServices routes, read over sushy.
IPMI: pyghmi BMCs answering FRU and SEL storage commands, read over pyghmi.
"""

from __future__ import annotations


import pytest

from aimctl.drivers.ipmi import IpmiPower
from aimctl.drivers.ipmi_hw import IpmiHardware, decode_sel_record
from aimctl.drivers.redfish import RedfishClient
from aimctl.drivers.redfish_hw import RedfishHardware, health_word
from aimctl.errors import AuthFailed
from lab.bmc.hardware import sel_record
from lab.bmc.ipmi import IpmiLab, IpmiSystemSpec
from lab.bmc.redfish import RedfishLab, RedfishSystemSpec

pytestmark = pytest.mark.lab

USER, PASSWORD = "admin", "lab-pass-hw42"


@pytest.fixture(scope="module")
def redfish(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    lab = RedfishLab([RedfishSystemSpec("s1", model="PowerEdge R720", cores=16, memory_gb=192,
                                        macs=["52:54:00:11:22:33", "52:54:00:11:22:34"])],
                     tmp_path_factory.mktemp("redfish"), {USER: PASSWORD}, power_delay_s=0.1)
    port = lab.start()
    yield lab, port
    lab.stop()


@pytest.fixture(scope="module")
def ipmi():  # type: ignore[no-untyped-def]
    lab = IpmiLab([IpmiSystemSpec("s1", model="PowerEdge R620")], {USER: PASSWORD}, power_delay_s=0.1)
    ports = lab.start()
    yield lab, ports["s1"]
    lab.stop()


def rf(lab: RedfishLab, port: int, password: str = PASSWORD) -> RedfishHardware:
    return RedfishHardware(RedfishClient(f"http://127.0.0.1:{port}", lab.system_path("s1"), USER, password,
                                         timeout_s=2.0, name="s1"))


def test_redfish_facts_as_declared_then_a_dimm_drops(redfish) -> None:  # type: ignore[no-untyped-def]
    lab, port = redfish
    lab.reset("s1", power_on=False)
    f = rf(lab, port).facts()
    assert (f.model, f.cores, f.memory_gb) == ("PowerEdge R720", 16, 192)
    assert f.macs == ("52:54:00:11:22:33", "52:54:00:11:22:34")
    lab.hardware.lose_memory("s1", 16)
    assert rf(lab, port).facts().memory_gb == 176


def test_redfish_health_and_log(redfish) -> None:  # type: ignore[no-untyped-def]
    lab, port = redfish
    lab.reset("s1", power_on=False)
    h = rf(lab, port).health()
    assert h.health == "ok" and h.entries == ()
    lab.hardware.set_health("s1", "Critical")
    lab.hardware.log("s1", "psu-redundancy-lost")
    h = rf(lab, port).health()
    assert h.health == "critical"
    assert [(e.sensor, e.message) for e in h.entries] == [("power supply", "Power supply redundancy is lost.")]
    lab.reset("s1", power_on=False)
    assert rf(lab, port).health().entries == ()


def test_redfish_wrong_password_is_auth_failed(redfish) -> None:  # type: ignore[no-untyped-def]
    lab, port = redfish
    with pytest.raises(AuthFailed):
        rf(lab, port, "wrong").facts()


def test_ipmi_fru_model_and_sel(ipmi) -> None:  # type: ignore[no-untyped-def]
    lab, port = ipmi
    lab.reset("s1", power_on=False)
    hw = IpmiHardware(IpmiPower("127.0.0.1", port, USER, PASSWORD, timeout_s=2.0, name="s1"))
    f = hw.facts()
    assert f.model == "PowerEdge R620" and f.cores is None and f.memory_gb is None
    assert hw.health().entries == ()
    lab.hardware.log("s1", "correctable-ecc-limit")
    lab.hardware.log("s1", "fan-failure")
    entries = hw.health().entries
    assert [(e.sensor, e.event_type, e.offset) for e in entries] == [("memory", 0x6F, 5), ("fan", 0x01, 2)]
    assert hw.health().health == "unknown"  # IPMI has no summary health


def test_sel_decoding_table() -> None:
    entry = {"event": "correctable-ecc-limit", "stamp": 1700000000}
    e = decode_sel_record(sel_record(7, entry))
    assert e is not None and (e.id, e.sensor, e.event_type, e.offset) == ("sel/7", "memory", 0x6F, 5)
    deassert = bytearray(sel_record(8, entry))
    deassert[12] |= 0x80
    assert decode_sel_record(bytes(deassert)) is None  # the condition went away
    oem = bytearray(sel_record(9, entry))
    oem[2] = 0xC0
    assert decode_sel_record(bytes(oem)) is None
    assert decode_sel_record(b"short") is None


@pytest.mark.parametrize(("status", "word"), [
    ({"Health": "OK", "HealthRollup": "OK"}, "ok"),
    ({"Health": "OK", "HealthRollup": "Warning"}, "warning"),
    ({"Health": "Critical"}, "critical"),
    ({"State": "Enabled"}, "unknown"),
    (None, "unknown"),
    ({"Health": "Bogus"}, "unknown"),
])
def test_health_words(status: object, word: str) -> None:
    assert health_word(status) == word
