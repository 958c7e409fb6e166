"""Port reads and changes of concurrent operations merged into one session per switch."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from aimctl.drivers.protocols import PortIntent, PortState
from aimctl.drivers.registry import Drivers


@dataclass
class _Request:
    reads: list[str]  # ports to read (a capture), or
    intents: list[PortIntent]  # ports to change
    future: Future[list[PortState]]


class SwitchBatcher:
    """Coalesces the port reads and changes of concurrent operations into one session per switch.

    Twenty failovers at once each touch the same few switches; PowerConnect-class switches take one
    session at a time, so applying them one by one queues every failover behind the others. Requests
    that arrive while a switch is busy are merged into its next batch (their ports are disjoint:
    different bodies) and each requester gets the read-back of its own ports, or the batch's error.
    A batch holds the reads (captures before a change) and the changes that were waiting: one
    ``read`` session for all the reads, then one ``apply`` session for all the changes.
    """

    def __init__(self, drivers: Drivers) -> None:
        self.drivers = drivers
        self._lock = threading.Lock()
        self._queues: dict[str, list[_Request]] = {}
        self._busy: set[str] = set()

    def apply(self, switch: str, intents: list[PortIntent]) -> list[PortState]:
        return self._submit(switch, _Request([], list(intents), Future()))

    def read(self, switch: str, ports: list[str]) -> list[PortState]:
        if not ports:
            return []
        return self._submit(switch, _Request(list(ports), [], Future()))

    def _submit(self, switch: str, req: _Request) -> list[PortState]:
        with self._lock:
            self._queues.setdefault(switch, []).append(req)
            leader = switch not in self._busy
            if leader:
                self._busy.add(switch)
        if leader:
            self._drain(switch)
        return req.future.result()

    def _drain(self, switch: str) -> None:
        """Serve one batch; if more arrived meanwhile, a fresh thread takes them, so the caller whose
        request was in this batch goes on with its failover instead of serving everyone else's."""
        with self._lock:
            batch = self._queues.pop(switch, [])
            if not batch:
                self._busy.discard(switch)
                return
        reads = [r for r in batch if r.reads]
        if reads:
            ports = list(dict.fromkeys(p for r in reads for p in r.reads))
            self._serve(reads, lambda: self.drivers.switch(switch).read(ports))
        changes = [r for r in batch if not r.reads]
        if changes:
            merged = [i for r in changes for i in r.intents]
            self._serve(changes, lambda: self.drivers.switch(switch).apply(merged))
        threading.Thread(target=self._drain, args=(switch,), name=f"switch-{switch}", daemon=True).start()

    @staticmethod
    def _serve(batch: list[_Request], call: Callable[[], list[PortState]]) -> None:
        try:
            states = {st.port: st for st in call()}
        except Exception as exc:  # noqa: BLE001 - every requester of this batch learns it
            for r in batch:
                r.future.set_exception(exc)
            return
        for r in batch:
            ports = r.reads or [i.port for i in r.intents]
            r.future.set_result([states[p] for p in ports if p in states])
