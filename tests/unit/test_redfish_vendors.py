"""The Redfish vendor row: the inventory's when named, else chosen from the BMC's Manufacturer/Model
by the rows' match rules in bootcfg/redfish_vendors.json (a table, never `if vendor == ...`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aimctl import redfish_vendors
from aimctl.errors import OperatorError

FIXTURES = Path(__file__).parent / "fixtures" / "redfish"

# (inventory vendor, Manufacturer, Model, row)
CASES = [
    (None, "Dell Inc.", "PowerEdge R720", "dell_idrac"),
    (None, "DELL", "", "dell_idrac"),
    (None, "  Dell Inc.  ", None, "dell_idrac"),
    (None, "Dellwood Systems", "X1", "generic"),
    (None, "HPE", "ProLiant DL360 Gen10", "generic"),
    (None, "Sushy Emulator", None, "generic"),
    (None, None, None, "generic"),
    ("generic", "Dell Inc.", "PowerEdge R720", "generic"),  # the inventory wins
    ("dell_idrac", "Supermicro", "X11", "dell_idrac"),
]


@pytest.mark.parametrize("configured,manufacturer,model,row", CASES)
def test_choose(configured: str | None, manufacturer: str | None, model: str | None, row: str) -> None:
    assert redfish_vendors.choose(redfish_vendors.table(), configured, manufacturer, model) == row


def test_unknown_configured_vendor() -> None:
    with pytest.raises(OperatorError, match="unknown Redfish vendor 'acme'"):
        redfish_vendors.choose(redfish_vendors.table(), "acme", "Dell Inc.", "")


@pytest.mark.parametrize("fixture,row", [("idrac8_system.json", "dell_idrac"), ("sushy_emulator_system.json", "generic")])
def test_choose_from_system_resource(fixture: str, row: str) -> None:
    body = json.loads((FIXTURES / fixture).read_text())
    assert redfish_vendors.choose(redfish_vendors.table(), None, body.get("Manufacturer"), body.get("Model")) == row


def test_table_needs_generic_and_valid_rules(tmp_path: Path) -> None:
    (tmp_path / "redfish_vendors.json").write_text(json.dumps({"acme": {"match": []}}))
    with pytest.raises(OperatorError, match="needs a 'generic' row"):
        redfish_vendors.table(tmp_path)
    (tmp_path / "redfish_vendors.json").write_text(json.dumps({"generic": {}, "acme": {"match": [{"manufacturer": "("}]}}))
    with pytest.raises(OperatorError, match="acme.match.0"):
        redfish_vendors.table(tmp_path)
