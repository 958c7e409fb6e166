"""Read the world back for a drift pass: one job per device, devices in parallel.

Per device, one session at a time: a switch's ports are read with one ``show`` in one SSH
session (``SwitchPorts.read``, which takes the switch's process-wide lock, so a pass never opens a
second session next to a failover's); a storage array's targets with one listing; a BMC's boot
config, power and inventory one after the other. A device that fails is recorded with its reason
and its checks stay unchecked.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aimctl.drivers.protocols import PowerState

from aimctl.drivers.registry import Drivers
from aimctl.reconcile.expect import Expectation
from aimctl.reconcile.verdict import Observed
from aimctl.secrets import mask


PowerSource = Callable[[str], PowerState | None]


def read_world(drivers: Drivers, ex: Expectation, pool: ThreadPoolExecutor, facts: bool = True,
               power: PowerSource | None = None) -> Observed:
    """``power``: a fresher source of power state than a read (the controller's BMC poller reads
    every body every second); None for a body means "read it here"."""
    ob = Observed()
    macs = {f.server for f in ex.facts if f.macs}
    ports: dict[str, list[str]] = {}
    for p in ex.ports:
        if p.port not in ports.setdefault(p.switch, []):
            ports[p.switch].append(p.port)
    targets: dict[str, list[str]] = {}
    for a in ex.access:
        targets.setdefault(a.storage, []).append(a.target)
    servers: dict[str, set[str]] = {}
    for b in ex.boot:
        servers.setdefault(b.server, set()).add("boot")
    for w in ex.power:
        servers.setdefault(w.server, set()).add("power")
    if facts:
        for f in ex.facts:
            servers.setdefault(f.server, set()).add("facts")

    def switch_job(sw: str, names: list[str]) -> Callable[[], None]:
        def run() -> None:
            for st in drivers.switch(sw).read(names):
                ob.ports[(sw, st.port)] = st
        return run

    def storage_job(name: str, ts: list[str]) -> Callable[[], None]:
        def run() -> None:
            got = drivers.storage(name).read_access(ts)
            for t in ts:
                ob.access[(name, t)] = got.get(t)
        return run

    def server_job(server: str, what: set[str]) -> Callable[[], None]:
        def run() -> None:
            # One BMC, one thing at a time; each read that answers counts even if a later one fails.
            if "power" in what:
                known = power(server) if power is not None else None
                ob.power[server] = known if known is not None else drivers.power(server).state()
            if "boot" in what:
                ob.boot[server] = drivers.bootcfg(server).read()
            if "facts" in what:
                ob.facts[server] = drivers.hardware(server).facts(macs=server in macs)
        return run

    jobs: dict[str, Callable[[], None]] = {}
    jobs.update({sw: switch_job(sw, names) for sw, names in ports.items()})
    jobs.update({st: storage_job(st, ts) for st, ts in targets.items()})
    jobs.update({s: server_job(s, w) for s, w in servers.items()})
    futures: dict[str, Any] = {dev: pool.submit(fn) for dev, fn in jobs.items()}
    for dev, fut in futures.items():
        try:
            fut.result()
        except Exception as exc:  # noqa: BLE001 - the device is unchecked this pass, with its reason
            ob.errors[dev] = mask(str(exc)) or type(exc).__name__
    return ob
