"""``Hardware`` over IPMI: the FRU's product area for inventory, the SEL for events.

IPMI has no summary health and its FRU says nothing about cores, memory or MACs: those answer
"unknown" (None) and only what the BMC can say is compared. SEL records are read with the raw
storage commands (IPMI 2.0 section 31: Reserve SEL, Get SEL Entry) and decoded here, from the
standard 16-byte system event record, without the SDR: the sensor *type* and the event offset
are all the predictive-event table needs.
"""

from __future__ import annotations

from typing import Any

from pyghmi.ipmi import fru as ipmi_fru

from aimctl.drivers.ipmi import FIRST_WAIT_S, IpmiPower
from aimctl.drivers.protocols import BodyHealth, HardwareFacts, LogEntry
from aimctl.errors import Rejected

NETFN_STORAGE = 0x0A
CMD_RESERVE_SEL, CMD_GET_SEL_ENTRY = 0x42, 0x43
LAST_RECORD = 0xFFFF
SEL_EMPTY = 0xCB  # "requested sensor, data, or record not present"
MAX_RECORDS = 2048  # a SEL holds at most a few thousand; never loop on a BMC that lies

# IPMI 2.0 table 42-3, sensor type codes -> our names (those the predictive table may use, and more).
SENSOR_TYPES = {
    0x01: "temperature", 0x02: "voltage", 0x03: "current", 0x04: "fan", 0x05: "physical-security",
    0x07: "processor", 0x08: "power-supply", 0x09: "power-unit", 0x0A: "cooling-device", 0x0C: "memory",
    0x0D: "drive-slot", 0x0F: "system-firmware-progress", 0x10: "event-logging-disabled", 0x12: "system-event",
    0x13: "critical-interrupt", 0x15: "module-board", 0x19: "chip-set", 0x1D: "system-boot", 0x1F: "os-boot",
    0x20: "os-critical-stop", 0x23: "watchdog-2", 0x24: "platform-alert", 0x28: "management-subsystem-health",
    0x29: "battery",
}


def decode_sel_record(data: bytes) -> LogEntry | None:
    """A 16-byte SEL record -> LogEntry; None for OEM records and for deassertions (the condition
    went away: not a sign of failure)."""
    if len(data) < 16:
        return None
    record_id = data[0] | data[1] << 8
    if data[2] != 0x02:  # only standard system event records carry sensor events
        return None
    sensor_type, sensor_num, dir_type, ed1 = data[10], data[11], data[12], data[13]
    if dir_type & 0x80:
        return None
    event_type = dir_type & 0x7F
    offset = ed1 & 0x0F
    sensor = SENSOR_TYPES.get(sensor_type, f"sensor-type-{sensor_type:#04x}")
    stamp = int.from_bytes(data[3:7], "little")
    return LogEntry(id=f"sel/{record_id}", message=f"{sensor} sensor {sensor_num:#04x}: event type {event_type:#04x} "
                                                   f"offset {offset:#x} asserted",
                    sensor=sensor, event_type=event_type, offset=offset, created=str(stamp))


class IpmiHardware:
    def __init__(self, power: IpmiPower) -> None:
        self.power = power
        self.device = power.device

    def facts(self, macs: bool = True) -> HardwareFacts:
        info = self.power._call("read FRU", lambda c: ipmi_fru.FRU(ipmicmd=c).info, self.power.timeout_s) or {}
        model = str(info.get("Product name") or info.get("Board product name") or "").strip() or None
        return HardwareFacts(model=model)

    def health(self) -> BodyHealth:
        return BodyHealth("unknown", tuple(self._sel()))

    def _raw(self, cmd: Any, command: int, data: tuple[int, ...]) -> dict[str, Any]:
        rsp = cmd.raw_command(netfn=NETFN_STORAGE, command=command, data=data, timeout=FIRST_WAIT_S)
        return dict(rsp)

    def _sel(self) -> list[LogEntry]:
        def read(cmd: Any) -> list[bytes]:
            rsv = self._raw(cmd, CMD_RESERVE_SEL, ())
            if rsv.get("code") == SEL_EMPTY:
                return []
            if "error" in rsv:
                raise Rejected(self.device, f"reserve SEL: {rsv['error']}")
            r = rsv.get("data") or b"\0\0"
            out: list[bytes] = []
            record = 0
            while record != LAST_RECORD and len(out) < MAX_RECORDS:
                rsp = self._raw(cmd, CMD_GET_SEL_ENTRY, (r[0], r[1], record & 0xFF, record >> 8, 0, 0xFF))
                if rsp.get("code") == SEL_EMPTY:
                    break
                if "error" in rsp:
                    raise Rejected(self.device, f"get SEL entry {record}: {rsp['error']}")
                body = bytes(rsp.get("data") or b"")
                if len(body) < 18:
                    break
                out.append(body[2:18])
                record = body[0] | body[1] << 8
            return out

        records = self.power._call("read SEL", read, max(self.power.timeout_s, 5.0))
        return [e for rec in records if (e := decode_sel_record(rec)) is not None]
