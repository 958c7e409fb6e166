"""``Hardware`` over Redfish: ComputerSystem inventory, Status, EthernetInterfaces and LogServices.

Reads only. Redfish words are translated here (``Status.Health`` "OK"/"Warning"/"Critical" ->
ok/warning/critical) and nothing else leaves this module: the detector never sees a vendor string.

Cores: ``ProcessorSummary.CoreCount`` (ComputerSystem v1.14+); older services only count
processors, so without it the driver adds up ``TotalCores`` of the Processors collection, and says
"unknown" (None) when neither is there. Memory is ``TotalSystemMemoryGiB`` rounded to whole GiB.
The event log is every LogService linked from the system (the SEL on most BMCs), newest
``max_entries`` entries of each.
"""

from __future__ import annotations

from typing import Any

from aimctl.drivers.protocols import BodyHealth, HardwareFacts, LogEntry
from aimctl.drivers.redfish import RedfishClient

HEALTH = {"ok": "ok", "warning": "warning", "critical": "critical"}
_RANK = {"unknown": 0, "ok": 1, "warning": 2, "critical": 3}


def worst(*words: str) -> str:
    return max(words, key=lambda w: _RANK.get(w, 0)) if words else "unknown"


def health_word(status: Any) -> str:
    """A Redfish ``Status`` object -> our word: the worse of Health and HealthRollup."""
    if not isinstance(status, dict):
        return "unknown"
    words = [HEALTH.get(str(status.get(k) or "").lower(), "unknown") for k in ("Health", "HealthRollup")]
    known = [w for w in words if w != "unknown"]
    return worst(*known) if known else "unknown"


def _mac(value: Any) -> str | None:
    text = str(value or "").strip().lower().replace("-", ":")
    return text if len(text) == 17 and text.count(":") == 5 else None


class RedfishHardware:
    def __init__(self, client: RedfishClient, max_entries: int = 200) -> None:
        self.client = client
        self.device = client.device
        self.max_entries = max_entries

    def _get(self, what: str, path: str) -> dict[str, Any]:
        return self.client.call(what, lambda: self.client.get_json(path))

    def _members(self, what: str, link: Any) -> list[dict[str, Any]]:
        path = link.get("@odata.id") if isinstance(link, dict) else None
        if not path:
            return []
        coll = self._get(what, str(path))
        out = []
        for m in coll.get("Members") or []:
            if not isinstance(m, dict):
                continue
            # Many services inline whole members; otherwise each is one more GET.
            out.append(m if len(m) > 1 else self._get(what, str(m.get("@odata.id"))))
        return out

    def facts(self, macs: bool = True) -> HardwareFacts:
        system = self._get("read inventory", self.client.system_path)
        model = str(system.get("Model") or "").strip() or None
        summary = system.get("ProcessorSummary") or {}
        cores = summary.get("CoreCount")
        if not isinstance(cores, int):
            procs = self._members("read processors", system.get("Processors"))
            counted = [int(p["TotalCores"]) for p in procs if isinstance(p.get("TotalCores"), int)]
            cores = sum(counted) if counted else None
        mem = (system.get("MemorySummary") or {}).get("TotalSystemMemoryGiB")
        memory_gb = int(round(float(mem))) if isinstance(mem, (int, float)) else None
        found = None
        if macs and isinstance(system.get("EthernetInterfaces"), dict):
            nics = self._members("read NICs", system["EthernetInterfaces"])
            found = tuple(sorted({m for n in nics if (m := _mac(n.get("MACAddress") or n.get("PermanentMACAddress")))}))
        return HardwareFacts(model, cores, memory_gb, found)

    def health(self) -> BodyHealth:
        system = self._get("read health", self.client.system_path)
        entries: list[LogEntry] = []
        for service in self._members("read log services", system.get("LogServices")):
            link = service.get("Entries")
            if not isinstance(link, dict):
                continue
            raw = self._members("read log entries", link)
            for e in raw[-self.max_entries:]:
                entries.append(LogEntry(
                    id=f"{service.get('Id', '')}/{e.get('Id', '')}",
                    message=str(e.get("Message") or ""),
                    message_id=str(e.get("MessageId") or ""),
                    severity=str(e.get("Severity") or "").lower(),
                    sensor=str(e.get("SensorType") or "").lower(),
                    created=str(e.get("Created") or ""),
                ))
        return BodyHealth(health_word(system.get("Status")), tuple(entries))
