"""Power-off to confirmed read-back, against the lab BMCs with a fixed power delay D = 1.5 s.

Each run: the server is switched on in the lab (at once), then ``off()`` is timed from the call
to its return, which happens only once the BMC *reads* Off. The emulator applies the change
exactly D after the reset request, so confirm_s - D is what the driver adds: its first state
read, the reset request, and the wait until the next poll sees the change.
Goal: confirm_s / D <= 1.1 (median of the runs).

The BMC emulators run in a child process, as a separate device would, so their HTTP/UDP server
work does not compete with the driver for this interpreter.

Run from the repo root: .venv/bin/python bench/power.py
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from aimctl.drivers.ipmi import IpmiPower
from aimctl.drivers.protocols import Power
from aimctl.drivers.redfish import RedfishPower
from bench.common import write_result
from lab.bmc.ipmi import IpmiLab, IpmiSystemSpec
from lab.bmc.redfish import RedfishLab, RedfishSystemSpec

DELAY_S = 1.5
RUNS = 7
GOAL = 1.1
USER, PASSWORD = "bench", "bench-pass-93ab"


def _serve(conn: Connection, kind: str, delay: float) -> None:
    """Child process: one lab BMC; obeys ("on",) and ("stop",) from the pipe."""
    with tempfile.TemporaryDirectory() as tmp:
        lab: Any
        if kind == "redfish":
            lab = RedfishLab([RedfishSystemSpec("s1", power_on=True)], Path(tmp), {USER: PASSWORD}, power_delay_s=delay)
            lab.start()
            conn.send({"url": lab.base_url, "path": lab.system_path("s1")})
        else:
            lab = IpmiLab([IpmiSystemSpec("s1", power_on=True)], {USER: PASSWORD}, power_delay_s=delay)
            conn.send({"port": lab.start()["s1"]})
        while True:
            msg = conn.recv()
            if msg[0] == "on":
                lab.set_power("s1", True)
                conn.send(lab.power("s1"))
            else:
                break
        lab.stop()


def measure(kind: str) -> dict[str, Any]:
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_serve, args=(child, kind, DELAY_S), daemon=True)
    proc.start()
    try:
        where = parent.recv()
        power: Power
        if kind == "redfish":
            power = RedfishPower(where["url"], where["path"], USER, PASSWORD, timeout_s=5, name="s1")
        else:
            power = IpmiPower("127.0.0.1", where["port"], USER, PASSWORD, timeout_s=5, name="s1")
        power.state()  # log in / open the HTTP session once, as a running controller would have
        runs = []
        for _ in range(RUNS):
            parent.send(("on",))
            assert parent.recv() is True
            t0 = time.perf_counter()
            power.off(deadline_s=DELAY_S * 4)
            runs.append(round(time.perf_counter() - t0, 4))
        confirm = statistics.median(runs)
        return {
            "confirm_s": round(confirm, 4),
            "delay_s": DELAY_S,
            "confirm_over_delay": round(confirm / DELAY_S, 4),
            "overhead_s": round(confirm - DELAY_S, 4),
            "runs_s": runs,
            "poll_s": 0.05,
        }
    finally:
        parent.send(("stop",))
        proc.join(timeout=10)


def main() -> int:
    redfish = measure("redfish")
    ipmi = measure("ipmi")
    result = {
        **redfish,  # the headline numbers are Redfish (sushy against the sushy-tools emulator)
        "runs": RUNS,
        "goal_confirm_over_delay": GOAL,
        "goal_met": redfish["confirm_over_delay"] <= GOAL,
        "ipmi": ipmi,
        "method": "median of RUNS power-off calls, each from call to confirmed read-back; BMC in a child process",
    }
    path = write_result("power", result)
    print(f"redfish: confirm {redfish['confirm_s']:.3f}s for D={DELAY_S}s -> {redfish['confirm_over_delay']:.3f} x D")
    print(f"ipmi:    confirm {ipmi['confirm_s']:.3f}s for D={DELAY_S}s -> {ipmi['confirm_over_delay']:.3f} x D")
    print(f"goal <= {GOAL}: {'met' if result['goal_met'] else 'NOT met'}; wrote {path}")
    return 0 if result["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
