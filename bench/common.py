"""Helpers shared by the benchmarks: where results go, and the table in docs/benchmarks.md."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = dict(data)
    data.setdefault("measured_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    data.setdefault("machine", f"{platform.machine()} {platform.python_version()}")
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def own_peak_rss_mb() -> float:
    """This process's peak resident memory, in MB, counted from its own ``exec``.

    Not ``getrusage().ru_maxrss``: Linux carries the peak of the process that started this one
    across ``vfork`` + ``exec``, so a child started by a large parent (a pytest worker that has run
    hundreds of tests) reports the parent's peak. ``VmHWM`` belongs to this memory image alone."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
