"""Lab start-up and reset of the reference setup: `up_s` (goal <= 20 s on 2 cores), `reset_s` (goal <= 3 s)."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, write_result
from lab import cli, control


def main() -> None:
    state = Path(tempfile.mkdtemp(prefix="aimctl-bench-lab-"))
    t = time.monotonic()
    ready = cli.start(state, ROOT / "personas", power_delay=1.0, boot=1.0, heartbeat=1.0)
    up_s = time.monotonic() - t
    resets = []
    try:
        for _ in range(3):
            t = time.monotonic()
            control.call(state, "reset")
            resets.append(time.monotonic() - t)
    finally:
        cli.stop(state)
    res = {"up_s": round(up_s, 2), "up_inside_s": round(ready["up_s"], 2), "reset_s": round(statistics.median(resets), 2),
           "reset_runs_s": [round(r, 2) for r in resets], "boot_s": 1.0, "power_delay_s": 1.0,
           "setup": "reference personas/ (exchange + web pools: 7 servers, 5 switches, 4 personas)",
           "goals": {"up_s": 20, "reset_s": 3}}
    print(res)
    write_result("lab", res)


if __name__ == "__main__":
    main()
