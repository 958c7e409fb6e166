"""IPMI BMCs for the lab: one pyghmi ``Bmc`` per server, each on its own UDP port on 127.0.0.1.

pyghmi runs one I/O loop per process: a single I/O thread reads every pyghmi socket (client and
server) and whichever thread calls ``Session.wait_for_rsp`` handles the queued packets. So the
BMCs run in the calling process: one ``IpmiLab`` thread keeps calling ``wait_for_rsp`` and the host
simulators get power callbacks in process. A pyghmi client in the same process (the driver under
test) works too; its own waits may handle BMC packets, which is why the BMC state has a lock.

The pyghmi plumbing (and the pyghmi quirks it works around) is in ``lab.ipmi_pyghmi``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyghmi.ipmi.private.session as ipmisession

from lab.bmc.common import DueTimer, Faults, Notifier
from lab.bmc.hardware import HardwareState
from lab.bmc.ipmi_pyghmi import LabBmc, prime_pyghmi, unregister

log = logging.getLogger(__name__)


@dataclass
class IpmiSystemSpec:
    name: str
    power_on: bool = False
    boot_device: str = "default"
    model: str = "PowerEdge R620"
    cores: int = 12
    memory_gb: int = 64


@dataclass
class _Server:
    on: bool
    boot_device: str
    pending: bool | None = None  # target of a power change not yet landed


class IpmiLab:
    """IPMI BMCs for a set of servers, served from a thread of this process."""

    def __init__(
        self,
        systems: list[IpmiSystemSpec],
        users: dict[str, str],
        power_delay_s: float = 1.0,
        state_dir: Path | None = None,
        slow_s: float = 0.5,
    ) -> None:
        self.power_delay_s = power_delay_s
        self.slow_s = slow_s  # added to every IPMI command answer while "slow" is on
        self.state_dir = state_dir  # unused: IPMI state lives in memory; kept for symmetry
        self._users = dict(users)
        self._specs = {s.name: s for s in systems}
        self._servers = {s.name: _Server(on=s.power_on, boot_device=s.boot_device) for s in systems}
        self._lock = threading.RLock()
        self._faults = Faults(self._servers)
        self.hardware = HardwareState()
        for spec in systems:
            self.hardware.add(spec.name, spec.model, spec.cores, spec.memory_gb, [])
        # chassis control requests each BMC received, for tests and status
        self.power_commands: dict[str, int] = {s.name: 0 for s in systems}
        self._bmcs: dict[str, LabBmc] = {}
        # made here, not in start(): a lab with no IPMI servers is never started but is subscribed to
        self._notifier = Notifier("ipmi-lab")
        self._due = DueTimer("ipmi-lab", self._land)
        self._loop: threading.Thread | None = None
        self._running = False

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> dict[str, int]:
        """Bind one UDP port per server on 127.0.0.1; return {server: port}."""
        prime_pyghmi()
        for name in self._specs:
            self._bmcs[name] = LabBmc(self, name, self._users)
        self._running = True
        self._loop = threading.Thread(target=self._serve, name="ipmi-lab-loop", daemon=True)
        self._loop.start()
        return self.ports()

    def ports(self) -> dict[str, int]:
        return {name: int(bmc.port) for name, bmc in self._bmcs.items()}

    def port(self, name: str) -> int:
        return int(self._bmcs[name].port)

    def stop(self) -> None:
        self._running = False
        unregister(list(self._bmcs.values()))
        self._bmcs.clear()
        if self._loop is not None:
            self._loop.join(timeout=5)
        self._due.close()
        self._notifier.close()

    def _serve(self) -> None:
        while self._running:
            try:
                ipmisession.Session.wait_for_rsp(timeout=0.2)
            except Exception:  # one bad packet must not stop every BMC
                log.exception("IPMI lab loop")

    # --- in-process truth and controls ----------------------------------------------------
    def power(self, name: str) -> bool:
        with self._lock:
            return self._servers[name].on

    def pending(self, name: str) -> bool | None:
        """Target of a power change that has not landed yet (None: nothing pending)."""
        with self._lock:
            return self._servers[name].pending

    def boot_device(self, name: str) -> str:
        with self._lock:
            return self._servers[name].boot_device

    def subscribe(self, cb: Callable[[str, bool], None]) -> None:
        self._notifier.subscribe(cb)

    def set_boot_device(self, name: str, device: str) -> None:
        """The next boot device, as ``ipmitool chassis bootdev`` sets it (the BMC handler, lab setup)."""
        with self._lock:
            self._servers[name].boot_device = device

    def press_power_button(self, name: str) -> None:
        """Hard off now, as if someone held the power button (the controller is not told)."""
        self._set_now(name, False)

    def set_power(self, name: str, on: bool) -> None:
        self._set_now(name, on)

    def set_fault(self, name: str, kind: str, on: bool, delay_s: float | None = None) -> None:
        """``delay_s``: for "slow", seconds added to every request (default ``slow_s``)."""
        self._faults.set(name, kind, on, delay_s)

    def slow_for(self, name: str) -> float:
        return self._faults.delay_for(name, self.slow_s)

    def faulted(self, name: str, kind: str) -> bool:
        return self._faults.has(name, kind)

    def claimed(self, name: str) -> bool | None:
        """What a phantom BMC reads back instead of the truth (None: the truth)."""
        return self._faults.claimed(name)

    def reset(self, name: str, power_on: bool) -> None:
        """Back to a clean server: no faults, default boot device, the given power, nothing pending."""
        self._faults.clear(name)
        self.hardware.reset(name)
        with self._lock:
            self._servers[name].boot_device = "default"
        self._set_now(name, power_on)

    # --- used by the BMC handlers ---------------------------------------------------------
    def request_power(self, name: str, on: bool, cycle: bool = False) -> None:
        """A chassis power command as a BMC received it: lands after ``power_delay_s``."""
        with self._lock:
            self.power_commands[name] += 1
            if self._faults.has(name, "phantom"):
                # Taken and read back as asked; the body's power never changes.
                self._faults.claim(name, on)
                return
            srv = self._servers[name]
            if cycle and srv.on:
                self._apply(name, False)
            if srv.on == on and not cycle:
                srv.pending = None  # last command wins: a pending opposite change is dropped
                self._due.cancel(name)
                return
            srv.pending = on
        self._due.schedule(name, time.time() + self.power_delay_s)

    def _land(self, name: str) -> None:
        with self._lock:
            srv = self._servers[name]
            if srv.pending is None:
                return
            target, srv.pending = srv.pending, None
            self._apply(name, target)

    def _set_now(self, name: str, on: bool) -> None:
        with self._lock:
            self._servers[name].pending = None
            self._due.cancel(name)
            self._apply(name, on)

    def _apply(self, name: str, on: bool) -> None:
        # caller holds the lock
        srv = self._servers[name]
        if srv.on != on:
            srv.on = on
            self._notifier.publish(name, on)


__all__ = ["IpmiLab", "IpmiSystemSpec"]
