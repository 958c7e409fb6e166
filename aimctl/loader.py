"""Load ``personas/``: every problem at once, each as ``FILE:LINE:COL: field.path: message``.

Speed matters at 10,000 personas: YAML is composed by libyaml (``CSafeLoader``) into nodes, turned
into plain data in one Python walk that also remembers where each key sits, then validated by
pydantic. Constructing through PyYAML's Python constructors would cost most of the budget.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from aimctl.errors import DefinitionError, OperatorError
from aimctl.model import InventoryFile, Persona, PoolFile, Server, Storage, Switch
from aimctl.model import dns_placeholders
from aimctl.validation import is_rehearsal_initiator, valid_port

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml missing; still correct, only slower
    _Loader = yaml.SafeLoader
try:
    # A native YAML 1.2 parser: about 15x faster than PyYAML's composer on large trees.
    from yaml_rs import loads as _fast_loads
except ImportError:  # pragma: no cover - falls back to PyYAML only
    _fast_loads = None  # type: ignore[assignment]

Path_ = tuple[Any, ...]
CACHE_VERSION = "1"


class Source:
    """Where a definition came from, so any check can point at the line.

    Positions are worked out only when a problem must be reported: the fast parser gives plain
    data, and a file is composed a second time, by PyYAML with marks, only if it has an error.
    """

    def __init__(self, file: str, text: str, positions: dict[Path_, tuple[int, int]] | None = None) -> None:
        self.file = file
        self._text = text
        self._positions = positions

    @property
    def positions(self) -> dict[Path_, tuple[int, int]]:
        if self._positions is None:
            composed = _compose_text(self._text, self.file, [])
            self._positions = composed[1] if composed else {(): (1, 1)}
        return self._positions

    def at(self, path: Path_, message: str) -> str:
        line, col = self._find(path)
        dotted = ".".join(str(p) for p in path) or "<file>"
        return f"{self.file}:{line}:{col}: {dotted}: {message}"

    def _find(self, path: Path_) -> tuple[int, int]:
        # Walk up until a recorded ancestor: a missing field is reported at its parent.
        pos = self.positions
        p = tuple(path)
        while p:
            if p in pos:
                return pos[p]
            p = p[:-1]
        return pos.get((), (1, 1))

    def __getstate__(self) -> dict[str, object]:
        # The cache keeps definitions, not source texts.
        return {"file": self.file, "_text": "", "_positions": {}}


@dataclass
class PersonaDef:
    name: str
    pool: str
    spec: Persona


@dataclass
class Definitions:
    root: Path
    pools: dict[str, PoolFile] = field(default_factory=dict)
    servers: dict[str, Server] = field(default_factory=dict)
    switches: dict[str, Switch] = field(default_factory=dict)
    storage: dict[str, Storage] = field(default_factory=dict)
    personas: dict[str, PersonaDef] = field(default_factory=dict)
    server_pool: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def homes(self) -> dict[str, str]:
        return {p.name: p.spec.home for p in self.personas.values()}

    def pool_personas(self, pool: str) -> list[PersonaDef]:
        return [p for p in self.personas.values() if p.pool == pool]


# ---------------------------------------------------------------------------- YAML → data + positions


def _to_data(node: yaml.Node, path: Path_, pos: dict[Path_, tuple[int, int]], src: str, errors: list[str]) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            key = _scalar(knode)
            if isinstance(key, (list, dict)) or not isinstance(knode, yaml.ScalarNode):
                errors.append(f"{src}:{knode.start_mark.line + 1}:{knode.start_mark.column + 1}: "
                              f"{'.'.join(map(str, path)) or '<file>'}: a key must be a plain value")
                continue
            sub = path + (key,)
            pos[sub] = (knode.start_mark.line + 1, knode.start_mark.column + 1)
            if key in out:
                errors.append(f"{src}:{pos[sub][0]}:{pos[sub][1]}: {'.'.join(map(str, sub))}: duplicate key")
            out[key] = _to_data(vnode, sub, pos, src, errors)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, child in enumerate(node.value):
            sub = path + (i,)
            pos[sub] = (child.start_mark.line + 1, child.start_mark.column + 1)
            items.append(_to_data(child, sub, pos, src, errors))
        return items
    return _scalar(node)


# YAML 1.2 core schema (as the fast parser): "yes"/"on" stay strings.
_BOOL = {"true": True, "false": False}


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        return None
    v = node.value
    if node.style:  # quoted: always a string
        return v
    tag = node.tag
    if tag.endswith(":int"):
        try:
            return int(v, 0) if not v.startswith("0") or v == "0" or v.startswith("0x") else int(v)
        except ValueError:
            return v
    if tag.endswith(":float"):
        try:
            return float(v)
        except ValueError:
            return v
    if tag.endswith(":bool"):
        return _BOOL.get(v.lower(), v)
    if tag.endswith(":null"):
        return None
    return v


def _read(path: Path, shown: str, errors: list[str]) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        errors.append(f"{shown}:1:1: <file>: not a YAML text file (not UTF-8 at byte {exc.start})")
    except OSError as exc:
        errors.append(f"{shown}:1:1: <file>: cannot read: {exc.strerror}")
    return None


def _compose_text(text: str, shown: str, errors: list[str]) -> tuple[Any, dict[Path_, tuple[int, int]]] | None:
    """The slow, position-keeping path: PyYAML nodes (with marks) to data."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        errors.append(f"{shown}:{line}:{col}: <file>: not valid YAML: {problem}")
        return None
    pos: dict[Path_, tuple[int, int]] = {(): (1, 1)}
    if node is None:
        return {}, pos
    data = _to_data(node, (), pos, shown, errors)
    return data, pos


def _parse(text: str, shown: str, errors: list[str]) -> tuple[Any, Source] | None:
    """Fast path first (a native YAML 1.2 parser); on any trouble, the slow path says where."""
    if _fast_loads is not None:
        try:
            return _fast_loads(text) or {}, Source(shown, text)
        except Exception:  # noqa: BLE001 - the slow path below reports the problem with its position
            pass
    before = len(errors)
    composed = _compose_text(text, shown, errors)
    if composed is None or len(errors) > before:
        if composed is not None or len(errors) > before:
            return None
        errors.append(f"{shown}:1:1: <file>: not valid YAML")
        return None
    return composed[0], Source(shown, text, composed[1])


def _pydantic_errors(exc: ValidationError, data: Any, src: Source) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        # Drop loc parts that are not keys in the data (union tags, "function-after"...).
        path: list[Any] = []
        cur = data
        for part in err["loc"]:
            if isinstance(cur, dict) and part in cur:
                path.append(part)
                cur = cur[part]
            elif isinstance(cur, dict) and isinstance(part, int) and str(part) in cur:
                path.append(str(part))
                cur = cur[str(part)]
            elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
                path.append(part)
                cur = cur[part]
            elif err["type"] in ("missing", "extra_forbidden") and part == err["loc"][-1]:
                path.append(part)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (a typo?)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        out.append(src.at(tuple(path), msg))
    return out


# ---------------------------------------------------------------------------- loading


def _files(root: Path) -> list[Path]:
    if not root.exists():
        raise OperatorError(f"{root}: definitions directory does not exist")
    if not root.is_dir():
        raise OperatorError(f"{root}: not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        raise OperatorError(f"{root}: no *.yaml definition files found")
    return files


# A cache made by other model code must never be served: the key covers the code that made it.
_CODE_KEY = hashlib.sha256(b"".join(Path(__file__).with_name(n).read_bytes()
                                    for n in ("model.py", "loader.py", "validation.py"))).digest()


def content_key(root: Path) -> str:
    """A hash of every definition file's name and bytes: the cache key for ``load``."""
    h = hashlib.sha256(CACHE_VERSION.encode() + _CODE_KEY)
    for f in _files(root):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _cache_dir() -> Path:
    base = os.environ.get("AIMCTL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "aimctl")
    return Path(base)


def _write_pickle(path: Path, obj: object) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)


def _read_pickle(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            return pickle.load(fh)
    except Exception:  # noqa: BLE001 - a stale or torn cache file is only a lost shortcut
        return None


def _pool_slice(defs: Definitions, pool: str) -> Definitions:
    """Just what one pool's failover needs: its pool, members, their switches, its storage."""
    p = defs.pools[pool]
    servers = {m: defs.servers[m] for m in p.members}
    switches = {c.switch: defs.switches[c.switch] for s in servers.values() for c in s.channels.values()}
    storage = {x.spec.storage: defs.storage[x.spec.storage] for x in defs.pool_personas(pool)}
    return Definitions(root=defs.root, pools={pool: p}, servers=servers, switches=switches, storage=storage,
                       personas={n: x for n, x in defs.personas.items() if x.pool == pool},
                       server_pool={m: pool for m in p.members},
                       warnings=[w for w in defs.warnings if f"pool {pool} " in w])


def load(root: Path | str, use_cache: bool = True) -> Definitions:
    """Load and validate every definition under ``root``; raise DefinitionError listing all problems.

    A validated tree is cached keyed by the content of all files (whole, and sliced per pool), so
    asking again after no change costs a hash of the files and an unpickle, not a re-validation.
    """
    root = Path(root)
    if not use_cache:
        return _load(root)
    cache = _cache_dir() / content_key(root)
    defs = _read_pickle(cache / "full.pickle")
    if isinstance(defs, Definitions):
        defs.root = root
        return defs
    defs = _load(root)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for pool in defs.pools:
            _write_pickle(cache / f"pool-{pool}.pickle", _pool_slice(defs, pool))
        _write_pickle(cache / "index.pickle", {n: x.pool for n, x in defs.personas.items()})
        _write_pickle(cache / "full.pickle", defs)
    except OSError:
        pass
    return defs


def load_for_persona(root: Path | str, persona: str) -> Definitions:
    """The validated definitions of ``persona``'s pool only (for planning one persona fast).

    Only ever served from a cache of a tree that validated whole; otherwise it is a full load.
    """
    root = Path(root)
    cache = _cache_dir() / content_key(root)
    index = _read_pickle(cache / "index.pickle")
    if isinstance(index, dict) and persona in index:
        part = _read_pickle(cache / f"pool-{index[persona]}.pickle")
        if isinstance(part, Definitions):
            part.root = root
            return part
    return load(root)


def _validate(model: type[BaseModel], data: Any, src: Source, errors: list[str]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc, data, src))
        return None


def _load(root: Path) -> Definitions:
    errors: list[str] = []
    defs = Definitions(root=root)
    pool_src: dict[str, Source] = {}
    inv_src: dict[tuple[str, str], Source] = {}
    for f in _files(root):
        shown = str(f)
        text = _read(f, shown, errors)
        if text is None:
            continue
        parsed = _parse(text, shown, errors)
        if parsed is None:
            continue
        data, src = parsed
        if not isinstance(data, dict):
            errors.append(src.at((), "a definition file must be a mapping (pool: ... or servers:/switches:/storage:)"))
            continue
        if "pool" in data:
            pf = _validate(PoolFile, data, src, errors)
            if pf is None:
                continue
            if pf.pool in defs.pools:
                errors.append(src.at(("pool",), f"pool {pf.pool!r} is also defined in {pool_src[pf.pool].file}"))
                continue
            defs.pools[pf.pool] = pf
            pool_src[pf.pool] = src
            for name, p in pf.personas.items():
                if name in defs.personas:
                    errors.append(src.at(("personas", name), f"persona {name!r} is defined twice"))
                    continue
                defs.personas[name] = PersonaDef(name, pf.pool, p)
            inv: InventoryFile | None = pf
        else:
            inv = _validate(InventoryFile, data, src, errors)
        if inv is not None:
            for kind, table in (("servers", inv.servers), ("switches", inv.switches), ("storage", inv.storage)):
                target: dict[str, Any] = getattr(defs, kind)
                for name, obj in table.items():
                    if name in target:
                        errors.append(src.at((kind, name), f"{kind} entry {name!r} is defined twice "
                                                           f"(also in {inv_src[(kind, name)].file})"))
                        continue
                    target[name] = obj
                    inv_src[(kind, name)] = src
    errors.extend(_cross_checks(defs, pool_src, inv_src))
    if errors:
        raise DefinitionError(errors)
    return defs


def _lifecycle_checks(pool: PoolFile, src: Source, production: dict[int, str]) -> list[str]:
    errs = []
    rh = pool.rehearsal
    if rh.vlan is not None and rh.vlan in production:
        errs.append(src.at(("rehearsal", "vlan"), f"rehearsal VLAN {rh.vlan} is {production[rh.vlan]}: a rehearsal "
                                                  "must be isolated from every production VLAN"))
    if (rh.every is not None or rh.on) and rh.vlan is None:
        errs.append(src.at(("rehearsal",), "rehearsals need an isolated VLAN (rehearsal.vlan)"))
    for i, m in enumerate(rh.on):
        if m not in pool.members:
            errs.append(src.at(("rehearsal", "on", i), f"{m!r} is not a member of pool {pool.pool}"))
    return errs


def _cross_checks(defs: Definitions, pool_src: dict[str, Source], inv_src: dict[tuple[str, str], Source]) -> list[str]:
    errs: list[str] = []
    # Cabling: a switch port carries one server channel, and its name must fit the switch's OS.
    seen_ports: dict[tuple[str, str], str] = {}
    for sname, srv in defs.servers.items():
        src = inv_src[("servers", sname)]
        for ch, cable in srv.channels.items():
            path = ("servers", sname, "channels", ch)
            sw = defs.switches.get(cable.switch)
            if sw is None:
                errs.append(src.at(path + ("switch",), f"unknown switch {cable.switch!r}"))
                continue
            if not valid_port(sw.os, cable.port):
                errs.append(src.at(path + ("port",), f"port {cable.port!r} is not a valid {sw.os} port name "
                                                     f"on switch {cable.switch}"))
            other = seen_ports.get((cable.switch, cable.port))
            if other:
                errs.append(src.at(path + ("port",), f"{cable.switch} {cable.port} is already cabled to {other}"))
            seen_ports[(cable.switch, cable.port)] = f"{sname} channel {ch}"
    initiators: dict[str, str] = {}
    addresses: dict[ipaddress.IPv4Address, str] = {}
    production: dict[int, str] = {}
    for pname, pool in defs.pools.items():
        production.update({n.vlan: f"network {k} of pool {pname}" for k, n in pool.networks.items()})
        production.setdefault(pool.quarantine_vlan, f"the quarantine VLAN of pool {pname}")
    for pname, pool in defs.pools.items():
        src = pool_src[pname]
        errs.extend(_lifecycle_checks(pool, src, production))
        vlans = {n.vlan: k for k, n in pool.networks.items()}
        if pool.quarantine_vlan in vlans:
            errs.append(src.at(("quarantine_vlan",), f"quarantine VLAN {pool.quarantine_vlan} is also network "
                                                     f"{vlans[pool.quarantine_vlan]!r}"))
        needed = {ch for n in pool.networks.values() for ch in (n.primary, n.secondary) if ch is not None}
        for i, m in enumerate(pool.members):
            member = defs.servers.get(m)
            if member is None:
                errs.append(src.at(("members", i), f"unknown server {m!r}"))
                continue
            if m in defs.server_pool:
                errs.append(src.at(("members", i), f"server {m!r} is already a member of pool {defs.server_pool[m]!r}"))
                continue
            defs.server_pool[m] = pname
            for ch in sorted(needed - set(member.channels)):
                nets = [k for k, n in pool.networks.items() if ch in (n.primary, n.secondary)]
                errs.append(src.at(("members", i), f"server {m} has no channel {ch}, which network(s) "
                                                   f"{', '.join(nets)} of this pool use"))
        for i, m in enumerate(pool.standby_preference):
            if m not in pool.members:
                errs.append(src.at(("standby_preference", i), f"{m!r} is not a member of pool {pname}"))
        homes: dict[str, str] = {}
        for name, p in pool.personas.items():
            base = ("personas", name)
            if p.home not in pool.members:
                errs.append(src.at(base + ("home",), f"home server {p.home!r} is not a member of pool {pname}"))
            elif p.home in homes:
                errs.append(src.at(base + ("home",), f"server {p.home} is already home of persona {homes[p.home]}"))
            homes[p.home] = name
            if p.storage not in defs.storage:
                errs.append(src.at(base + ("storage",), f"unknown storage {p.storage!r}"))
            if p.initiator in initiators:
                errs.append(src.at(base + ("initiator",), f"initiator {p.initiator} is also used by persona "
                                                          f"{initiators[p.initiator]}"))
            initiators[p.initiator] = name
            if is_rehearsal_initiator(p.initiator):
                errs.append(src.at(base + ("initiator",), "an initiator name ending in -rehearsal is reserved for "
                                                          "rehearsals of a persona"))
            for i, h in enumerate(p.recovery):
                if h.hook != "dns-update":
                    continue
                for j, r in enumerate(h.records):
                    for ph in dns_placeholders(r.name) + dns_placeholders(r.value):
                        if ph.startswith("address:") and ph[8:] not in p.addresses:
                            errs.append(src.at(base + ("recovery", i, "records", j),
                                               f"{{{ph}}}: persona {name} has no address on network {ph[8:]!r}"))
            if pool.scn not in p.addresses:
                errs.append(src.at(base + ("addresses",), f"no address on the SCN network {pool.scn!r} "
                                                          f"(heartbeats travel there)"))
            for net, addr in p.addresses.items():
                n = pool.networks.get(net)
                apath = base + ("addresses", net)
                if n is None:
                    errs.append(src.at(apath, f"network {net!r} is not defined in pool {pname}"))
                    continue
                if addr not in n.subnet:
                    errs.append(src.at(apath, f"{addr} is outside {net} subnet {n.subnet}"))
                if addr in addresses:
                    errs.append(src.at(apath, f"address {addr} is also used by {addresses[addr]}"))
                addresses[addr] = f"persona {name}"
        standbys = [m for m in pool.members if m not in homes and m in defs.servers]
        if not standbys:
            defs.warnings.append(f"{src.file}: pool {pname} has no standby server: a failure cannot be absorbed")
        else:
            for name, p in pool.personas.items():
                if not any(p.qualification.met_by(defs.servers[s]) for s in standbys):
                    errs.append(src.at(("personas", name, "qualification"),
                                       f"no standby of pool {pname} ({', '.join(standbys)}) meets this qualification"))
    for sname in defs.servers:
        if sname not in defs.server_pool:
            defs.warnings.append(f"{inv_src[('servers', sname)].file}: server {sname} is in no pool")
    return errs
