"""Load ``personas/``: every problem at once (up to a cap), each as ``FILE:LINE:COL: field.path: message``.

Speed matters at 10,000 personas, and so does a bad tree: the files are found and read within
limits (``aimctl.definition_files``), parsed by a native YAML parser with bounded alias expansion
(``aimctl.yaml_source``), validated by pydantic, then checked across files here. Positions are
worked out only for the problems that are shown.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from aimctl import definition_cache, netos, redfish_vendors
from aimctl.definition_files import EMPTY, LIMITS, DefinitionFile, Limits, collect, text_of
from aimctl.errors import DefinitionError
from aimctl.model import (
    MAX_ENTRIES,
    InventoryFile,
    Name,
    Persona,
    PoolFile,
    Server,
    Storage,
    Switch,
    dns_placeholders,
)
from aimctl.validation import is_rehearsal_initiator
from aimctl.yaml_source import Problems, Source, parse

__all__ = ["LIMITS", "Definitions", "Limits", "PersonaDef", "Source", "load", "load_for_persona", "read_mapping",
           "validation_problems"]

CACHE_VERSION = "2"
INVENTORY_KEYS = ("servers", "switches", "storage")


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


# ---------------------------------------------------------------------------- one file


def validation_problems(exc: ValidationError, data: Any, src: Source, problems: Problems,
                        prefix: tuple[Any, ...] = ()) -> None:
    """pydantic's errors as positioned problems; past the cap they are only counted.

    ``data`` is what was validated, found at ``prefix`` in the file.
    """
    if problems.full:
        problems.skipped(exc.error_count())
        return
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    for n, err in enumerate(errors):
        if problems.full:
            problems.skipped(len(errors) - n)
            return
        # Drop loc parts that are not keys in the data (union tags, "function-after"...).
        path: list[Any] = list(prefix)
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
        problems.add(src, tuple(path), msg)


# The big tables of a file are validated a chunk of entries at a time: the errors of a hundred
# thousand bad entries are never held at once (pydantic keeps every error of one validation in
# memory), and once the cap of shown problems is reached the rest are only counted.
_CHUNK = 256
_ENTRY_TABLES: dict[str, TypeAdapter[Any]] = {
    "servers": TypeAdapter(dict[Name, Server]),
    "switches": TypeAdapter(dict[Name, Switch]),
    "storage": TypeAdapter(dict[Name, Storage]),
    "personas": TypeAdapter(dict[Name, Persona]),
}


def _validate(model: type[BaseModel], data: dict[Any, Any], src: Source, problems: Problems) -> Any:
    shell = dict(data)
    before = problems.count
    for key, adapter in _ENTRY_TABLES.items():
        entries = data.get(key)
        if key not in model.model_fields or not isinstance(entries, dict) or len(entries) > MAX_ENTRIES:
            continue  # the model says what is wrong with the table as a whole
        good: dict[Any, Any] = {}
        items = list(entries.items())
        for i in range(0, len(items), _CHUNK):
            chunk = dict(items[i:i + _CHUNK])
            try:
                good.update(adapter.validate_python(chunk))
            except ValidationError as exc:
                validation_problems(exc, chunk, src, problems, (key,))
        shell[key] = good
    try:
        result = model.model_validate(shell)
    except ValidationError as exc:
        validation_problems(exc, shell, src, problems)
        return None
    return result if problems.count == before else None


def _mapping(f: DefinitionFile, problems: Problems, limits: Limits = LIMITS,
             empty_ok: bool = False) -> tuple[dict[Any, Any], Source] | None:
    text = text_of(f, limits, problems)
    parsed = parse(text, f.shown, problems) if text is not None else None
    if parsed is None:
        return None
    data, src = parsed
    if empty_ok and data is None:
        return {}, src
    if data is None or data == {}:
        problems.add_at(f.shown, EMPTY)
        return None
    if not isinstance(data, dict):
        problems.add(src, (), "a definition file must be one mapping (pool: ... or servers:/switches:/storage:)")
        return None
    return data, src


def read_mapping(path: Path, limits: Limits = LIMITS) -> tuple[dict[Any, Any], Source]:
    """One YAML mapping file (an overlay, say) with the loader's limits; DefinitionError otherwise."""
    problems = Problems(limits.max_problems)
    got = _mapping(DefinitionFile(path, str(path), b""), problems, limits, empty_ok=True)
    if got is None:
        raise problems.error()
    return got


# ---------------------------------------------------------------------------- the tree


def _load(root: Path, files: list[DefinitionFile], problems: Problems, limits: Limits) -> Definitions:
    defs = Definitions(root=root)
    pool_src: dict[str, Source] = {}
    inv_src: dict[tuple[str, str], Source] = {}
    for f in files:
        got = _mapping(f, problems, limits)
        if got is None:
            continue
        data, src = got
        if "pool" in data:
            pf = _validate(PoolFile, data, src, problems)
            if pf is None:
                continue
            if pf.pool in defs.pools:
                problems.add(src, ("pool",), f"pool {pf.pool!r} is also defined in {pool_src[pf.pool].file}")
                continue
            defs.pools[pf.pool] = pf
            pool_src[pf.pool] = src
            for name, p in pf.personas.items():
                if name in defs.personas:
                    problems.add(src, ("personas", name), f"persona {name!r} is defined twice")
                    continue
                defs.personas[name] = PersonaDef(name, pf.pool, p)
            inv: InventoryFile | None = pf
        else:
            inv = _validate(InventoryFile, data, src, problems)
        if inv is not None:
            for kind, table in (("servers", inv.servers), ("switches", inv.switches), ("storage", inv.storage)):
                target: dict[str, Any] = getattr(defs, kind)
                for name, obj in table.items():
                    if name in target:
                        problems.add(src, (kind, name), f"{kind} entry {name!r} is defined twice "
                                                        f"(also in {inv_src[(kind, name)].file})")
                        continue
                    target[name] = obj
                    inv_src[(kind, name)] = src
    _cross_checks(defs, pool_src, inv_src, problems)
    if problems:
        raise problems.error()
    return defs


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


# A cache made by other model code, or against other OS/vendor tables, must never be served.
_CODE_KEY = hashlib.sha256(b"".join(Path(__file__).with_name(n).read_bytes() for n in (
    "model.py", "loader.py", "validation.py", "netos.py", "redfish_vendors.py", "yaml_source.py",
    "definition_files.py"))).digest()


def _content_key(files: list[DefinitionFile]) -> str:
    h = hashlib.sha256(CACHE_VERSION.encode() + _CODE_KEY)
    h.update(netos.table_bytes() + b"\0" + redfish_vendors.table_bytes() + b"\0")
    for f in files:
        h.update(f.shown.encode() + b"\0" + f.digest)
    return h.hexdigest()


def _read_tree(root: Path, limits: Limits, digests: bool) -> tuple[list[DefinitionFile], Problems]:
    problems = Problems(limits.max_problems)
    files = collect(root, limits, problems, digests)
    return files, problems


def load(root: Path | str, use_cache: bool = False, limits: Limits = LIMITS) -> Definitions:
    """Load and validate every definition under ``root``; raise DefinitionError listing the problems.

    With ``use_cache`` (the operator's CLI), a tree that validated before is served from the
    per-user cache keyed by the content of all files (``aimctl.definition_cache``): asking again
    after no change costs a read and a hash of the files, not a validation. The controller never
    asks for the cache.
    """
    root = Path(root)
    files, problems = _read_tree(root, limits, digests=use_cache)
    if problems:
        # Listing problems first, then what the files that could be read say, so one run shows
        # everything (not when the tree is refused for its sheer number of files).
        if len(files) <= limits.max_files:
            _load_quiet(root, files, problems, limits)
        raise problems.error()
    if not use_cache:
        return _load(root, files, problems, limits)
    key = _content_key(files)
    defs = definition_cache.read(key, "full.pickle")
    if isinstance(defs, Definitions):
        defs.root = root
        return defs
    return _load_and_cache(root, files, problems, key, limits)


def _load_and_cache(root: Path, files: list[DefinitionFile], problems: Problems, key: str,
                    limits: Limits) -> Definitions:
    defs = _load(root, files, problems, limits)
    cached: dict[str, Any] = {f"pool-{pool}.pickle": _pool_slice(defs, pool) for pool in defs.pools}
    cached["index.pickle"] = {n: x.pool for n, x in defs.personas.items()}
    cached["full.pickle"] = defs
    definition_cache.write(key, cached)
    return defs


def _load_quiet(root: Path, files: list[DefinitionFile], problems: Problems, limits: Limits) -> None:
    try:
        _load(root, files, problems, limits)
    except DefinitionError:
        pass


def load_for_persona(root: Path | str, persona: str, limits: Limits = LIMITS) -> Definitions:
    """The validated definitions of ``persona``'s pool only (for planning one persona fast).

    Served from the cache only when the whole tree validated before; otherwise a full load.
    """
    root = Path(root)
    files, problems = _read_tree(root, limits, digests=True)
    if problems:
        return load(root, limits=limits)  # says what is wrong
    key = _content_key(files)
    index = definition_cache.read(key, "index.pickle")
    if isinstance(index, dict) and persona in index:
        part = definition_cache.read(key, f"pool-{index[persona]}.pickle")
        if isinstance(part, Definitions):
            part.root = root
            return part
    return _load_and_cache(root, files, problems, key, limits)


def _lifecycle_checks(pool: PoolFile, src: Source, production: dict[int, str], problems: Problems) -> None:
    rh = pool.rehearsal
    if rh.vlan is not None and rh.vlan in production:
        problems.add(src, ("rehearsal", "vlan"), f"rehearsal VLAN {rh.vlan} is {production[rh.vlan]}: a rehearsal "
                                                 "must be isolated from every production VLAN")
    if (rh.every is not None or rh.on) and rh.vlan is None:
        problems.add(src, ("rehearsal",), "rehearsals need an isolated VLAN (rehearsal.vlan)")
    for i, m in enumerate(rh.on):
        if m not in pool.members:
            problems.add(src, ("rehearsal", "on", i), f"{m!r} is not a member of pool {pool.pool}")


def _cross_checks(defs: Definitions, pool_src: dict[str, Source], inv_src: dict[tuple[str, str], Source],
                  problems: Problems) -> None:
    # Cabling: a switch port carries one server channel, and its name must fit the switch's OS.
    # (switch, port) / (switch, ifIndex) -> (server, channel); named only when a problem is shown
    seen_ports: dict[tuple[str, str], tuple[str, int]] = {}
    seen_ifindex: dict[str, set[int]] = {}  # per switch: small ints, no per-port objects at 10,000 personas
    os_rows = netos.table()
    for sname, srv in defs.servers.items():
        src = inv_src[("servers", sname)]
        for ch, cable in srv.channels.items():
            path = ("servers", sname, "channels", ch)
            sw = defs.switches.get(cable.switch)
            if sw is None:
                problems.add(src, path + ("switch",), f"unknown switch {cable.switch!r}")
                continue
            row = os_rows.get(sw.os)
            other = seen_ports.get((cable.switch, cable.port))
            if row is None or not row.valid_port(cable.port):
                problems.add(src, path + ("port",), f"port {cable.port!r} is not a valid {sw.os} port name "
                                                     f"on switch {cable.switch}")
            elif not other:
                # SNMP traps name a port by ifIndex only: each cabled port needs one, unique per switch.
                try:
                    index = cable.ifindex or row.ifindex(cable.port)
                except ValueError:
                    problems.add(src, path + ("port",), f"no ifIndex rule of {sw.os} numbers port {cable.port!r}: "
                                                         "set ifindex: on this cable (traps name ports by ifIndex)")
                else:
                    indexes = seen_ifindex.setdefault(cable.switch, set())
                    if index in indexes:
                        twin = _ifindex_owner(defs, os_rows, cable.switch, index)
                        problems.add(src, path + ("port",), f"{cable.switch} ifIndex {index} is also {twin}'s: "
                                                             "a link trap could not tell them apart")
                    indexes.add(index)
            if other:
                problems.add(src, path + ("port",), f"{cable.switch} {cable.port} is already cabled to "
                                                     f"{other[0]} channel {other[1]}")
            seen_ports[(cable.switch, cable.port)] = (sname, ch)
    initiators: dict[str, str] = {}
    addresses: dict[ipaddress.IPv4Address, str] = {}
    production: dict[int, str] = {}
    for pname, pool in defs.pools.items():
        production.update({n.vlan: f"network {k} of pool {pname}" for k, n in pool.networks.items()})
        production.setdefault(pool.quarantine_vlan, f"the quarantine VLAN of pool {pname}")
    for pname, pool in defs.pools.items():
        src = pool_src[pname]
        _lifecycle_checks(pool, src, production, problems)
        vlans = {n.vlan: k for k, n in pool.networks.items()}
        if pool.quarantine_vlan in vlans:
            problems.add(src, ("quarantine_vlan",), f"quarantine VLAN {pool.quarantine_vlan} is also network "
                                                     f"{vlans[pool.quarantine_vlan]!r}")
        needed = {ch for n in pool.networks.values() for ch in (n.primary, n.secondary) if ch is not None}
        for i, m in enumerate(pool.members):
            member = defs.servers.get(m)
            if member is None:
                problems.add(src, ("members", i), f"unknown server {m!r}")
                continue
            if m in defs.server_pool:
                problems.add(src, ("members", i), f"server {m!r} is already a member of pool {defs.server_pool[m]!r}")
                continue
            defs.server_pool[m] = pname
            for ch in sorted(needed - set(member.channels)):
                nets = [k for k, n in pool.networks.items() if ch in (n.primary, n.secondary)]
                problems.add(src, ("members", i), f"server {m} has no channel {ch}, which network(s) "
                                                   f"{', '.join(nets)} of this pool use")
        _vlans_fit_switches(defs, pname, pool, src, problems)
        for i, m in enumerate(pool.standby_preference):
            if m not in pool.members:
                problems.add(src, ("standby_preference", i), f"{m!r} is not a member of pool {pname}")
        homes: dict[str, str] = {}
        for name, p in pool.personas.items():
            base = ("personas", name)
            if p.home not in pool.members:
                problems.add(src, base + ("home",), f"home server {p.home!r} is not a member of pool {pname}")
            elif p.home in homes:
                problems.add(src, base + ("home",), f"server {p.home} is already home of persona {homes[p.home]}")
            homes[p.home] = name
            if p.storage not in defs.storage:
                problems.add(src, base + ("storage",), f"unknown storage {p.storage!r}")
            if p.initiator in initiators:
                problems.add(src, base + ("initiator",), f"initiator {p.initiator} is also used by persona "
                                                          f"{initiators[p.initiator]}")
            initiators[p.initiator] = name
            if is_rehearsal_initiator(p.initiator):
                problems.add(src, base + ("initiator",), "an initiator name ending in -rehearsal is reserved for "
                                                         "rehearsals of a persona")
            for i, h in enumerate(p.recovery):
                if h.hook != "dns-update":
                    continue
                for j, r in enumerate(h.records):
                    for ph in dns_placeholders(r.name) + dns_placeholders(r.value):
                        if ph.startswith("address:") and ph[8:] not in p.addresses:
                            problems.add(src, base + ("recovery", i, "records", j),
                                         f"{{{ph}}}: persona {name} has no address on network {ph[8:]!r}")
            if pool.scn not in p.addresses:
                problems.add(src, base + ("addresses",), f"no address on the SCN network {pool.scn!r} "
                                                          f"(heartbeats travel there)")
            for net, addr in p.addresses.items():
                n = pool.networks.get(net)
                apath = base + ("addresses", net)
                if n is None:
                    problems.add(src, apath, f"network {net!r} is not defined in pool {pname}")
                    continue
                if addr not in n.subnet:
                    problems.add(src, apath, f"{addr} is outside {net} subnet {n.subnet}")
                if addr in addresses:
                    problems.add(src, apath, f"address {addr} is also used by {addresses[addr]}")
                addresses[addr] = f"persona {name}"
        standbys = [m for m in pool.members if m not in homes and m in defs.servers]
        if not standbys:
            defs.warnings.append(f"{src.file}: pool {pname} has no standby server: a failure cannot be absorbed")
        else:
            for name, p in pool.personas.items():
                if not any(p.qualification.met_by(defs.servers[s]) for s in standbys):
                    problems.add(src, ("personas", name, "qualification"),
                                       f"no standby of pool {pname} ({', '.join(standbys)}) meets this qualification")
    for sname in defs.servers:
        if sname not in defs.server_pool:
            defs.warnings.append(f"{inv_src[('servers', sname)].file}: server {sname} is in no pool")


def _vlans_fit_switches(defs: Definitions, pname: str, pool: PoolFile, src: Source, problems: Problems) -> None:
    """Every VLAN of the pool must be one each switch its members are cabled to can carry."""
    oses: dict[str, str] = {}  # OS name -> one switch of that OS, for the message
    for m in pool.members:
        for cable in getattr(defs.servers.get(m), "channels", {}).values():
            sw = defs.switches.get(cable.switch)
            if sw is not None:
                oses.setdefault(sw.os, cable.switch)
    rows = netos.table()
    wanted: list[tuple[tuple[str, ...], int]] = [(("networks", k, "vlan"), n.vlan) for k, n in pool.networks.items()]
    wanted.append((("quarantine_vlan",), pool.quarantine_vlan))
    for os_name, switch in sorted(oses.items()):
        row = rows.get(os_name)
        for path, vlan in wanted:
            why = row.vlan_problem(vlan) if row is not None else None
            if why:
                problems.add(src, path, f"{why} (switch {switch} of pool {pname})")


def _ifindex_owner(defs: Definitions, os_rows: dict[str, netos.NetOs], switch: str, index: int) -> str:
    """The first server channel cabled to ``switch`` at ``index`` (looked for only when two collide)."""
    for sname, srv in defs.servers.items():
        for ch, cable in srv.channels.items():
            row = os_rows.get(defs.switches[switch].os)
            if cable.switch == switch and row is not None and row.valid_port(cable.port):
                try:
                    if (cable.ifindex or row.ifindex(cable.port)) == index:
                        return f"{sname} channel {ch}"
                except ValueError:
                    continue
    return "another port"
