"""What a lab body *is* and how it feels: inventory, summary health and its event log.

Both BMC emulators serve this state in their own protocol: Redfish (``ComputerSystem`` Model,
ProcessorSummary, MemorySummary, Status and a ``LogServices/Sel``) and IPMI (a FRU product area
and SEL records). Inventory starts as the definitions declare it; faults change it the way
hardware fails: a DIMM drops out (``hw-mismatch``), the BMC's health degrades, a predictive event
lands in the log.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# Predictive events the lab can log: id -> (Redfish SensorType, message, IPMI sensor type,
# event/reading type, offset). Texts are what BMCs write; the ids match aimctl's table.
EVENTS: dict[str, tuple[str, str, int, int, int]] = {
    "correctable-ecc-limit": ("Memory", "Correctable ECC memory error logging limit reached for DIMM A1.",
                              0x0C, 0x6F, 0x05),
    "psu-redundancy-lost": ("Power Supply", "Power supply redundancy is lost.", 0x08, 0x0B, 0x01),
    "fan-failure": ("Fan", "Fan 3 RPM is below the lower critical threshold.", 0x04, 0x01, 0x02),
    "predictive-disk-failure": ("Drive Slot/Bay", "Disk 0 in Backplane 1 is predicted to fail.", 0x0D, 0x6F, 0x02),
    # Not predictive: a lab may log harmless noise too, which must not make a body suspect.
    "chassis-intrusion-cleared": ("Physical Security", "The chassis is closed.", 0x05, 0x6F, 0x00),
}
HEALTH_WORDS = ("OK", "Warning", "Critical")


@dataclass
class Body:
    model: str
    cores: int
    memory_gb: int
    macs: list[str]
    health: str = "OK"
    entries: list[dict[str, Any]] = field(default_factory=list)
    declared: dict[str, Any] = field(default_factory=dict)


class HardwareState:
    """Per lab server: its inventory as declared, health and event log; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[str, Body] = {}
        self._next_id = 1

    def add(self, name: str, model: str, cores: int, memory_gb: int, macs: list[str]) -> None:
        body = Body(model, cores, memory_gb, list(macs))
        body.declared = {"model": model, "cores": cores, "memory_gb": memory_gb, "macs": list(macs)}
        with self._lock:
            self._bodies[name] = body

    def get(self, name: str) -> Body:
        with self._lock:
            return copy.deepcopy(self._bodies[name])

    def has(self, name: str) -> bool:
        return name in self._bodies

    def set_health(self, name: str, word: str) -> None:
        if word not in HEALTH_WORDS:
            raise ValueError(f"health {word!r}: one of {', '.join(HEALTH_WORDS)}")
        with self._lock:
            self._bodies[name].health = word

    def log(self, name: str, event: str) -> dict[str, Any]:
        if event not in EVENTS:
            raise ValueError(f"unknown lab event {event!r} (known: {', '.join(EVENTS)})")
        sensor, message, _, _, _ = EVENTS[event]
        with self._lock:
            entry = {"Id": str(self._next_id), "event": event, "Message": message, "SensorType": sensor,
                     "Severity": "Warning", "EntryType": "SEL", "EntryCode": "Assert",
                     "Created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stamp": int(time.time())}
            self._next_id += 1
            self._bodies[name].entries.append(entry)
            return dict(entry)

    def clear_log(self, name: str) -> None:
        with self._lock:
            self._bodies[name].entries.clear()

    def lose_memory(self, name: str, gb: int = 16) -> None:
        """A DIMM drops out: the body reports less memory than declared."""
        with self._lock:
            b = self._bodies[name]
            b.memory_gb = max(1, b.memory_gb - gb)

    def reset(self, name: str) -> None:
        with self._lock:
            b = self._bodies[name]
            d = b.declared
            self._bodies[name] = Body(d["model"], d["cores"], d["memory_gb"], list(d["macs"]), declared=d)


def sel_record(record_id: int, entry: dict[str, Any]) -> bytes:
    """The 16-byte IPMI system event record of a lab log entry (IPMI 2.0 section 32.1)."""
    _, _, sensor_type, event_type, offset = EVENTS[entry["event"]]
    stamp = int(entry.get("stamp", 0)) & 0xFFFFFFFF
    return bytes([record_id & 0xFF, record_id >> 8, 0x02, *stamp.to_bytes(4, "little"), 0x20, 0x00, 0x04,
                  sensor_type, 0x01, event_type & 0x7F, 0xF0 | (offset & 0x0F), 0xFF, 0xFF])


def fru_product_area(manufacturer: str, product: str, serial: str) -> bytes:
    """A FRU image with a common header and a product info area (IPMI Platform Management FRU
    Information Storage Definition v1.0, sections 8 and 11)."""
    def tlv(text: str) -> bytes:
        raw = text.encode("ascii", "replace")[:63]
        return bytes([0xC0 | len(raw)]) + raw

    body = bytes([0x01, 0x00, 0x00]) + b"".join(tlv(x) for x in (manufacturer, product, "", "", serial, "", ""))
    body += b"\xc1"
    size = len(body) + 1
    size += (-size) % 8
    area = bytearray(body + b"\0" * (size - len(body) - 1))
    area[1] = size // 8
    area.append((-sum(area)) & 0xFF)
    header = bytearray([0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00])
    header.append((-sum(header)) & 0xFF)
    return bytes(header + area)
