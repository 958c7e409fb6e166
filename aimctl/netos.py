"""The network-OS table: what makes one switch OS differ from another, read from ``os.yaml``.

``switch_templates/os.yaml`` has one row per OS, keyed by its netmiko device type. Everything that
differs between OSes and is needed *before* a switch is touched lives there as data: the port-name
pattern, the ifIndex numbering, the VLAN limits, the netmiko class (optional) and the CLI mode
commands. The definitions model takes its OS names from the table's keys, the loader checks ports
and VLANs against it, the detector maps trap ifIndexes with it and the switch driver drives the
session with it, so adding an OS adds a row and a template folder, never Python.

ifIndex formulas are arithmetic over the port pattern's named groups (``(unit-1)*64 + port``). They
are parsed into a tree of ``+ - *`` over integers and group names when the table is read; nothing is
ever ``eval``-ed.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aimctl import data_tables
from aimctl.errors import OperatorError

TEMPLATES_ENV = "AIMCTL_SWITCH_TEMPLATES"
# Upper bounds on the table itself: it is read by every `validate`, so it must stay cheap.
MAX_TABLE_BYTES = 256 * 1024
WHAT = "network-OS table"
MAX_FORMULA_CHARS = 200


_DEFAULT_DIR = Path(__file__).resolve().parents[1] / "switch_templates"


def templates_dir() -> Path:
    """``$AIMCTL_SWITCH_TEMPLATES`` or ``switch_templates/`` at the top of the source tree."""
    env = os.environ.get(TEMPLATES_ENV)
    return Path(env) if env else _DEFAULT_DIR


def table_name() -> str:
    """How messages name the table: its path when moved by $AIMCTL_SWITCH_TEMPLATES."""
    env = os.environ.get(TEMPLATES_ENV)
    return str(Path(env) / "os.yaml") if env else "switch_templates/os.yaml"


# ---------------------------------------------------------------------------- ifIndex formulas

Formula = Callable[[Mapping[str, int]], int]
_OPS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
}


def parse_formula(text: str, names: frozenset[str]) -> Formula:
    """``"(unit-1)*64 + port"`` -> a function of the named groups. Only integers, the given names,
    parentheses and ``+ - *`` are allowed; anything else is refused with the reason."""
    if len(text) > MAX_FORMULA_CHARS:
        raise ValueError(f"formula longer than {MAX_FORMULA_CHARS} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"formula {text!r} is not arithmetic: {exc.msg}") from None
    return _compile(tree, names, text)


def _compile(node: ast.expr, names: frozenset[str], text: str) -> Formula:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        value = node.value
        return lambda groups: value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ValueError(f"formula {text!r} uses {node.id!r}, which is not a group of the pattern "
                             f"(groups: {', '.join(sorted(names)) or 'none'})")
        key = node.id
        return lambda groups: groups[key]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _compile(node.operand, names, text)
        return lambda groups: -inner(groups)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        op = _OPS[type(node.op)]
        left, right = _compile(node.left, names, text), _compile(node.right, names, text)
        return lambda groups: op(left(groups), right(groups))
    raise ValueError(f"formula {text!r}: only integers, group names, parentheses and + - * are allowed")


@dataclass(frozen=True)
class IfIndexRule:
    pattern: re.Pattern[str]
    formula: Formula
    text: str

    def apply(self, port: str) -> int | None:
        m = self.pattern.fullmatch(port)
        if m is None:
            return None
        return self.formula({k: int(v) for k, v in m.groupdict().items()})


# ---------------------------------------------------------------------------- the table


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    ports: Annotated[str, Field(min_length=1, max_length=500)]
    ifindex: list[dict[Literal["match", "index"], str]] = []
    vlan_max: Annotated[int, Field(ge=1, le=4094)] = 4094
    vlan_reserved: list[Annotated[list[int], Field(min_length=2, max_length=2)]] = []
    quirks: str | None = None
    config_enter: str
    config_exit: str
    after_enable: list[str] = []
    native_vlan: bool
    trunk_unset: Literal["all", "none"]
    port_aliases: list[Annotated[list[str], Field(min_length=2, max_length=2)]] = []


@dataclass(frozen=True)
class NetOs:
    """One row of ``os.yaml``, checked and compiled."""

    name: str
    port_pattern: re.Pattern[str]
    ifindex_rules: tuple[IfIndexRule, ...]
    vlan_max: int
    vlan_reserved: tuple[tuple[int, int], ...]
    quirks: str | None  # a class in aimctl/drivers/netmiko_quirks.py; None: netmiko's own class
    config_enter: str
    config_exit: str
    after_enable: tuple[str, ...]
    native_vlan: bool
    trunk_unset_all: bool
    port_aliases: tuple[tuple[re.Pattern[str], str], ...]

    def valid_port(self, port: object) -> bool:
        return isinstance(port, str) and self.port_pattern.fullmatch(port) is not None

    def vlan_problem(self, vlan: int) -> str | None:
        """Why ``vlan`` cannot be configured on this OS, or None."""
        if vlan > self.vlan_max:
            return f"VLAN {vlan} is above {self.name}'s highest VLAN {self.vlan_max}"
        for lo, hi in self.vlan_reserved:
            if lo <= vlan <= hi:
                return f"VLAN {vlan} is reserved on {self.name} ({lo}-{hi})"
        return None

    def ifindex(self, port: str) -> int:
        for rule in self.ifindex_rules:
            value = rule.apply(port)
            if value is not None:
                return value
        raise ValueError(f"no ifIndex rule of {self.name} matches port {port!r}")


def _compile_row(name: str, row: _Row, where: str) -> NetOs:
    def regex(text: str, field: str) -> re.Pattern[str]:
        try:
            return re.compile(text)
        except re.error as exc:
            raise OperatorError(f"{where}: {name}.{field}: bad pattern {text!r}: {exc}") from None

    rules = []
    for i, r in enumerate(row.ifindex):
        if set(r) != {"match", "index"}:
            raise OperatorError(f"{where}: {name}.ifindex.{i}: want {{match: REGEX, index: FORMULA}}")
        pattern = regex(r["match"], f"ifindex.{i}.match")
        try:
            formula = parse_formula(r["index"], frozenset(pattern.groupindex))
        except ValueError as exc:
            raise OperatorError(f"{where}: {name}.ifindex.{i}.index: {exc}") from None
        rules.append(IfIndexRule(pattern, formula, r["index"]))
    for lo, hi in row.vlan_reserved:
        if not 1 <= lo <= hi <= 4094:
            raise OperatorError(f"{where}: {name}.vlan_reserved: [{lo}, {hi}] is not a range within 1-4094")
    return NetOs(
        name=name, port_pattern=regex(row.ports, "ports"), ifindex_rules=tuple(rules), vlan_max=row.vlan_max,
        vlan_reserved=tuple((lo, hi) for lo, hi in row.vlan_reserved), quirks=row.quirks, config_enter=row.config_enter,
        config_exit=row.config_exit, after_enable=tuple(row.after_enable), native_vlan=row.native_vlan,
        trunk_unset_all=row.trunk_unset == "all",
        port_aliases=tuple((regex(a, "port_aliases"), r) for a, r in row.port_aliases))


_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")


@lru_cache(maxsize=16)
def _table(path: str, _stamp: tuple[int, int]) -> dict[str, NetOs]:
    where = path
    raw = data_tables.read_bounded(Path(path), WHAT, MAX_TABLE_BYTES)
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise OperatorError(f"{where}: cannot load the {WHAT}: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not doc:
        raise OperatorError(f"{where}: the network-OS table must map OS names to rows")
    out: dict[str, NetOs] = {}
    for name, body in doc.items():
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise OperatorError(f"{where}: {name!r}: an OS name is a netmiko device type (a-z, 0-9, _)")
        try:
            row = _Row.model_validate(body)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise OperatorError(f"{where}: {name}.{loc}: {first['msg']}") from None
        out[name] = _compile_row(name, row, where)
    return out


def table(directory: Path | None = None) -> dict[str, NetOs]:
    """The rows of ``<directory>/os.yaml`` (default: ``templates_dir()``), read again when it changes."""
    path = (directory or templates_dir()) / "os.yaml"
    return _table(str(path), data_tables.stamp(path, WHAT))


def names(directory: Path | None = None) -> list[str]:
    return sorted(table(directory))


def get(os_name: str, directory: Path | None = None) -> NetOs:
    rows = table(directory)
    if os_name not in rows:
        where = (directory or templates_dir()) / "os.yaml"
        raise OperatorError(f"{where}: no network OS {os_name!r} (known: {', '.join(sorted(rows))})")
    return rows[os_name]


def valid_port(os_name: str, port: object, directory: Path | None = None) -> bool:
    """Is ``port`` a port name of ``os_name``? Unknown OSes have no valid ports."""
    row = table(directory).get(os_name)
    return row is not None and row.valid_port(port)


def table_bytes(directory: Path | None = None) -> bytes:
    return data_tables.file_bytes((directory or templates_dir()) / "os.yaml")


def schema_enum() -> dict[str, Any]:
    return data_tables.enum_schema(names)
