"""Port changes of concurrent operations merged into one session per switch."""

from __future__ import annotations

import threading
from concurrent.futures import Future

from aimctl.drivers.protocols import PortIntent, PortState
from aimctl.drivers.registry import Drivers


class SwitchBatcher:
    """Coalesces the port changes of concurrent operations into one session per switch.

    Twenty failovers at once each touch the same few switches; PowerConnect-class switches take one
    session at a time, so applying them one by one queues every failover behind the others. Requests
    that arrive while a switch is busy are merged into its next batch (their ports are disjoint:
    different bodies) and each requester gets the read-back of its own ports, or the batch's error.
    """

    def __init__(self, drivers: Drivers) -> None:
        self.drivers = drivers
        self._lock = threading.Lock()
        self._queues: dict[str, list[tuple[list[PortIntent], Future[list[PortState]]]]] = {}
        self._busy: set[str] = set()

    def apply(self, switch: str, intents: list[PortIntent]) -> list[PortState]:
        fut: Future[list[PortState]] = Future()
        with self._lock:
            self._queues.setdefault(switch, []).append((intents, fut))
            leader = switch not in self._busy
            if leader:
                self._busy.add(switch)
        if leader:
            self._drain(switch)
        return fut.result()

    def _drain(self, switch: str) -> None:
        """Apply one batch; if more arrived meanwhile, a fresh thread takes them, so the caller whose
        request was in this batch goes on with its failover instead of serving everyone else's."""
        with self._lock:
            batch = self._queues.pop(switch, [])
            if not batch:
                self._busy.discard(switch)
                return
        merged = [i for intents, _ in batch for i in intents]
        try:
            states = {st.port: st for st in self.drivers.switch(switch).apply(merged)}
        except Exception as exc:  # noqa: BLE001 - every requester of this batch learns it
            for _, fut in batch:
                fut.set_exception(exc)
        else:
            for intents, fut in batch:
                fut.set_result([states[i.port] for i in intents if i.port in states])
        threading.Thread(target=self._drain, args=(switch,), name=f"switch-{switch}", daemon=True).start()
