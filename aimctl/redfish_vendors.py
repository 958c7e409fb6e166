"""The Redfish vendor table (``bootcfg/redfish_vendors.json``): which row a BMC gets, as data.

A row says how one BMC family takes iSCSI boot settings (which URI takes the write, what "cleared"
looks like). The inventory may name a row (``bmc.vendor``); otherwise the row is chosen from the
BMC's own ComputerSystem Manufacturer and Model by the rows' ``match`` rules — a quirks table
keyed by (manufacturer, model), never ``if vendor == ...`` in code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from aimctl import data_tables
from aimctl.errors import OperatorError

GENERIC = "generic"
MAX_TABLE_BYTES = 256 * 1024
WHAT = "Redfish vendor table"


def bootcfg_dir() -> Path:
    """``bootcfg/`` at the top of the source tree, next to ``aimctl/``."""
    return Path(__file__).resolve().parents[1] / "bootcfg"


@dataclass(frozen=True)
class Match:
    manufacturer: re.Pattern[str]
    model: re.Pattern[str]

    def fits(self, manufacturer: str, model: str) -> bool:
        return bool(self.manufacturer.search(manufacturer) and self.model.search(model))


@dataclass(frozen=True)
class VendorTable:
    rows: dict[str, dict[str, Any]]  # name -> the row as written (the payload template reads it)
    matches: tuple[tuple[str, Match], ...]  # in file order

    def names(self) -> list[str]:
        return list(self.rows)


def choose(table: VendorTable, configured: str | None, manufacturer: str | None, model: str | None) -> str:
    """The row for a BMC: the inventory's ``vendor`` when set, else the first row whose match rule
    fits the BMC's Manufacturer and Model, else ``generic``. Pure; table-tested."""
    if configured:
        if configured not in table.rows:
            raise OperatorError(f"unknown Redfish vendor {configured!r} (known: {', '.join(table.rows)})")
        return configured
    for name, rule in table.matches:
        if rule.fits((manufacturer or "").strip(), (model or "").strip()):
            return name
    return GENERIC


@lru_cache(maxsize=8)
def _load(path: str, _stamp: tuple[int, int]) -> VendorTable:
    try:
        doc = json.loads(data_tables.read_bounded(Path(path), WHAT, MAX_TABLE_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise OperatorError(f"{path}: cannot load the {WHAT}: {exc}") from None
    if not isinstance(doc, dict):
        raise OperatorError(f"{path}: the Redfish vendor table must be an object of rows")
    rows = {k: v for k, v in doc.items() if not k.startswith("_")}
    if GENERIC not in rows:
        raise OperatorError(f"{path}: the Redfish vendor table needs a {GENERIC!r} row")
    matches: list[tuple[str, Match]] = []
    for name, row in rows.items():
        if not isinstance(row, dict):
            raise OperatorError(f"{path}: {name}: a row must be an object")
        for i, rule in enumerate(row.get("match") or []):
            try:
                matches.append((name, Match(re.compile(str(rule.get("manufacturer", "")), re.I),
                                            re.compile(str(rule.get("model", "")), re.I))))
            except (AttributeError, re.error) as exc:
                raise OperatorError(f"{path}: {name}.match.{i}: want {{manufacturer: REGEX, model: REGEX}}: {exc}") \
                    from None
    return VendorTable(rows, tuple(matches))


def table(directory: Path | None = None) -> VendorTable:
    path = (directory or bootcfg_dir()) / "redfish_vendors.json"
    return _load(str(path), data_tables.stamp(path, WHAT))


def names(directory: Path | None = None) -> list[str]:
    return table(directory).names()


def table_bytes(directory: Path | None = None) -> bytes:
    return data_tables.file_bytes((directory or bootcfg_dir()) / "redfish_vendors.json")


def schema_enum() -> dict[str, Any]:
    return data_tables.enum_schema(names)
