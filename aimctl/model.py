"""The words of DESIGN.md as typed, validated models.

Two kinds of definition file live under ``personas/``: a *pool file* (has ``pool:``) with the pool's
networks, members and personas, and an *inventory file* with ``servers``, ``switches`` and
``storage``. Per-file shape is checked here by pydantic; rules that span files (a persona's home in
its pool, cabling of every channel a network needs, unique initiators) live in ``aimctl.loader``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
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
from aimctl.core.durations import parse_duration
from aimctl.validation import (
    HOST_KEY_RE,
    HOSTNAME_RE,
    IQN_RE,
    NAME_RE,
    SSH_URL_RE,
    check_host_key,
    ssh_url_parts,
    valid_vlan,
)

# ---------------------------------------------------------------------------- scalar types

MAX_DURATION_S = 366 * 86400.0
# The rule for editors (JSON Schema patterns are ECMA-262): a unit, and not zero.
DURATION_PATTERN = r"^\s*(?=[0-9.]*[1-9])[0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d)\s*$"


PAUSE_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d)\s*$"


def definition_duration(value: object) -> float:
    """A timer, timeout or poll interval in a definition: written with its unit, more than 0, at most
    a year. A timer of 0 fires at once (a boot timer of 0s fences every standby it boots)."""
    seconds = definition_pause(value)
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be more than 0")
    return seconds


def definition_pause(value: object) -> float:
    """A wait that may be none (between retries): written with its unit, at most a year."""
    seconds = parse_duration(value)
    if seconds > MAX_DURATION_S:
        raise ValueError(f"duration {value!r} is longer than a year (a typo?)")
    return seconds


Duration = Annotated[float, BeforeValidator(definition_duration),
                     WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN,
                                     "description": "a duration with its unit: 90s, 20m, 1h, 500ms, 2d (more than 0)"})]
PositiveDuration = Duration  # every timer, timeout and poll interval in a definition is more than 0
Pause = Annotated[float, BeforeValidator(definition_pause),
                  WithJsonSchema({"type": "string", "pattern": PAUSE_PATTERN,
                                  "description": "a wait with its unit, 0s for none: 10s, 1m"})]


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

IpAddress = Annotated[ipaddress.IPv4Address | ipaddress.IPv6Address,
                      BeforeValidator(lambda v: ipaddress.ip_address(v) if isinstance(v, str) else v),
                      BeforeValidator(_text_of("an IP address")),
                      WithJsonSchema({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})]

# A file on the controller's own machine (TLS certificate, cluster key), written as a string.
LocalPath = Annotated[Path, BeforeValidator(lambda v: Path(v) if isinstance(v, str) and v else v),
                      BeforeValidator(_text_of("a file path")),
                      WithJsonSchema({"type": "string", "minLength": 1})]


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



_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")


def _check_mac(value: str) -> str:
    """A NIC MAC in any common spelling; kept as ``aa:bb:cc:dd:ee:ff`` so comparisons are plain."""
    v = value.strip().lower()
    if not _MAC_RE.match(v):
        raise ValueError(f"not a MAC address: {value!r} (write e.g. 52:54:00:aa:00:01)")
    digits = re.sub(r"[^0-9a-f]", "", v)
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


Mac = Annotated[str, AfterValidator(_check_mac)]
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


def _check_abs_path(value: str) -> str:
    if not re.fullmatch(r"/[A-Za-z0-9_.:+/-]{1,400}", value) or any(p in ("..", ".") for p in value.split("/")) \
            or "//" in value:
        raise ValueError(f"not an absolute path of [A-Za-z0-9_.:+/-] without '..': {value!r}")
    return value


# A checked function, not a pydantic pattern: a counted repetition that long compiles into a Rust
# regex of megabytes, paid by every process that imports the model.
AbsPath = Annotated[str, AfterValidator(_check_abs_path),
                    WithJsonSchema({"type": "string", "pattern": r"^/[A-Za-z0-9_.:+/-]{1,400}$"})]


def _check_ssh_url(value: str) -> str:
    ssh_url_parts(value)
    return value


def _editor_pattern(rx: re.Pattern[str]) -> Any:
    r"""The same pattern for JSON Schema validators, so `aimctl schema` shows editors the rule: group
    names dropped (ECMA writes them ``(?<n>``, Python ``(?P<n>``; validators use either engine) and
    ``\Z`` as ``$``."""
    return Field(json_schema_extra={"pattern": re.sub(r"\(\?P<[A-Za-z_]+>", "(", rx.pattern.replace(r"\Z", "$"))})


# ssh://user@host[:port] and known-hosts | SHA256:<fingerprint> | auto-add: validation's patterns.
SshUrl = Annotated[str, AfterValidator(_check_ssh_url), _editor_pattern(SSH_URL_RE)]
HostKey = Annotated[str, AfterValidator(check_host_key), _editor_pattern(HOST_KEY_RE)]


def _check_management(value: str) -> str:
    return value if value == "local" else _check_ssh_url(value)


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
    # The address the site's DHCP reserves for the boot NIC: the controller serves this server's iPXE
    # script (which carries a CHAP secret) to that address only.
    boot_address: IpAddress | None = None
    channels: Annotated[dict[Channel, Cable], *Capped(64, "channels")]
    # Blast radius: bodies sharing a rack (top-of-rack switch) or a PDU can die together.
    rack: Name | None = None
    pdu: Name | None = None
    # Declared NIC MACs, compared with what the BMC reports (a swapped board shows here first).
    nic_macs: Annotated[list[Mac], Field(max_length=64)] = Field(default_factory=list)


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
    management: Annotated[str, AfterValidator(_check_management)] = "local"
    credentials: Credentials | None = None
    host_key: HostKey = "known-hosts"  # of the ssh:// management host
    # A tgtd listening on a non-default control socket (TGT_IPC_SOCKET); local management only.
    control_socket: Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9_./-]{1,200}$")] | None = None
    # Where snapshots, gold images and clones live on the storage host. On the LUNs' filesystem a
    # snapshot shares their extents (xfs, btrfs: reflink) and the freeze lasts milliseconds.
    snapshot_dir: AbsPath = "/var/lib/aimctl/snapshots"


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


def _check_hook_command(value: str) -> str:
    if not value.strip() or "\x00" in value:
        raise ValueError("a hook command must be non-blank and without NUL")
    return value


class _Hook(Strict):
    """What every hook has. ``aimctl.recovery.hooks`` runs these classes as they are."""

    point: HookPoint = "post-boot"
    timeout: PositiveDuration = 600.0
    retries: Annotated[int, Field(ge=0, le=10)] = 0
    retry_wait: Pause = 10.0  # between attempts (0s: at once)


class ExchangeDagHook(_Hook):
    hook: Literal["exchange-dag"]
    dag: PsName
    server: PsName  # the Exchange server name of this persona (e.g. EXCH1), not the persona name
    via: SshUrl
    credentials: SecretRef
    # How often copy status is read while waiting for healthy copies. 15 s: each read is a
    # Get-MailboxDatabaseCopyStatus over the whole DAG through remote PowerShell on the management
    # host, which takes seconds and loads the very servers that are resynchronizing; copies take
    # minutes to catch up and the databases are already served by the other members, so a longer
    # interval costs at most one interval of rebalancing. (The model said 2 s and the hook runner
    # 15 s; 2 s was the one in force. Labs, whose copies resync in seconds, set it in their overlay.)
    poll: PositiveDuration = 15.0
    host_key: HostKey = "known-hosts"


class SshCommandHook(_Hook):
    hook: Literal["ssh-command"]
    via: SshUrl
    credentials: SecretRef
    host_key: HostKey = "known-hosts"
    # 1024 characters: the limit definitions have always been held to (the hook runner's own 4096
    # could never be reached). A hook command is one call on the far side, filled with short
    # placeholders; anything longer is a script that belongs in a file there.
    command: Annotated[str, StringConstraints(min_length=1, max_length=1024), AfterValidator(_check_hook_command)]


class ScriptHook(_Hook):
    hook: Literal["script"]
    path: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]{1,255}$")]
    args: Annotated[list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.=:/,@+-]{0,128}$")]],
                    Field(max_length=64)] = []


_DNS_NAME = r"(@|[A-Za-z0-9_{}:-]{1,63}(\.[A-Za-z0-9_{}:-]{1,63})*\.?)"
DnsName = Annotated[str, StringConstraints(pattern=rf"^{_DNS_NAME}$")]
# {persona}, {server} (the body it runs on now), {address:NETWORK} (its address on a pool network).
_DNS_PLACEHOLDER = re.compile(r"\{(persona|server|address:[a-z][a-z0-9-]{0,62})\}")


def dns_placeholders(text: str) -> list[str]:
    return _DNS_PLACEHOLDER.findall(text)


class DnsRecord(Strict):
    name: DnsName  # relative to the zone ("mail", "@") or absolute ("mail.example.com.")
    type: Literal["A", "AAAA", "CNAME", "MX", "TXT"]
    ttl: Annotated[Pause, Field(ge=0, le=604800)] = 300.0  # 0s is a TTL (no caching)
    value: Annotated[str, StringConstraints(pattern=r'^[A-Za-z0-9 ._:{}@"=/+-]{1,255}$')]

    @model_validator(mode="after")
    def _value_fits(self) -> DnsRecord:
        for text in (self.name, self.value):
            left = _DNS_PLACEHOLDER.sub("", text)
            if "{" in left or "}" in left:
                raise ValueError(f"unknown placeholder in {text!r} (known: {{persona}}, {{server}}, "
                                 "{address:NETWORK})")
        if dns_placeholders(self.value):
            return self
        if self.type in ("A", "AAAA"):
            try:
                ip = ipaddress.ip_address(self.value)
            except ValueError:
                raise ValueError(f"{self.type} value {self.value!r} is not an IP address") from None
            if (ip.version == 4) != (self.type == "A"):
                raise ValueError(f"{self.type} value {self.value!r} is an IPv{ip.version} address")
        elif self.type == "MX" and not re.fullmatch(r"\d{1,5} \S+", self.value):
            raise ValueError(f"MX value {self.value!r}: want 'PREFERENCE HOST'")
        return self


class DnsUpdateHook(_Hook):
    """RFC 2136 dynamic update of the persona's records, signed with TSIG, read back by a query."""

    hook: Literal["dns-update"]
    server: Host  # the zone's primary
    port: Annotated[int, Field(ge=1, le=65535)] = 53
    zone: DnsName
    key_name: DnsName
    key_algorithm: Literal["hmac-sha256", "hmac-sha384", "hmac-sha512"] = "hmac-sha256"
    credentials: SecretRef  # the TSIG key's secret (base64), as a reference like every secret
    records: Annotated[list[DnsRecord], Field(min_length=1, max_length=64)]


Hook = Annotated[ExchangeDagHook | SshCommandHook | ScriptHook | DnsUpdateHook, Field(discriminator="hook")]


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
    # Blast radius by rack: at most this many automatic failovers at once out of one rack (None:
    # only the pool's limit), and this many deaths in one rack within ``rack_window`` are one
    # rack event (likely power or the top-of-rack switch), paged once.
    per_rack: Annotated[int, Field(ge=1)] | None = None
    rack_event: Annotated[int, Field(ge=2)] = 2
    rack_window: Duration = 60.0


class Escalation(Strict):
    """At most ``max_failovers`` automatic failovers of one persona in ``window``; beyond, an operator
    decides: a body that kills every standby it lands on must not eat the pool."""

    max_failovers: Annotated[int, Field(ge=1, le=100)] = 2
    window: Duration = 3600.0


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
def _check_clock(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", value):
        raise ValueError(f"not a time of day: {value!r} (write HH:MM, 00:00 to 23:59)")
    return value


ClockTime = Annotated[str, AfterValidator(_check_clock)]


def _check_zone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (write e.g. UTC, Europe/Berlin)") from None
    return value


class ChangeWindow(Strict):
    """When planned work may run: ``start``-``end`` (local to ``zone``) on ``days``; a window whose
    end is before its start runs past midnight into the next day."""

    days: list[Weekday] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    start: ClockTime
    end: ClockTime
    zone: Annotated[str, AfterValidator(_check_zone)] = "UTC"

    @model_validator(mode="after")
    def _not_empty(self) -> ChangeWindow:
        if self.start == self.end:
            raise ValueError("change window start and end are the same time")
        if not self.days:
            raise ValueError("change window has no days")
        return self


class Preempt(Strict):
    """What a *suspect* body (failing, not dead) leads to: an alert, or a planned move of its persona."""

    action: Literal["alert", "move"] = "alert"
    # The planned move waits for its change record to be approved (`aimctl approve CHG...`).
    change_approval: bool = False
    window: ChangeWindow | None = None
    # The lowest BMC health that makes a body suspect.
    health: Literal["warning", "critical"] = "warning"
    # N linkDown traps on a body's ports within ``flap_window`` make it suspect.
    link_flaps: Annotated[int, Field(ge=2, le=1000)] = 3
    flap_window: Duration = 300.0
    # Ids from the predictive-event table (aimctl/detect/predictive_events.yaml); empty: all of them.
    events: list[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]] = []


class Drift(Strict):
    """Which drift the controller may repair by itself (journaled, read back, recorded): ``ports`` of a
    running persona, a ``quarantine``d body's ports and power, the ``bootcfg`` of a running persona's
    body. Storage ACL and CHAP drift is never on this list: a second initiator may be an attack."""

    repair: list[Literal["ports", "quarantine", "bootcfg"]] = []


class ArchivePolicy(Strict):
    """Scheduled snapshots of each persona's boot and data LUNs, frozen together."""

    every: Duration | None = None  # e.g. 24h; none: only `aimctl archive PERSONA`
    keep: Annotated[Duration, Field(gt=0)] = 259200.0  # older archives are deleted; the newest always stays


class RehearsalPolicy(Strict):
    """Spare rehearsals: a standby boots a copy of the persona's latest archive, isolated, then is released."""

    every: Duration | None = None  # e.g. 7d; none: only `aimctl rehearse PERSONA`
    # Alert when a persona's last good rehearsal is older than this (default: twice ``every``).
    stale_after: Duration | None = None
    # The isolated VLAN a rehearsal body's ports are put in: never a production or quarantine VLAN.
    # The controller's heartbeat receiver must be reachable from it (rehearsal heartbeats are signed
    # as such and never count as the persona's own).
    vlan: Vlan | None = None
    on: list[Name] = []  # standbys to rehearse on, in this order (default: as a failover would choose)
    healthy_beats: Annotated[int, Field(ge=1, le=100)] = 3  # consecutive healthy rehearsal heartbeats = good


class PoolFile(InventoryFile):
    """A pool; it may carry its own inventory (servers/switches/storage) in the same file."""

    pool: Name
    members: Annotated[list[Name], Field(max_length=MAX_ENTRIES)]
    standby_preference: Annotated[list[Name], Field(max_length=MAX_ENTRIES)] = Field(default_factory=list)
    quarantine_vlan: Vlan
    scn: Name = "scn"
    networks: Annotated[dict[Name, Network], *Capped(256, "networks")]
    personas: Annotated[dict[Name, Persona], *Capped(MAX_ENTRIES, "personas")] = Field(default_factory=dict)
    storm: Storm = Field(default_factory=Storm)
    max_retargets: Annotated[int, Field(ge=0, le=10)] = 2
    escalation: Escalation = Escalation()
    preempt: Preempt = Preempt()
    drift: Drift = Drift()
    archives: ArchivePolicy = ArchivePolicy()
    rehearsal: RehearsalPolicy = RehearsalPolicy()

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
        if node.get("pattern") in (DURATION_PATTERN, PAUSE_PATTERN) and isinstance(node.get("default"), int | float):
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
