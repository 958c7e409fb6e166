"""`make bench`: every benchmark, then the table in docs/benchmarks.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ["plan", "power", "switch", "heartbeat", "lab", "failover", "drift", "lifecycle", "ha", "console"]

ROWS = [  # (file, key, goal text)
    ("plan", "validate_cold_s", "<= 10 s"), ("plan", "plan_warm_s", "<= 1 s"), ("plan", "peak_rss_mb", "<= 500 MB"),
    ("plan", "bad_tree_s", "<= 5 s"), ("plan", "bad_tree_cpu_s", ""), ("plan", "bad_tree_rss_mb", "<= 300 MB"),
    ("power", "confirm_over_delay", "<= 1.1"), ("switch", "batched_s", ""), ("switch", "per_port_s", ""),
    ("switch", "batched_over_per_port", "<= 0.25"), ("heartbeat", "verified_per_s_one_core", ">= 50,000"),
    ("heartbeat", "verified_per_s_one_core_with_marks", ">= 50,000"), ("heartbeat", "marks_flush_1000_ms", ""),
    ("heartbeat", "drops_at_20k", "0"), ("heartbeat", "false_dead", "0"), ("heartbeat", "rss_mb", ""),
    ("heartbeat", "detect_intervals", "<= 3"), ("lab", "up_s", "<= 20 s"), ("lab", "reset_s", "<= 3 s"),
    ("failover", "total_s", ""), ("failover", "irreducible_s", ""), ("failover", "overhead_ratio", "<= 1.25"),
    ("failover", "mass_ratio", "<= 2.0"),
    ("drift", "reference_pass_s", ""), ("drift", "reference_sessions_per_switch", "1 each"),
    ("drift", "generated_pass_s", ""), ("drift", "sessions_per_switch", "1 each"),
    ("drift", "cpu_s_per_1000_personas", ""), ("drift", "verdict_cpu_s_per_1000_personas", ""),
    ("lifecycle", "snapshot_over_cp", ""), ("lifecycle", "snapshot_over_cp_sparse", ""),
    ("lifecycle", "frozen_filled_s", ""), ("lifecycle", "clone_over_cp", ""), ("lifecycle", "rehearsal_s", ""),
    ("lifecycle", "rehearsal_over_boot", ""),
    ("ha", "ttl_s", ""), ("ha", "takeover_s", ""), ("ha", "takeover_over_ttl", "<= 1.2"),
    ("ha", "killed_in_switch_extra_s", "<= TTL + 1 s (7 s)"),
    ("ha", "write_p50_ms_etcd", ""), ("ha", "write_p99_ms_etcd", ""),
    ("ha", "write_p50_ms_sqlite", ""), ("ha", "write_p99_ms_sqlite", ""),
    ("console", "dashboard_p50_ms", ""), ("console", "dashboard_p99_ms", "<= 300 ms"),
    ("console", "dashboard_kb", "<= 150 kB"), ("console", "dashboard_cpu_p99_ms", ""),
    ("console", "loadavg_1m_at_end", ""), ("console", "live_update_ms", "<= 500 ms"),
    ("soak", "minutes", ">= 30"), ("soak", "rounds", ""), ("soak", "fault_kinds", ">= 15"),
    ("soak", "violations", "0"), ("soak", "needs_operator", ""), ("soak", "controller_restarts", ""),
    ("soak", "double_access", "0"),
]
NOTES = """
Notes:
- `ha` runs three controllers on a three-member etcd with the default timing (TTL 6 s, renew 2 s,
  retry 1.5 s). `takeover_s` is from the leader's SIGKILL to the new leader's first journal write
  (median of a kill in the switch step and one in the heartbeat step); the etcd write latency is
  one intent record, one transaction compared against the fencing token, on three members.
- The lab's Redfish BMCs serve HTTPS with a self-signed certificate that the controller verifies
  (its path is in the lab overlay). The lab's HTTP server closes every connection, so each Redfish
  request is a fresh TLS handshake (real BMCs keep connections): measured A/B on one tree, a single
  failover took 10.17 s over TLS against 10.06 s over plain HTTP, and the 20-body `mass_ratio`
  2.17 against 1.97.
- `plan.bad_tree_*` are the worst of the hostile definition trees in `tests/badtrees.py` (a file over
  the size limit, 99,000 bad servers in one file, 233,000 entries, an alias bomb, nesting 200,000
  deep, 20,001 files, a tree just under the 12 MiB limit wrong only in its last persona...), each
  loaded in a fresh process; per-tree figures are in `bench/results/plan.json`. The slowest is the
  largest tree a limit allows, which must be validated whole before its one problem is found.
- `soak` is written by `make soak` (30 minutes, not part of `make bench`): the chaos soak's rounds,
  the faults injected per kind (`faults` in `bench/results/soak.json`), the operations that stopped
  for an operator and were answered through the command line, and every invariant violation with
  its seed and round.
- `heartbeat.verified_per_s_one_core` is per second of the receiver thread's CPU time (the wall-clock
  figure, `verified_per_s_wall`, depends on what else the 2 cores run; both are in the JSON). Each
  datagram is read with its kernel arrival stamp (`SO_TIMESTAMPNS`). `_with_marks` saves the replay
  memory to a journal every 0.25 s meanwhile (the flusher's CPU counted); `marks_flush_1000_ms` is
  one save of 1000 moved marks.
- `failover.total_s` runs from the power button to the persona's first heartbeat on the standby with
  a 1 s BMC power delay, a 5 s boot and 1 s heartbeats (irreducible 8 s); per-step medians are in
  `bench/results/failover.json`.
- `failover.mass_ratio` (20 of 40 bodies at once, one PDU trip) misses its goal. Switch changes of
  concurrent failovers are merged per switch (26 sessions instead of 80) and operations open off the
  detector loop, but the lab's four fake switches share one Twisted reactor thread and the 20 storage
  fences queue on one tgtd, all on two cores next to 40 simulated hosts: the switch step's median is
  about 5 s in the storm against 0.5 s alone.
- `drift.*`: one full drift pass. `reference` is the reference lab (7 bodies, 5 switches); `generated` is
  200 Redfish bodies / 160 personas on 4 PowerConnect lab switches (200 ports each) and 160 tgt targets.
  Sessions are counted by the lab switches themselves. The pass's CPU is almost all HTTP client work
  for the BMC reads (boot config, power, inventory: about 2 ms of CPU per Redfish GET; the lab emulator
  closes every connection, so each GET also reconnects); the verdict itself (`verdict_cpu_s_per_1000_personas`)
  is a small part. In the controller, power comes from the BMC poller's answers instead of a read.
- `lifecycle.snapshot_over_cp` is a snapshot of a filled 1 GiB LUN (freeze, drain, copy, fsync,
  rename, size read-back, thaw) against a plain `cp` of its file (no fsync; `cp` + `sync` is in the
  JSON and slower than the snapshot). This machine's ext4 has no reflink: the copy is real, and
  `frozen_filled_s` — how long the persona's target refused I/O — is the copy's own time (commands
  arriving meanwhile are retried by the initiator after its SCSI timeout). On xfs or btrfs the copy
  shares extents and the freeze is milliseconds whatever the size. `_sparse`: both take milliseconds
  (cp skips the holes); the snapshot's ~30 ms are its dozen tgtadm and coreutils round trips.
  Figures move by up to 2x between runs on this shared 2-core machine.
- `lifecycle.rehearsal_over_boot` is a whole spare rehearsal (clone, boot config, ports to the
  rehearsal VLAN, power on, boot, 3 healthy rehearsal heartbeats, teardown) against the persona's
  boot in the lab (power-on read back to its first heartbeat: 1 s power delay, 5 s boot, 1 s
  heartbeats); per-step medians are in `bench/results/lifecycle.json`.
- `console.*`: 10,000 personas in 200 pools with 5,000 finished operations in the journal, the
  dashboard fetched over HTTP with a session (200 requests). It shares two cores with whatever else
  runs: `loadavg_1m_at_end` says how busy they were, and `dashboard_cpu_p99_ms` is the same page's
  cost in CPU time of the thread building it. `live_update_ms` is measured in Chromium, from a step
  record's commit to its row in the open timeline (median of 15).
"""


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    only = [] if "--table" in sys.argv else (args or BENCHES)
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
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(lines) + "\n" + NOTES)
    print("\n".join(lines))
    if failed:
        print(f"benchmarks that failed to run: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
