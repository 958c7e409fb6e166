"""The words of DESIGN.md as typed, validated models.

Two kinds of definition file live under ``personas/``: a *pool file* (has ``pool:``) with the pool's
networks, members and personas, and an *inventory file* with ``servers``, ``switches`` and
``storage``. Per-file shape is checked here by pydantic; rules that span files (a persona's home in
its pool, cabling of every channel a network needs, unique initiators) live in ``aimctl.loader``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from aimctl import netos, redfish_vendors
from aimctl.validation import HOSTNAME_RE, IQN_RE, NAME_RE, valid_vlan

# ---------------------------------------------------------------------------- scalar types

_DURATION_RE = re.compile(r"^\s*(\d{1,9}(?:\.\d{1,9})?)\s*(ms|s|m|h|d)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION_S = 366 * 86400.0
# The same rule for editors (JSON Schema patterns are ECMA-262: no \Z, no inline flags).
DURATION_PATTERN = r"^\s*(?=[0-9.]*[1-9])[0-9]{1,9}(\.[0-9]{1,9})?\s*(ms|s|m|h|d)\s*$"


def parse_duration(value: object) -> float:
    """``"20m"`` → 1200.0. Bare numbers are refused: a unit-less timer is a classic 3 a.m. mistake;
    so is a zero one (a timer of 0 fires at once: a boot timer of 0s fences every standby it boots)."""
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
            if seconds <= 0:
                raise ValueError(f"duration {value!r} must be more than 0")
            if seconds > MAX_DURATION_S:
                raise ValueError(f"duration {value!r} is longer than a year (a typo?)")
            return seconds
    raise ValueError(f"not a duration: {value!r} (write e.g. 90s, 20m, 1h)")


Duration = Annotated[float, BeforeValidator(parse_duration),
                     WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN,
                                     "description": "a duration with its unit: 90s, 20m, 1h, 500ms, 2d (more than 0)"})]


def _text_of(kind: str) -> Any:
    """IP addresses and networks are written as strings; an integer is not an address (strict input)."""
    def check(value: object) -> object:
        if not isinstance(value, str):
            raise ValueError(f"{kind} must be written as a string, got {type(value).__name__} {value!r}")
        return value
    return check


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def _parse_ipv4(value: object) -> object:
    # Built from its integer: ipaddress's own parser costs ~30 us an address, most of validating a
    # 10,000-persona tree; anything the pattern does not take goes to it for its error message.
    if isinstance(value, str):
        m = _IPV4_RE.fullmatch(value)
        if m:
            a, b, c, d = (int(x) for x in m.groups())
            return ipaddress.IPv4Address((a << 24) | (b << 16) | (c << 8) | d)
        return ipaddress.IPv4Address(value)
    return value


def _parse_ipv4_net(value: object) -> object:
    return ipaddress.IPv4Network(value) if isinstance(value, str) else value


Ipv4 = Annotated[ipaddress.IPv4Address, BeforeValidator(_parse_ipv4), BeforeValidator(_text_of("an IPv4 address")),
                 WithJsonSchema({"type": "string", "format": "ipv4"})]
Ipv4Net = Annotated[ipaddress.IPv4Network, BeforeValidator(_parse_ipv4_net),
                    BeforeValidator(_text_of("an IPv4 subnet")),
                    WithJsonSchema({"type": "string", "pattern": r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$"})]


def _check_secret_ref(value: str) -> str:
    if not (value.startswith("env:") or value.startswith("file:")) or len(value) < 5:
        raise ValueError("inline secret: secrets must be references (env:NAME or file:PATH), never values")
    if value.startswith("env:") and not re.fullmatch(r"env:[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError("bad env reference (want env:NAME with letters, digits, _)")
    return value


SecretRef = Annotated[str, AfterValidator(_check_secret_ref),
                     WithJsonSchema({"type": "string", "pattern": r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$",
                                     "description": "a secret reference: env:NAME or file:PATH, never a value"})]


def _check_iqn(value: str) -> str:
    if not IQN_RE.match(value):
        raise ValueError(f"not an iSCSI qualified name in RFC 3720 form (iqn.YYYY-MM.reversed.domain[:id]): {value!r}")
    return value


Iqn = Annotated[str, AfterValidator(_check_iqn),
               WithJsonSchema({"type": "string", "pattern": r"^iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9.:_-]+$"})]


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"bad name {value!r}: lower-case letters, digits and '-', starting with a letter")
    return value


NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"
Name = Annotated[str, AfterValidator(_check_name), WithJsonSchema({"type": "string", "pattern": NAME_PATTERN})]


def _check_host(value: str) -> str:
    if _IPV4_RE.fullmatch(value):
        return value
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
            return value
        except ValueError:
            pass
    if not HOSTNAME_RE.match(value):
        raise ValueError(f"not a host name or IP address: {value!r}")
    return value


Host = Annotated[str, AfterValidator(_check_host),
                WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 253,
                                "description": "a host name or an IP address"})]


def _check_vlan(value: int) -> int:
    if not valid_vlan(value):
        raise ValueError(f"VLAN {value} out of range 1-4094")
    return value


Vlan = Annotated[int, AfterValidator(_check_vlan), WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 4094})]
Channel = Annotated[int, Field(ge=1, le=64)]
# Entries of one kind in one file (servers, personas...): beyond any real pool, far below a bomb.
MAX_ENTRIES = 100_000
PsName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]  # Rust regex: $ is end of text


def at_most(n: int, what: str) -> Any:
    """A size cap checked *before* the items are: pydantic checks a dict's length only after
    validating every item, so a million bad entries would cost a million errors in memory."""
    def check(value: object) -> object:
        if isinstance(value, (dict, list)) and len(value) > n:
            raise ValueError(f"{len(value):,} {what}: at most {n:,} are allowed")
        return value
    return BeforeValidator(check)


def Capped(n: int, what: str) -> Any:  # noqa: N802 - reads as a type annotation
    return (Field(max_length=n), at_most(n, what))


class Strict(BaseModel):
    # extra="forbid" is what turns a typo ("boot_timmer") into an error instead of a silent default.
    # strict: values are taken as written, never coerced: `vlan: true` is not VLAN 1, `lun: "1"` is
    # not 1 and `tls: "no"` is not false.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---------------------------------------------------------------------------- inventory


class Credentials(Strict):
    username: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
    password: SecretRef
    enable: SecretRef | None = None


def _row_of(what: str, names: Callable[[], list[str]], where: Callable[[], object]) -> Callable[[str], str]:
    """A check that a value names a row of a data table (read when checked: the table may change)."""
    def check(value: str) -> str:
        known = names()
        if value not in known:
            raise ValueError(f"unknown {what} {value!r} (rows of {where()}: {', '.join(known)})")
        return value
    return check


def _enum_of(schema: Callable[[], dict[str, Any]]) -> Any:
    return Field(json_schema_extra=lambda s: s.update(schema()))


# A row of bootcfg/redfish_vendors.json.
RedfishVendor = Annotated[str, AfterValidator(_row_of("Redfish vendor", redfish_vendors.names,
                                                      lambda: "bootcfg/redfish_vendors.json")),
                          _enum_of(redfish_vendors.schema_enum)]
AbsPath = Annotated[str, StringConstraints(pattern=r"^/[^\x00\n]{1,4095}$")]


class Bmc(Strict):
    kind: Literal["redfish", "ipmi"]
    address: Host
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    credentials: Credentials
    system_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")] | None = None
    # Redfish over HTTPS (false: plain HTTP, said explicitly). The certificate is verified against
    # the system's CAs, or against ``ca_file`` (a private CA, or a BMC's own self-signed
    # certificate); ``verify_tls: false`` is the explicit, per-BMC opt-out.
    tls: bool = True
    verify_tls: bool = True
    ca_file: AbsPath | None = None
    # The row of bootcfg/redfish_vendors.json for this BMC; default: chosen from the BMC's
    # Manufacturer/Model when the boot config is first used.
    vendor: RedfishVendor | None = None

    @model_validator(mode="after")
    def _tls_consistent(self) -> Bmc:
        if self.kind != "redfish":
            extra = [f for f in ("ca_file", "vendor", "verify_tls") if f in self.model_fields_set]
            if extra:
                raise ValueError(f"{', '.join(extra)}: only for Redfish BMCs")
        why = self.tls_problem()
        if why:
            raise ValueError(why)
        return self

    def tls_problem(self) -> str | None:
        """Why the TLS settings contradict each other, or None (checked again after an overlay)."""
        if self.ca_file is not None and not self.verify_tls:
            return ("ca_file and verify_tls: false contradict each other (verify against the CA, or opt out "
                    "of verification)")
        if not self.tls and (self.ca_file is not None or not self.verify_tls):
            return "ca_file/verify_tls need tls: true (plain HTTP has no certificate)"
        return None

    def verify(self) -> bool | str:
        """What the HTTPS client checks the certificate against (requests' ``verify``)."""
        if not self.verify_tls:
            return False
        return self.ca_file or True


class Cable(Strict):
    switch: Name
    port: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    ifindex: Annotated[int, Field(ge=1)] | None = None  # when the switch numbers differently from its OS rule


class Server(Strict):
    bmc: Bmc
    model: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    cores: Annotated[int, Field(ge=1)]
    memory_gb: Annotated[int, Field(ge=1)]
    boot_nic: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    channels: Annotated[dict[Channel, Cable], *Capped(64, "channels")]


# The keys of switch_templates/os.yaml: adding an OS there makes it a valid `os:` here.
NetworkOs = Annotated[str, AfterValidator(_row_of("network OS", netos.names,
                                                  netos.table_name)),
                      _enum_of(netos.schema_enum)]


class Switch(Strict):
    os: NetworkOs
    address: Host
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    credentials: Credentials


class Storage(Strict):
    kind: Literal["tgt"]
    portal: Host
    port: Annotated[int, Field(ge=1, le=65535)] = 3260
    # How the controller reaches the target's management: "local" runs tgtadm here, an ssh:// URL runs it there.
    management: Annotated[str, StringConstraints(pattern=r"^(local|ssh://[A-Za-z0-9_.-]+@[A-Za-z0-9.-]+(:\d+)?)$")] = "local"
    credentials: Credentials | None = None
    # A tgtd listening on a non-default control socket (TGT_IPC_SOCKET); local management only.
    control_socket: Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9_./-]{1,200}$")] | None = None


class InventoryFile(Strict):
    servers: Annotated[dict[Name, Server], *Capped(MAX_ENTRIES, "servers")] = Field(default_factory=dict)
    switches: Annotated[dict[Name, Switch], *Capped(MAX_ENTRIES, "switches")] = Field(default_factory=dict)
    storage: Annotated[dict[Name, Storage], *Capped(MAX_ENTRIES, "storage entries")] = Field(default_factory=dict)


# ---------------------------------------------------------------------------- pools and personas


class Network(Strict):
    vlan: Vlan
    subnet: Ipv4Net
    primary: Channel
    secondary: Channel | None = None
    mode: Literal["trunk", "access"] = "trunk"

    @model_validator(mode="after")
    def _distinct_channels(self) -> Network:
        if self.secondary is not None and self.secondary == self.primary:
            raise ValueError("secondary channel must differ from primary")
        return self


class Lun(Strict):
    target: Iqn
    lun: Annotated[int, Field(ge=0, le=255)]


class Qualification(Strict):
    models: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=64)]], Field(max_length=64)] = Field(default_factory=list)
    min_cores: Annotated[int, Field(ge=0)] = 0
    min_memory_gb: Annotated[int, Field(ge=0)] = 0

    def met_by(self, server: Server) -> bool:
        return (
            (not self.models or server.model in self.models)
            and server.cores >= self.min_cores
            and server.memory_gb >= self.min_memory_gb
        )


HookPoint = Literal["pre-fence", "post-boot", "post-recovery", "pre-failback"]
SshUrl = Annotated[str, StringConstraints(pattern=r"^ssh://[A-Za-z0-9_.-]+@[A-Za-z0-9.-]+(:\d{1,5})?$")]


class _Hook(Strict):
    point: HookPoint = "post-boot"
    timeout: Duration = 600.0
    retries: Annotated[int, Field(ge=0, le=10)] = 0


class ExchangeDagHook(_Hook):
    hook: Literal["exchange-dag"]
    dag: PsName
    server: PsName  # the Exchange server name of this persona (e.g. EXCH1), not the persona name
    via: SshUrl
    credentials: SecretRef
    poll: Duration = 2.0  # how often copy status is read while waiting for healthy copies
    # "known-hosts" (the controller's ~/.ssh/known_hosts), a pinned "SHA256:..." fingerprint, or "auto" (lab only).
    host_key: Annotated[str, StringConstraints(pattern=r"^(auto|known-hosts|SHA256:[A-Za-z0-9+/]{43}=?)$")] = "known-hosts"


class SshCommandHook(_Hook):
    hook: Literal["ssh-command"]
    via: SshUrl
    credentials: SecretRef
    host_key: Annotated[str, StringConstraints(pattern=r"^(auto|known-hosts|SHA256:[A-Za-z0-9+/]{43}=?)$")] = "known-hosts"
    command: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class ScriptHook(_Hook):
    hook: Literal["script"]
    path: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]{1,255}$")]
    args: Annotated[list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.=:/,@+-]{0,128}$")]],
                    Field(max_length=64)] = []


Hook = Annotated[ExchangeDagHook | SshCommandHook | ScriptHook, Field(discriminator="hook")]


class ServiceCheck(Strict):
    name: Name
    process: str | None = None
    tcp: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.-]+:\d{1,5}$")] | None = None
    command: str | None = None
    restart: str | None = None


class Persona(Strict):
    home: Name
    storage: Name
    initiator: Iqn
    boot: Lun
    data: Annotated[list[Lun], Field(max_length=64)] = Field(default_factory=list)
    addresses: Annotated[dict[Name, Ipv4], *Capped(64, "addresses")]
    boot_timer: Duration = 900.0
    policy: Literal["automatic", "manual"] = "automatic"
    confirm_timeout: Duration = 900.0
    on_confirm_timeout: Literal["proceed", "abort"] = "abort"
    qualification: Qualification = Field(default_factory=Qualification)
    heartbeat_key: SecretRef
    # The CHAP secret the persona's targets hold before the controller first rotates it.
    initial_chap: SecretRef | None = None
    services: Annotated[list[ServiceCheck], Field(max_length=64)] = Field(default_factory=list)
    recovery: Annotated[list[Hook], Field(max_length=32)] = Field(default_factory=list)


class Storm(Strict):
    max_concurrent: Annotated[int, Field(ge=1)] = 2
    pause_above_percent: Annotated[int, Field(ge=1, le=100)] = 50


class PoolFile(InventoryFile):
    """A pool; it may carry its own inventory (servers/switches/storage) in the same file."""

    pool: Name
    members: Annotated[list[Name], Field(min_length=1, max_length=MAX_ENTRIES)]
    standby_preference: Annotated[list[Name], Field(max_length=MAX_ENTRIES)] = Field(default_factory=list)
    quarantine_vlan: Vlan
    scn: Name = "scn"
    networks: Annotated[dict[Name, Network], *Capped(256, "networks")]
    personas: Annotated[dict[Name, Persona], *Capped(MAX_ENTRIES, "personas")] = Field(default_factory=dict)
    storm: Storm = Field(default_factory=Storm)
    max_retargets: Annotated[int, Field(ge=0, le=10)] = 2

    @model_validator(mode="after")
    def _scn_known(self) -> PoolFile:
        if self.scn not in self.networks:
            raise ValueError(f"scn network {self.scn!r} is not one of this pool's networks")
        return self


# ---------------------------------------------------------------------------- JSON Schema for editors


def _duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def _as_written(node: Any) -> None:
    """Make pydantic's schema describe the YAML as written: name-keyed maps as propertyNames (not
    patternProperties, which leave other keys free), duration defaults as duration strings."""
    if isinstance(node, dict):
        pp = node.get("patternProperties")
        if isinstance(pp, dict) and len(pp) == 1 and "additionalProperties" not in node:
            (pattern, value), = pp.items()
            del node["patternProperties"]
            node["propertyNames"] = {"pattern": pattern}
            node["additionalProperties"] = value
        if node.get("pattern") == DURATION_PATTERN and isinstance(node.get("default"), int | float):
            node["default"] = _duration_text(float(node["default"]))
        for value in node.values():
            _as_written(value)
    elif isinstance(node, list):
        for value in node:
            _as_written(value)


def definition_schema() -> dict[str, Any]:
    """The JSON Schema of one definition file (a pool file or an inventory file), as written in YAML.

    Network OS names and Redfish vendors are the rows of their tables at the time of export.
    """
    from pydantic import TypeAdapter

    doc: dict[str, Any] = TypeAdapter(PoolFile | InventoryFile).json_schema(mode="validation")
    _as_written(doc)
    defs = doc["$defs"]
    defs["Server"]["properties"]["channels"]["propertyNames"] = {"pattern": "^([1-9]|[1-5][0-9]|6[0-4])$"}
    defs["InventoryFile"]["minProperties"] = 1
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "aimctl definition file (a pool file or an inventory file)", **doc}
