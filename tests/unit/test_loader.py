"""The loader: the reference definitions load; every operator mistake is one clear, positioned line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aimctl.errors import DefinitionError, OperatorError
from aimctl.loader import load
from tests.conftest import DEFINITIONS, REPO

LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<path>[^:]+): (?P<msg>.+)$")


def problems(root: Path) -> list[str]:
    with pytest.raises(DefinitionError) as exc:
        load(root, use_cache=False)
    for p in exc.value.problems:
        assert LINE.match(p), p
    return exc.value.problems


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_reference_definitions_load() -> None:
    d = load(DEFINITIONS, use_cache=False)
    assert set(d.pools) == {"exchange", "web"}
    assert d.homes()["exchange1"] == "r720-1"
    assert d.personas["exchange1"].spec.boot_timer == 1200.0
    assert d.pools["exchange"].networks["scn"].vlan == 4004
    assert d.warnings == []


# (file, old text, new text, expected path, expected message fragment)
CASES = [
    ("exchange.yaml", "vlan: 4004", "vlan: 4095", "networks.scn.vlan", "out of range"),
    ("exchange.yaml", "boot_timer: 20m", "boot_timmer: 20m", "personas.exchange1.boot_timmer", "unknown field"),
    ("exchange.yaml", "boot_timer: 20m", "boot_timer: twenty", "personas.exchange1.boot_timer", "not a duration"),
    ("exchange.yaml", "initiator: iqn.1991-05.com.microsoft:exchange1", "initiator: IQN.exchange1",
     "personas.exchange1.initiator", "RFC 3720"),
    ("exchange.yaml", "initiator: iqn.1991-05.com.microsoft:exchange2", "initiator: iqn.1991-05.com.microsoft:exchange1",
     "personas.exchange2.initiator", "also used by persona exchange1"),
    ("exchange.yaml", "scn: 10.40.4.12", "scn: 10.40.4.11", "personas.exchange2.addresses.scn", "also used"),
    ("exchange.yaml", "heartbeat_key: file:/etc/aimctl/keys/exchange1.key", "heartbeat_key: hunter2secret",
     "personas.exchange1.heartbeat_key", "inline secret"),
    ("exchange.yaml", "mapi: 10.1.0.11", "mapi: 10.1.0.11, storage: 10.9.0.1", "personas.exchange1.addresses.storage",
     "not defined in pool"),
    ("exchange.yaml", "primary: 4, secondary: 3", "primary: 5, secondary: 3", "members.0", "no channel 5"),
    ("exchange.yaml", "min_cores: 12, min_memory_gb: 64}\n    heartbeat_key: file:/etc/aimctl/keys/exchange1.key",
     "min_cores: 64, min_memory_gb: 64}\n    heartbeat_key: file:/etc/aimctl/keys/exchange1.key",
     "personas.exchange1.qualification", "no standby"),
    ("exchange.yaml", "home: r720-2", "home: r720-1", "personas.exchange2.home", "already home"),
    ("exchange.yaml", "policy: automatic", "policy: sometimes", "personas.exchange1.policy", "automatic"),
    ("exchange.yaml", "hook: exchange-dag, point: post-boot, dag: DAG1", "hook: exchange-dag, point: post-boot, dag: \"DAG1'; rm\"",
     "personas.exchange1.recovery.0.dag", "pattern"),
    ("inventory/exchange-site.yaml", "port: 1/g3}", "port: Gi1/0/3}", "servers.r720-2.channels.1.port",
     "not a valid dell_powerconnect port"),
    ("inventory/exchange-site.yaml", "port: 1/g3}", "port: \"1/g3\\nreload\"}", "servers.r720-2.channels.1.port",
     "not a valid"),
    ("inventory/exchange-site.yaml", "password: env:AIMCTL_BMC_PASSWORD}}\n    model: PowerEdge R720\n    cores: 16\n"
     "    memory_gb: 192\n    boot_nic: NIC.Integrated.1-1\n    channels:\n      1: {switch: sw1, port: 1/g1}",
     "password: calvin}}\n    model: PowerEdge R720\n    cores: 16\n    memory_gb: 192\n"
     "    boot_nic: NIC.Integrated.1-1\n    channels:\n      1: {switch: sw1, port: 1/g1}",
     "servers.r720-1.bmc.credentials.password", "inline secret"),
    ("inventory/exchange-site.yaml", "kind: redfish, address: 10.0.0.11", "kind: idrac, address: 10.0.0.11",
     "servers.r720-1.bmc.kind", "redfish"),
    ("inventory/exchange-site.yaml", "cores: 16", "cores: many", "servers.r720-1.cores", "integer"),
    ("inventory/exchange-site.yaml", "{switch: sw2, port: 1/g1}", "{switch: sw9, port: 1/g1}",
     "servers.r720-1.channels.2.switch", "unknown switch"),
    # Strict types: a value is taken as written, never coerced (issue 11, item 8).
    ("exchange.yaml", "vlan: 4004", "vlan: true", "networks.scn.vlan", "valid integer"),
    ("exchange.yaml", "vlan: 4004", "vlan: 4004.0", "networks.scn.vlan", "valid integer"),
    ("exchange.yaml", "vlan: 4004", "vlan: '4004'", "networks.scn.vlan", "valid integer"),
    ("exchange.yaml", "exchange1-boot\", lun: 1}", "exchange1-boot\", lun: \"1\"}", "personas.exchange1.boot.lun",
     "valid integer"),
    ("inventory/exchange-site.yaml", "cores: 16", "cores: 16.0", "servers.r720-1.cores", "valid integer"),
    ("inventory/exchange-site.yaml", "kind: redfish, address: 10.0.0.11,", "kind: redfish, tls: 'no', address: 10.0.0.11,",
     "servers.r720-1.bmc.tls", "valid boolean"),
    ("inventory/exchange-site.yaml", "kind: redfish, address: 10.0.0.11,", "kind: redfish, tls: 1, address: 10.0.0.11,",
     "servers.r720-1.bmc.tls", "valid boolean"),
    ("exchange.yaml", "mapi: 10.1.0.11,", "mapi: 167837707,", "personas.exchange1.addresses.mapi",
     "must be written as a string"),
    ("exchange.yaml", "subnet: 10.1.0.0/24", "subnet: 10.1.0.1/24", "networks.mapi.subnet", "host bits"),
    ("exchange.yaml", "storm: {max_concurrent: 2,", "storm: {max_concurrent: false,", "storm.max_concurrent",
     "valid integer"),
    # Durations: more than 0, at most a year, always with a unit.
    ("exchange.yaml", "boot_timer: 20m", "boot_timer: 0s", "personas.exchange1.boot_timer", "more than 0"),
    ("exchange.yaml", "boot_timer: 20m", "boot_timer: 0.0m", "personas.exchange1.boot_timer", "more than 0"),
    ("exchange.yaml", "boot_timer: 20m", "boot_timer: 400d", "personas.exchange1.boot_timer", "longer than a year"),
    ("exchange.yaml", "boot_timer: 20m", "boot_timer: 1200", "personas.exchange1.boot_timer", "not a duration"),
    ("exchange.yaml", "boot_timer: 20m", "boot_timer: -5m", "personas.exchange1.boot_timer", "not a duration"),
    ("web.yaml", "confirm_timeout: 5m", "confirm_timeout: 0s", "personas.web1.confirm_timeout", "more than 0"),
    ("exchange.yaml", "timeout: 20m, retries: 1}", "timeout: 0s, retries: 1}", "personas.exchange1.recovery.0.timeout",
     "more than 0"),
    # Network OS names and VLAN limits come from switch_templates/os.yaml.
    ("inventory/exchange-site.yaml", "sw1: {os: dell_powerconnect", "sw1: {os: dell_powerconnect6248",
     "switches.sw1.os", "unknown network OS 'dell_powerconnect6248'"),
    ("exchange.yaml", "vlan: 200,", "vlan: 4094,", "networks.replication.vlan",
     "above dell_powerconnect's highest VLAN 4093"),
    ("web.yaml", "vlan: 300,", "vlan: 1003,", "networks.frontend.vlan", "reserved on cisco_ios"),
    # Every cabled port has an ifIndex (link traps name ports by it), unique per switch.
    ("inventory/web-site.yaml", "1: {switch: sw3, port: GigabitEthernet0/1}", "1: {switch: sw3, port: Gi1/0/1}",
     "servers.r620-1.channels.1.port", "no ifIndex rule of cisco_ios numbers port 'Gi1/0/1'"),
    ("inventory/web-site.yaml", "1: {switch: sw3, port: GigabitEthernet0/1}",
     "1: {switch: sw3, port: GigabitEthernet0/1, ifindex: 10102}", "servers.r620-2.channels.1.port",
     "sw3 ifIndex 10102 is also r620-1 channel 1's"),
    # Redfish TLS: verified by default; a CA file or an explicit opt-out, never both.
    ("inventory/exchange-site.yaml", "kind: redfish, address: 10.0.0.11,",
     "kind: redfish, verify_tls: false, ca_file: /etc/aimctl/bmc-ca.pem, address: 10.0.0.11,",
     "servers.r720-1.bmc", "contradict"),
    ("inventory/exchange-site.yaml", "kind: redfish, address: 10.0.0.11,",
     "kind: redfish, tls: false, ca_file: /etc/aimctl/bmc-ca.pem, address: 10.0.0.11,", "servers.r720-1.bmc",
     "need tls: true"),
    ("inventory/exchange-site.yaml", "kind: redfish, address: 10.0.0.11,",
     "kind: redfish, ca_file: bmc-ca.pem, address: 10.0.0.11,", "servers.r720-1.bmc.ca_file", "not an absolute path"),
    ("inventory/exchange-site.yaml", "kind: redfish, address: 10.0.0.11,",
     "kind: redfish, vendor: acme, address: 10.0.0.11,", "servers.r720-1.bmc.vendor", "unknown Redfish vendor"),
]


@pytest.mark.parametrize("fname,old,new,path,msg", CASES, ids=[c[3] + ":" + c[4] for c in CASES])
def test_mistake_is_named(defs_copy: Path, fname: str, old: str, new: str, path: str, msg: str) -> None:
    f = defs_copy / fname
    edit(f, old, new)
    found = problems(defs_copy)
    hits = [p for p in found if LINE.match(p)["path"] == path and msg in p]  # type: ignore[index]
    assert hits, f"expected {path}: {msg} in {found}"
    m = LINE.match(hits[0])
    assert m and m["file"] == str(f)
    # The line number points at the edited key (or its parent mapping on the same line).
    line = int(m["line"])
    lines = f.read_text().splitlines()
    assert path.split(".")[-1] in lines[line - 1] or path.split(".")[-2] in lines[line - 1], (line, lines[line - 1])


def test_all_errors_at_once(defs_copy: Path) -> None:
    edit(defs_copy / "exchange.yaml", "vlan: 4004", "vlan: 0")
    edit(defs_copy / "web.yaml", "vlan: 300", "vlan: 70000")
    found = problems(defs_copy)
    assert any("exchange.yaml" in p and "networks.scn.vlan" in p for p in found)
    assert any("web.yaml" in p and "networks.frontend.vlan" in p for p in found)


def test_not_yaml_and_missing_dir(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert "not a YAML text file" in problems(tmp_path)[0]
    (tmp_path / "a.yaml").write_text("pool: [unclosed\n")
    assert "not valid YAML" in problems(tmp_path)[0]
    with pytest.raises(OperatorError, match="does not exist"):
        load(tmp_path / "nope", use_cache=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OperatorError, match="no \\*.yaml"):
        load(empty, use_cache=False)


def test_no_standby_is_a_warning(defs_copy: Path) -> None:
    edit(defs_copy / "exchange.yaml", "members: [r720-1, r720-2, r720-3]", "members: [r720-1, r720-2]")
    edit(defs_copy / "exchange.yaml", "standby_preference: [r720-3]", "standby_preference: []")
    d = load(defs_copy, use_cache=False)
    assert any("pool exchange has no standby" in w for w in d.warnings)


def test_cache_follows_content(defs_copy: Path) -> None:
    a = load(defs_copy)
    assert load(defs_copy).homes() == a.homes()
    edit(defs_copy / "exchange.yaml", "home: r720-2", "home: r720-3")
    edit(defs_copy / "exchange.yaml", "standby_preference: [r720-3]", "standby_preference: [r720-2]")
    assert load(defs_copy).homes()["exchange2"] == "r720-3"


def test_cli_exit_2_without_traceback(defs_copy: Path) -> None:
    edit(defs_copy / "exchange.yaml", "vlan: 4004", "vlan: 4095")
    r = subprocess.run([sys.executable, "-m", "aimctl.cli", "validate", str(defs_copy)], capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "networks.scn.vlan" in r.stderr


# ---------------------------------------------------------------------------- property: mutations never crash

_ref = {p.relative_to(DEFINITIONS): yaml.safe_load(p.read_text()) for p in DEFINITIONS.rglob("*.yaml")}


def _paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


JUNK = st.one_of(st.integers(-5, 70000), st.text(max_size=12), st.none(), st.booleans(),
                 st.lists(st.integers(), max_size=2), st.just({"x": 1}), st.just("iqn.bad name"),
                 st.just("1/g1; reload"), st.just("$(reboot)"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutations_give_clear_errors(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    root = tmp_path_factory.mktemp("mut")
    import copy

    docs = copy.deepcopy(_ref)
    fname = data.draw(st.sampled_from(sorted(docs, key=str)))
    doc = docs[fname]
    path = data.draw(st.sampled_from([p for p in _paths(doc) if p]))
    parent = doc
    for part in path[:-1]:
        parent = parent[part]  # type: ignore[index]
    action = data.draw(st.sampled_from(["replace", "delete", "rename"]))
    if action == "replace":
        parent[path[-1]] = data.draw(JUNK)  # type: ignore[index]
    elif action == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[str(path[-1]) + "x"] = parent.pop(path[-1])
    for rel, d in docs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(yaml.safe_dump(d))
    try:
        load(root, use_cache=False)
    except DefinitionError as exc:
        assert exc.problems
        for p in exc.problems:
            assert LINE.match(p), p
            assert str(root) in p
    except OperatorError:
        pass
