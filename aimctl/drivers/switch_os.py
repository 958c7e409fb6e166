"""Network-OS profiles: everything that makes one switch OS differ from another, as data.

A profile is one row of ``switch_templates/os.yaml`` plus the folder ``switch_templates/<os>/``:
jinja2 templates for the commands, ``errors.txt`` (output patterns that mean a line was refused)
and ``show_port.textfsm`` (the read-back parser). ntc-templates has no parser for the switchport
lines of ``show running-config`` on these OSes, hence our own TextFSM templates.

Everything is loaded and checked when a profile is first used, so a broken template is refused
whole with its file and line, before any switch is touched.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import textfsm

from aimctl import netos
from aimctl.drivers.protocols import PortIntent, PortMode, PortState
from aimctl.errors import OperatorError, Rejected
from aimctl.validation import DESCRIPTION_RE, valid_vlan

TEMPLATES_ENV = netos.TEMPLATES_ENV
ALL_VLANS: tuple[int, ...] = tuple(range(1, 4095))
TEMPLATES = ("ensure_vlans.j2", "set_trunk.j2", "set_access_vlan.j2", "quarantine.j2", "show_port.j2")
_PRINTABLE = re.compile(r"^[\x20-\x7e]{1,240}\Z")


def default_templates_dir() -> Path:
    return netos.templates_dir()


@dataclass(frozen=True)
class Line:
    """One CLI line, with the intent port it configures (None for VLAN creation)."""

    port: str | None
    text: str
    opens_port: bool = False  # the line that enters the port's config (`interface ...`)


@dataclass(frozen=True)
class Observed:
    state: PortState
    description: str = ""


class OsProfile:
    def __init__(self, row: netos.NetOs, folder: Path) -> None:
        self.name = row.name
        self.row = row
        self.folder = folder
        self.quirks = row.quirks
        self.config_enter = row.config_enter
        self.config_exit = row.config_exit
        self.after_enable = row.after_enable
        self.native_vlan = row.native_vlan
        self.vlan_max = row.vlan_max
        self.trunk_unset_all = row.trunk_unset_all
        self.aliases = row.port_aliases
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
            trim_blocks=True, lstrip_blocks=True, autoescape=False)
        for t in TEMPLATES:
            try:
                self.env.get_template(t)
            except jinja2.TemplateSyntaxError as exc:
                raise OperatorError(f"{folder / t}:{exc.lineno}: {exc.message}") from None
            except jinja2.TemplateNotFound:
                raise OperatorError(f"{folder / t}: missing template for {self.name}") from None
        self.errors = self._load_errors(folder / "errors.txt")
        self.fsm_text = self._read(folder / "show_port.textfsm")
        try:
            textfsm.TextFSM(io.StringIO(self.fsm_text))
        except textfsm.TextFSMTemplateError as exc:
            raise OperatorError(f"{folder / 'show_port.textfsm'}: {exc}") from None

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text()
        except OSError as exc:
            raise OperatorError(f"{path}: cannot read: {exc.strerror}") from None

    def _load_errors(self, path: Path) -> tuple[re.Pattern[str], ...]:
        out = []
        for n, raw in enumerate(self._read(path).splitlines(), 1):
            if not raw.strip() or raw.startswith("#"):
                continue
            try:
                out.append(re.compile(raw))
            except re.error as exc:
                raise OperatorError(f"{path}:{n}: bad pattern: {exc}") from None
        return tuple(out)

    def netmiko_class(self) -> type[Any]:
        """The connection class: the row's quirk class, else netmiko's own class for the device type."""
        from netmiko.ssh_dispatcher import CLASS_MAPPER

        from aimctl.drivers.netmiko_quirks import QUIRK_CLASSES

        if self.quirks is not None:
            if self.quirks not in QUIRK_CLASSES:
                raise OperatorError(f"{self.folder.parent / 'os.yaml'}: {self.name}.quirks: unknown netmiko class "
                                    f"{self.quirks!r} (known: {', '.join(sorted(QUIRK_CLASSES))})")
            return QUIRK_CLASSES[self.quirks]
        if self.name not in CLASS_MAPPER:
            raise OperatorError(f"{self.folder.parent / 'os.yaml'}: {self.name}: not a netmiko device type, "
                                "and no quirks class is named")
        return CLASS_MAPPER[self.name]

    # -- names and validation ---------------------------------------------------------------------
    def canon(self, port: str) -> str:
        """One spelling per port, whatever the source (``ethernet 1/g1`` and ``1/g1`` agree)."""
        name = port.strip()
        for pattern, repl in self.aliases:
            if pattern.search(name):
                return pattern.sub(repl, name, count=1).replace(" ", "")
        return name.replace(" ", "")

    def validate(self, intents: Sequence[PortIntent], device: str) -> None:
        """Refuse any value that is not plainly a port, a VLAN or a description (rule 6)."""
        seen: set[str] = set()
        for i in intents:
            if not self.row.valid_port(i.port):
                raise Rejected(device, f"port {i.port!r} is not a {self.name} port name")
            if self.canon(i.port) in seen:
                raise Rejected(device, f"port {i.port!r} appears twice in one batch")
            seen.add(self.canon(i.port))
            if not isinstance(i.mode, PortMode):
                raise Rejected(device, f"port {i.port}: mode {i.mode!r} is not access or trunk")
            if not isinstance(i.vlans, tuple) or not i.vlans:
                raise Rejected(device, f"port {i.port}: VLANs must be a non-empty tuple, got {i.vlans!r}")
            for v in (*i.vlans, *((i.native_vlan,) if i.native_vlan is not None else ())):
                if not valid_vlan(v) or v > self.vlan_max:
                    raise Rejected(device, f"port {i.port}: VLAN {v!r} is not in 1..{self.vlan_max}")
                reserved = self.row.vlan_problem(v)
                if reserved:
                    raise Rejected(device, f"port {i.port}: {reserved}")
            if i.mode is PortMode.ACCESS and len(i.vlans) != 1:
                raise Rejected(device, f"port {i.port}: an access port takes exactly one VLAN, got {i.vlans!r}")
            if i.native_vlan is not None and (i.mode is not PortMode.TRUNK or not self.native_vlan):
                raise Rejected(device, f"port {i.port}: a native VLAN needs a trunk on an OS that supports "
                                       f"it ({self.name}: {'yes' if self.native_vlan else 'no'})")
            if i.quarantine and i.mode is not PortMode.ACCESS:
                raise Rejected(device, f"port {i.port}: quarantine is an access port")
            if not isinstance(i.description, str) or not DESCRIPTION_RE.match(i.description):
                raise Rejected(device, f"port {i.port}: description {i.description!r} has characters a "
                                       "switch CLI could take as commands (allowed: letters, digits, space ._:/-)")

    # -- rendering --------------------------------------------------------------------------------
    def _lines(self, template: str, device: str, **ctx: Any) -> list[str]:
        text = self.env.get_template(template).render(**ctx)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        for ln in lines:
            if not _PRINTABLE.match(ln):
                raise Rejected(device, f"{template} rendered a line with control characters: {ln!r}")
        return lines

    def render(self, intents: Sequence[PortIntent], current: Mapping[str, PortState] | None = None,
               device: str = "", ensure_vlans: bool = True) -> list[Line]:
        """CLI lines for ``intents``; ``current`` (the captured states) lets a template remove
        what a port carries and the intent does not (PowerConnect has no "set list" command)."""
        device = device or self.name
        current = current or {}
        out: list[Line] = []
        if ensure_vlans and intents:
            vlans = sorted({v for i in intents for v in i.vlans} | {i.native_vlan for i in intents if i.native_vlan})
            out += [Line(None, t) for t in self._lines("ensure_vlans.j2", device, vlans=vlans)]
        for i in intents:
            cur = current.get(i.port)
            cur_trunk = sorted(cur.vlans) if cur is not None and cur.mode is PortMode.TRUNK else []
            ctx: dict[str, Any] = {"port": i.port, "description": i.description}
            if i.quarantine:
                name = "quarantine.j2"
                ctx.update(vlan=i.vlans[0], current_trunk=cur_trunk)
            elif i.mode is PortMode.TRUNK:
                vlans = sorted(set(i.vlans))
                name = "set_trunk.j2"
                ctx.update(vlans=vlans, native_vlan=i.native_vlan, all_vlans=tuple(vlans) == ALL_VLANS,
                           remove=[v for v in cur_trunk if v not in set(vlans)])
            else:
                name = "set_access_vlan.j2"
                ctx.update(vlan=i.vlans[0])
            texts = self._lines(name, device, **ctx)
            out += [Line(i.port, t, n == 0) for n, t in enumerate(texts)]
        return out

    def read_command(self, ports: Sequence[str], device: str = "") -> str:
        lines = self._lines("show_port.j2", device or self.name, ports=list(ports))
        if len(lines) != 1:
            raise OperatorError(f"{self.folder / 'show_port.j2'}: must render exactly one command")
        return lines[0]

    # -- reading ----------------------------------------------------------------------------------
    def refusal(self, output: str) -> str | None:
        """The output line that shows the switch refused something, if any."""
        for pattern in self.errors:
            m = pattern.search(output)
            if m:
                start = output.rfind("\n", 0, m.start()) + 1
                end = output.find("\n", m.end())
                return output[start:end if end >= 0 else None].strip()
        return None

    def parse(self, output: str, ports: Sequence[str]) -> dict[str, Observed]:
        rows = textfsm.TextFSM(io.StringIO(self.fsm_text)).ParseTextToDicts(output)
        by_name = {self.canon(r["INTERFACE"]): r for r in rows}
        return {p: self._observed(p, by_name.get(self.canon(p))) for p in ports}

    def _observed(self, port: str, row: dict[str, Any] | None) -> Observed:
        if row is None:  # no config lines: an access port on the default VLAN, on every OS here
            return Observed(PortState(port, PortMode.ACCESS, (1,)))
        mode = (row["MODE"] or "access").lower()
        allowed = expand_vlans(row["ALLOWED"])
        if mode == "trunk":
            if not row["ALLOWED"]:
                allowed = ALL_VLANS if self.trunk_unset_all else ()
            native = int(row["NATIVE_VLAN"]) if row["NATIVE_VLAN"] else None
            state = PortState(port, PortMode.TRUNK, allowed, native if native != 1 else None)
        elif mode == "access":
            state = PortState(port, PortMode.ACCESS, (int(row["ACCESS_VLAN"] or 1),))
        else:  # general, dynamic...: not a mode aimctl sets
            state = PortState(port, None, allowed)
        return Observed(state, row["DESCRIPTION"] or "")


def expand_vlans(tokens: Sequence[str]) -> tuple[int, ...]:
    """``["100,200", "300-302"]`` -> (100, 200, 300, 301, 302); ``none`` -> ()."""
    out: set[int] = set()
    for token in tokens:
        for part in token.split(","):
            part = part.strip().lower()
            if part == "all":
                out.update(ALL_VLANS)
            elif re.fullmatch(r"\d+-\d+", part):
                a, b = (int(x) for x in part.split("-"))
                out.update(range(a, b + 1))
            elif part.isdigit():
                out.add(int(part))
    return tuple(sorted(out))


def matches(intent: PortIntent, state: PortState) -> bool:
    if state.mode is not intent.mode:
        return False
    if intent.mode is PortMode.ACCESS:
        return state.vlans == (intent.vlans[0],)
    native_ok = intent.native_vlan is None or _native(state.native_vlan) == _native(intent.native_vlan)
    return set(state.vlans) == set(intent.vlans) and native_ok


def _native(vlan: int | None) -> int | None:
    return None if vlan in (None, 1) else vlan  # VLAN 1 is the native VLAN when none is set


def intent_from(observed: Observed) -> PortIntent | None:
    """The intent that puts a port back as it was observed (None for modes aimctl does not set)."""
    s = observed.state
    if s.mode is None or not s.vlans:
        return None
    # A description set by hand may hold characters our templates never send; keep the rest.
    description = observed.description
    if not DESCRIPTION_RE.match(description):
        description = re.sub(r"[^A-Za-z0-9 ._:/-]", "", description)[:64]
    return PortIntent(s.port, s.mode, s.vlans, s.native_vlan, description)


def load_profile(os_name: str, templates_dir: str | None = None) -> OsProfile:
    """The profile of ``os_name`` from ``templates_dir`` (default ``$AIMCTL_SWITCH_TEMPLATES`` or the
    tree's ``switch_templates/``); built again only when its ``os.yaml`` row changes."""
    root = Path(templates_dir) if templates_dir else default_templates_dir()
    return _profile(netos.get(os_name, root), str(root / os_name))


@lru_cache(maxsize=32)
def _profile(row: netos.NetOs, folder: str) -> OsProfile:
    return OsProfile(row, Path(folder))


def render_lines(os_name: str, intents: Sequence[PortIntent]) -> list[str]:
    """The exact CLI lines for ``intents`` on a switch of ``os_name`` (``aimctl plan``)."""
    profile = load_profile(os_name)
    profile.validate(intents, os_name)
    return [ln.text for ln in profile.render(intents, device=os_name)]
