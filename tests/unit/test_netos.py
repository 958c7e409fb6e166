"""A switch OS is data: one row of os.yaml and a template folder; no Python names an OS.

Table tests for the ifIndex formulas (parsed, never eval'd) and the rows; then a network OS the
code has never heard of (NX-OS) is added in a temporary template folder, and definitions for it are
validated, rendered, parsed and numbered with no Python change.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from netmiko.ssh_dispatcher import CLASS_MAPPER

from aimctl import netos
from aimctl.drivers.ifindex import ifindex
from aimctl.drivers.netmiko_quirks import QUIRK_CLASSES
from aimctl.drivers.protocols import PortIntent, PortMode, PortState
from aimctl.drivers.switch_os import load_profile, render_lines
from aimctl.errors import DefinitionError, OperatorError
from aimctl.loader import load
from aimctl.model import definition_schema
from tests.conftest import DEFINITIONS

TEMPLATES = Path(__file__).resolve().parents[2] / "switch_templates"

# (formula, groups, expected value)
FORMULAS = [
    ("port", {"port": 7}, 7),
    ("(unit-1)*64 + port", {"unit": 2, "port": 3}, 67),
    ("(unit-1)*64 + 48 + port", {"unit": 1, "port": 4}, 52),
    ("10000 + (module+1)*100 + port", {"module": 0, "port": 5}, 10105),
    ("-port + 10", {"port": 3}, 7),
    ("436207616 + (module-1)*524288 + (port-1)*4096", {"module": 1, "port": 2}, 436211712),
]


@pytest.mark.parametrize("text,groups,value", FORMULAS, ids=[f[0] for f in FORMULAS])
def test_formula(text: str, groups: dict[str, int], value: int) -> None:
    assert netos.parse_formula(text, frozenset(groups))(groups) == value


# Everything eval would run, refused with the reason (the first four are the classic escapes).
REFUSED = [
    ("__import__('os').system('id')", "only integers"),
    ("().__class__.__bases__", "only integers"),
    ("[x for x in ()]", "only integers"),
    ("lambda: 1", "only integers"),
    ("port ** 2", "only integers"),
    ("port / 2", "only integers"),
    ("port if port else 1", "only integers"),
    ("1.5 + port", "only integers"),
    ("True + port", "only integers"),
    ("unit + port", "'unit', which is not a group"),
    ("port +", "not arithmetic"),
    ("port; 1", "not arithmetic"),
    ("1" + " + 1" * 100, "longer than"),
]


@pytest.mark.parametrize("text,why", REFUSED, ids=[r[0][:30] for r in REFUSED])
def test_formula_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
        netos.parse_formula(text, frozenset({"port"}))


# The numbering the controller used before it was data (drivers/ifindex.py's eval table).
IFINDEX = [
    ("dell_powerconnect", "1/g1", 1), ("dell_powerconnect", "1/g48", 48), ("dell_powerconnect", "1/xg1", 49),
    ("dell_powerconnect", "2/g3", 67), ("dell_powerconnect", "2/xg4", 116),
    ("dell_os6", "Te1/0/1", 1), ("dell_os6", "Gi2/0/5", 133),
    ("cisco_ios", "GigabitEthernet0/1", 10101), ("cisco_ios", "Gi1/12", 10212), ("cisco_ios", "Fa0/3", 10103),
    ("arista_eos", "Ethernet1", 1), ("arista_eos", "Ethernet48", 48),
]


@pytest.mark.parametrize("os_name,port,value", IFINDEX, ids=[f"{o}:{p}" for o, p, _ in IFINDEX])
def test_ifindex_as_before(os_name: str, port: str, value: int) -> None:
    assert ifindex(os_name, port) == value


def test_ifindex_unknown() -> None:
    with pytest.raises(ValueError, match="no ifIndex rule"):
        ifindex("cisco_ios", "Port-channel1")
    with pytest.raises(ValueError, match="no network OS"):
        ifindex("junos", "ge-0/0/0")


def test_reference_rows_name_their_quirk_classes() -> None:
    for name, row in netos.table().items():
        assert row.quirks in QUIRK_CLASSES, name
        assert load_profile(name).netmiko_class() is QUIRK_CLASSES[row.quirks]


# ---------------------------------------------------------------------------- a new OS, no Python

NXOS_ROW = {
    "ports": "Ethernet[1-9]/[1-9][0-9]?",
    "ifindex": [{"match": r"Ethernet(?P<module>\d+)/(?P<port>\d+)",
                 "index": "436207616 + (module-1)*524288 + (port-1)*4096"}],
    "vlan_reserved": [[3968, 4094]],  # NX-OS keeps these for itself by default
    "config_enter": "configure terminal",
    "config_exit": "exit",
    "native_vlan": True,
    "trunk_unset": "all",
    "port_aliases": [[r"^(?i:ethernet)\s*", "Ethernet"]],
}

NXOS_RUNNING = """!Command: show running-config
version 9.3(8)
interface Ethernet1/1
  description aimctl web1 ch1
  switchport mode trunk
  switchport trunk allowed vlan 300,3005
interface Ethernet1/2
  switchport access vlan 998
  switchport mode access
interface Ethernet1/3
"""


@pytest.fixture
def nxos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of switch_templates/ with an ``cisco_nxos`` row (no quirks class) and its folder."""
    folder = tmp_path / "templates"
    shutil.copytree(TEMPLATES, folder)
    shutil.copytree(folder / "cisco_ios", folder / "cisco_nxos")
    with (folder / "os.yaml").open("a") as fh:
        fh.write(yaml.safe_dump({"cisco_nxos": NXOS_ROW}))
    monkeypatch.setenv(netos.TEMPLATES_ENV, str(folder))
    return folder


def _web_on_nxos(root: Path) -> Path:
    shutil.copytree(DEFINITIONS, root)
    site = root / "inventory" / "web-site.yaml"
    text = site.read_text().replace("sw3: {os: cisco_ios", "sw3: {os: cisco_nxos")
    for n in range(1, 5):
        text = text.replace(f"port: GigabitEthernet0/{n}}}", f"port: Ethernet1/{n}}}")
    site.write_text(text)
    pool = root / "web.yaml"
    pool.write_text(pool.read_text().replace("vlan: 4005,", "vlan: 3005,"))
    return root


def test_a_new_os_is_a_row_and_a_folder(nxos: Path, tmp_path: Path) -> None:
    assert "cisco_nxos" in netos.names()
    # validate: the model takes the new name, the loader its port names and VLAN limit
    defs = load(_web_on_nxos(tmp_path / "defs"))
    assert defs.switches["sw3"].os == "cisco_nxos"
    assert defs.servers["r620-1"].channels[1].port == "Ethernet1/1"
    # render: the folder's templates, the row's checks
    intents = [PortIntent("Ethernet1/1", PortMode.TRUNK, (300, 3005), None, "aimctl web1 ch1"),
               PortIntent("Ethernet1/2", PortMode.ACCESS, (998,), None, "", quarantine=True)]
    lines = render_lines("cisco_nxos", intents)
    assert "interface Ethernet1/1" in lines and "switchport trunk allowed vlan 300,3005" in lines
    assert "switchport access vlan 998" in lines
    # parse: the folder's read-back template
    seen = load_profile("cisco_nxos").parse(NXOS_RUNNING, ["Ethernet1/1", "Ethernet1/2", "Ethernet1/3"])
    assert seen["Ethernet1/1"].state == PortState("Ethernet1/1", PortMode.TRUNK, (300, 3005))
    assert seen["Ethernet1/2"].state == PortState("Ethernet1/2", PortMode.ACCESS, (998,))
    assert seen["Ethernet1/3"].state == PortState("Ethernet1/3", PortMode.ACCESS, (1,))
    # number: the row's ifIndex rule (traps name ports by ifIndex)
    assert ifindex("cisco_nxos", "Ethernet1/2") == 436211712
    # connect: no quirks class named, so netmiko's own class for the device type
    assert load_profile("cisco_nxos").netmiko_class() is CLASS_MAPPER["cisco_nxos"]
    # editors: the exported schema offers it
    switch_os = definition_schema()["$defs"]["Switch"]["properties"]["os"]
    assert "cisco_nxos" in switch_os["enum"]


def test_new_os_limits_apply(nxos: Path, tmp_path: Path) -> None:
    root = _web_on_nxos(tmp_path / "defs")
    (root / "web.yaml").write_text((root / "web.yaml").read_text().replace("vlan: 3005,", "vlan: 4000,"))
    site = root / "inventory" / "web-site.yaml"
    site.write_text(site.read_text().replace("port: Ethernet1/2}", "port: GigabitEthernet0/2}"))
    with pytest.raises(DefinitionError) as exc:
        load(root)
    text = "\n".join(exc.value.problems)
    assert "networks.scn.vlan: VLAN 4000 is reserved on cisco_nxos (3968-4094) (switch sw3 of pool web)" in text
    assert "servers.r620-2.channels.1.port: port 'GigabitEthernet0/2' is not a valid cisco_nxos port name" in text


# (what is wrong with the row, the words the error must carry)
BAD_ROWS = [
    ({"ports": "Ethernet("}, "cisco_nxos.ports: bad pattern"),
    ({"ifindex": [{"match": r"Ethernet(?P<port>\d+)", "index": "__import__('os').getpid()"}]},
     "cisco_nxos.ifindex.0.index: formula"),
    ({"ifindex": [{"match": r"Ethernet(?P<port>\d+)", "formula": "port"}]}, "cisco_nxos.ifindex.0"),
    ({"vlan_max": 5000}, "cisco_nxos.vlan_max"),
    ({"vlan_max": True}, "cisco_nxos.vlan_max"),
    ({"vlan_reserved": [[10, 5]]}, "cisco_nxos.vlan_reserved"),
    ({"trunk_unset": "some"}, "cisco_nxos.trunk_unset"),
    ({"native_vlan": "yes"}, "cisco_nxos.native_vlan"),
    ({"speed": 10}, "cisco_nxos.speed"),
]


@pytest.mark.parametrize("change,words", BAD_ROWS, ids=[w for _, w in BAD_ROWS])
def test_bad_row_is_named(nxos: Path, change: dict[str, object], words: str) -> None:
    table = yaml.safe_load((nxos / "os.yaml").read_text())
    table["cisco_nxos"].update(change)
    (nxos / "os.yaml").write_text(yaml.safe_dump(table))
    with pytest.raises(OperatorError, match=words.replace(".", r"\.")) as exc:
        netos.table()
    assert str(nxos / "os.yaml") in str(exc.value)


def test_unknown_quirks_class_is_named(nxos: Path) -> None:
    table = yaml.safe_load((nxos / "os.yaml").read_text())
    table["cisco_nxos"]["quirks"] = "NxosQuirks"
    (nxos / "os.yaml").write_text(yaml.safe_dump(table))
    with pytest.raises(OperatorError, match="cisco_nxos.quirks: unknown netmiko class 'NxosQuirks'"):
        load_profile("cisco_nxos").netmiko_class()


def test_os_that_netmiko_does_not_know_needs_a_quirks_class(nxos: Path) -> None:
    table = yaml.safe_load((nxos / "os.yaml").read_text())
    table["acme_os"] = NXOS_ROW
    (nxos / "os.yaml").write_text(yaml.safe_dump(table))
    shutil.copytree(nxos / "cisco_nxos", nxos / "acme_os")
    with pytest.raises(OperatorError, match="acme_os: not a netmiko device type"):
        load_profile("acme_os").netmiko_class()
