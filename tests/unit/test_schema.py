"""`aimctl schema` describes the definitions as written: every reference file passes a real JSON
Schema validator (jsonschema, Draft 2020-12, formats checked), and the mistakes the loader refuses
are refused by the schema too, so an editor marks what `validate` would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from yaml_rs import loads

from aimctl.model import definition_schema
from tests.badtrees import pool_text
from tests.conftest import DEFINITIONS, REPO

REFERENCE = sorted(DEFINITIONS.rglob("*.yaml"))


def as_json(node: Any) -> Any:
    """What a validator sees: YAML read as YAML 1.2, mapping keys as JSON strings."""
    if isinstance(node, dict):
        return {str(k): as_json(v) for k, v in node.items()}
    if isinstance(node, list):
        return [as_json(v) for v in node]
    return node


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = definition_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def errors(validator: Draft202012Validator, text: str) -> list[str]:
    return [e.message for e in validator.iter_errors(as_json(loads(text)))]


def test_cli_prints_the_schema() -> None:
    r = subprocess.run([sys.executable, "-m", "aimctl.cli", "schema"], capture_output=True, text=True, cwd=REPO,
                       check=True)
    assert json.loads(r.stdout) == definition_schema()


@pytest.mark.parametrize("path", REFERENCE, ids=[str(p.relative_to(DEFINITIONS)) for p in REFERENCE])
def test_reference_files_pass(validator: Draft202012Validator, path: Path) -> None:
    assert errors(validator, path.read_text()) == []


def test_benchmark_pool_file_passes(validator: Draft202012Validator) -> None:
    """A pool file that carries its own inventory (servers, switches, storage) is one file kind too."""
    assert errors(validator, pool_text(3, personas=3, servers=4, storage=True)) == []


EXCHANGE = (DEFINITIONS / "exchange.yaml").read_text()
SITE = (DEFINITIONS / "inventory" / "exchange-site.yaml").read_text()

# (name, text, old, new): each a mistake the loader refuses; the schema must refuse it too.
REFUSED = [
    ("vlan: true", EXCHANGE, "vlan: 4004", "vlan: true"),
    ("vlan as text", EXCHANGE, "vlan: 4004", "vlan: '4004'"),
    ("duration without unit", EXCHANGE, "boot_timer: 20m", "boot_timer: 1200"),
    ("zero duration", EXCHANGE, "boot_timer: 20m", "boot_timer: 0s"),
    ("typo in a field", EXCHANGE, "boot_timer: 20m", "boot_timmer: 20m"),
    ("inline secret", EXCHANGE, "heartbeat_key: file:/etc/aimctl/keys/exchange1.key", "heartbeat_key: hunter2"),
    ("bad persona name", EXCHANGE, "  exchange1:", "  Exchange_1:"),
    ("address not IPv4", EXCHANGE, "mapi: 10.1.0.11", "mapi: 10.1.0.300"),
    ("unknown switch OS", SITE, "sw1: {os: dell_powerconnect", "sw1: {os: junos"),
    ("channel 65", SITE, "      4: {switch: sw2, port: 1/g2}", "      65: {switch: sw2, port: 1/g2}"),
    ("tls as text", SITE, "kind: redfish, address: 10.0.0.11", "kind: redfish, tls: 'no', address: 10.0.0.11"),
    ("unknown Redfish vendor", SITE, "kind: redfish, address: 10.0.0.11", "kind: redfish, vendor: acme, address: 10.0.0.11"),
    ("pool key in an inventory file", SITE, "servers:", "members: [r720-1]\nservers:"),
    ("empty file", "{}", "{}", "{}"),
]


@pytest.mark.parametrize("name,text,old,new", REFUSED, ids=[c[0] for c in REFUSED])
def test_schema_refuses_what_the_loader_refuses(validator: Draft202012Validator, name: str, text: str, old: str,
                                                new: str) -> None:
    assert old in text
    assert errors(validator, text.replace(old, new, 1)), name


def test_schema_takes_what_the_loader_takes(validator: Draft202012Validator) -> None:
    """Optional settings as written: a CA file, an explicit vendor, a boot timer in seconds."""
    text = SITE.replace("kind: redfish, address: 10.0.0.11",
                        "kind: redfish, vendor: dell_idrac, ca_file: /etc/aimctl/bmc-ca.pem, address: 10.0.0.11")
    assert errors(validator, text) == []
    assert errors(validator, EXCHANGE.replace("boot_timer: 20m", "boot_timer: 90s")) == []
