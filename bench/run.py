"""`make bench`: every benchmark, then the table in docs/benchmarks.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ["plan", "power", "switch", "heartbeat", "lab", "failover"]

ROWS = [  # (file, key, goal text)
    ("plan", "validate_cold_s", "<= 10 s"), ("plan", "plan_warm_s", "<= 1 s"), ("plan", "peak_rss_mb", "<= 500 MB"),
    ("power", "confirm_over_delay", "<= 1.1"), ("switch", "batched_s", ""), ("switch", "per_port_s", ""),
    ("switch", "batched_over_per_port", "<= 0.25"), ("heartbeat", "verified_per_s_one_core", ">= 50,000"),
    ("heartbeat", "drops_at_20k", "0"), ("heartbeat", "false_dead", "0"), ("heartbeat", "rss_mb", ""),
    ("heartbeat", "detect_intervals", "<= 3"), ("lab", "up_s", "<= 20 s"), ("lab", "reset_s", "<= 3 s"),
    ("failover", "total_s", ""), ("failover", "irreducible_s", ""), ("failover", "overhead_ratio", "<= 1.25"),
    ("failover", "mass_ratio", "<= 2.0"),
]


def main() -> int:
    only = sys.argv[1:] or BENCHES
    failed = []
    for name in only:
        print(f"== bench/{name}.py", flush=True)
        if subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py")], cwd=ROOT).returncode != 0:
            failed.append(name)
    lines = ["# Benchmarks", "", "Written by `make bench` from `bench/results/*.json` (2-core machine).", "",
             "| benchmark | measure | result | goal |", "| --- | --- | --- | --- |"]
    for f, key, goal in ROWS:
        path = ROOT / "bench" / "results" / f"{f}.json"
        val = json.loads(path.read_text()).get(key, "-") if path.exists() else "not run"
        lines.append(f"| {f} | `{key}` | {val} | {goal} |")
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if failed:
        print(f"benchmarks that failed to run: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
