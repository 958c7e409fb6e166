"""The narrow interfaces the workflow drives. One concern each, one module per protocol.

Words are ours, not the vendors': drivers translate at the edge (Redfish "On"/"Off", IPMI
"on"/"off", tgtadm output, switch running-config) into these types. Every write has a read-back:
a method that changes something returns only after it has *observed* the change, or raises one of
``aimctl.errors`` (Unreachable, AuthFailed, Timeout, StateMismatch, Rejected).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, runtime_checkable


class PowerState(str, Enum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


@runtime_checkable
class Power(Protocol):
    """A server's power, through its BMC."""

    def state(self) -> PowerState: ...

    def off(self, deadline_s: float = 60.0) -> None:
        """Hard off (ForceOff / chassis off), then poll until it *reads* off or raise Timeout."""

    def on(self, deadline_s: float = 60.0) -> None:
        """Power on, then poll until it reads on or raise Timeout."""


@dataclass(frozen=True)
class IscsiBoot:
    """What a server's firmware needs to boot a persona from its LUN."""

    initiator: str
    target: str
    lun: int
    portal_host: str
    portal_port: int
    chap_user: str
    chap_secret: str = field(repr=False)


@runtime_checkable
class BootConfig(Protocol):
    """A server's iSCSI boot configuration (Redfish iSCSIBoot, or an iPXE script for IPMI)."""

    def write(self, boot: IscsiBoot) -> None:
        """Write the config and set the next boot to it; read back and compare."""

    def read(self) -> IscsiBoot | None: ...

    def clear(self) -> None:
        """Remove the persona's identity from the server's firmware; read back that it is gone."""


@dataclass(frozen=True)
class Session:
    target: str
    initiator: str
    alias: str
    sid: int


@runtime_checkable
class StorageAccess(Protocol):
    """Who may reach a persona's targets.

    A persona keeps its initiator name when it moves, so an ACL by name cannot tell bodies apart:
    the per-persona CHAP account is what the fence rotates (DESIGN.md rule 1).
    """

    def bind(self, target: str, initiator: str) -> None: ...

    def unbind(self, target: str, initiator: str) -> None: ...

    def initiators(self, target: str) -> list[str]: ...

    def set_chap(self, target: str, user: str, secret: str) -> None:
        """Make ``user``/``secret`` the only CHAP account on ``target`` (rotation); read back."""

    def chap_user(self, target: str) -> str | None: ...

    def sessions(self, target: str) -> list[Session]: ...

    def kill_sessions(self, target: str, deadline_s: float = 10.0) -> None:
        """Drop every session to ``target`` and poll until none remains."""

    def login_refused(self, target: str, initiator: str, user: str, secret: str) -> bool:
        """Try a real login with these credentials; True when the target refuses it."""

    def read_access(self, targets: list[str]) -> dict[str, TargetAccess]:
        """ACL and CHAP accounts of several targets in one read (drift passes); a target that does
        not exist is missing from the answer."""


@dataclass(frozen=True)
class TargetAccess:
    acl: tuple[str, ...]
    chap_users: tuple[str, ...]


@dataclass(frozen=True)
class Snapshot:
    """A point-in-time copy of one LUN. LUNs snapshotted together share a ``set`` (see
    ``aimctl.drivers.snapnames``): one freeze, so their writes are in the same order as on the
    running persona (crash-consistent across its boot and data LUNs)."""

    id: str  # "<set>+<target>+<lun>"
    set: str  # "<label>+<stamp>"
    label: str  # a persona's name, or "gold.<image>"
    target: str
    lun: int
    created: float  # epoch seconds, from the stamp
    size: int  # bytes
    method: str = ""  # how it was made, when it was just made: "reflink" or "copy"
    frozen_s: float = 0.0  # how long the source targets refused I/O while it was made


@runtime_checkable
class Snapshots(Protocol):
    """Copies of a target's LUNs, and targets made from them.

    Next to ``StorageAccess`` and as narrow: it never changes who may log in (the caller binds the
    ACL and CHAP of a clone through ``StorageAccess``). Every write is read back: a snapshot by its
    size, a restore and a clone by comparing their bytes with the snapshot's.
    """

    def snapshot(self, set_id: str, luns: Sequence[tuple[str, int]]) -> list[Snapshot]:
        """Freeze the LUNs' targets together, copy each LUN, thaw. Re-running with the same
        ``set_id`` (a resumed operation) makes the same snapshots again."""

    def snapshots(self, label: str | None = None) -> list[Snapshot]:
        """Complete snapshots, oldest first (a copy cut short by a crash is never listed)."""

    def restore(self, snapshot_id: str, target: str, lun: int) -> None:
        """Write the snapshot back into the LUN in place; refused while anyone is logged in."""

    def clone(self, snapshot_id: str, target: str, lun: int, scratch: bool = True) -> None:
        """A new target with the snapshot's copy as LUN ``lun`` and an empty ACL (nobody can log in).
        ``scratch`` clones (rehearsals) are the only targets ``delete_clone`` will remove."""

    def delete(self, snapshot_id: str) -> None: ...

    def delete_clone(self, target: str) -> None:
        """Drop the scratch clone's sessions, delete the target and its copy; refused for any other."""


class PortMode(str, Enum):
    ACCESS = "access"
    TRUNK = "trunk"


@dataclass(frozen=True)
class PortIntent:
    """What one switch port should carry after a batch."""

    port: str
    mode: PortMode
    vlans: tuple[int, ...]  # access: exactly one; trunk: allowed VLANs
    native_vlan: int | None = None
    description: str = ""
    # An access port that fences a body (DESIGN.md rule 1): rendered from quarantine.j2, which
    # also strips trunk settings so a later mode change cannot bring the persona's VLANs back.
    quarantine: bool = False


@dataclass(frozen=True)
class PortState:
    port: str
    mode: PortMode | None
    vlans: tuple[int, ...]
    native_vlan: int | None = None


@runtime_checkable
class SwitchPorts(Protocol):
    """One switch. ``apply`` sends every intent in one SSH session and one config session, reads
    the touched ports back and compares; on an error or mismatch it restores the captured previous
    config of those ports and raises Rejected/StateMismatch naming switch, port and line."""

    def render(self, intents: list[PortIntent]) -> list[str]:
        """The exact CLI lines ``apply`` would send (used by ``aimctl plan``)."""

    def apply(self, intents: list[PortIntent]) -> list[PortState]: ...

    def read(self, ports: list[str]) -> list[PortState]: ...


# ---------------------------------------------------------------------------- hardware, from the BMC

Health = str  # "ok" | "warning" | "critical" | "unknown" (ours; drivers translate at the edge)


@dataclass(frozen=True)
class HardwareFacts:
    """What the BMC says the body is. ``None``: this BMC cannot say (IPMI FRU has no core count)."""

    model: str | None = None
    cores: int | None = None
    memory_gb: int | None = None
    macs: tuple[str, ...] | None = None  # lower-case aa:bb:cc:dd:ee:ff


@dataclass(frozen=True)
class LogEntry:
    """One BMC event-log entry (Redfish LogEntry or IPMI SEL record), in our words.

    ``sensor`` is the IPMI sensor-type name (``memory``, ``power-supply``, ``fan``, ``drive-slot``...)
    or the Redfish SensorType lower-cased; ``offset`` the IPMI event offset (event data 1, low
    nibble) when known; ``event_type`` the IPMI event/reading type code.
    """

    id: str
    message: str = ""
    message_id: str = ""
    severity: str = ""
    sensor: str = ""
    event_type: int | None = None
    offset: int | None = None
    created: str = ""


@dataclass(frozen=True)
class BodyHealth:
    health: Health
    entries: tuple[LogEntry, ...] = ()


@runtime_checkable
class Hardware(Protocol):
    """A body's inventory and health as its BMC reports them (reads only)."""

    def facts(self, macs: bool = True) -> HardwareFacts:
        """Inventory; ``macs=False`` skips the NIC listing (a few requests on Redfish) when no MAC
        is declared to compare with."""

    def health(self) -> BodyHealth:
        """Summary health and the event log's entries (newest last; bounded by the driver)."""
