"""The access observer: proves, from the target's side, that no LUN is used by two bodies at once.

It reads ``tgtadm --op show --mode target`` every ``interval_s`` (10 Hz by default) and looks at
each target's I_T nexus list: ``Initiator: <iqn> alias: <server>``. Two different aliases on one
target in one sample is a double access — whatever the initiator names (a moved persona keeps its
name, so the alias, set to the server's name by the host, is what tells bodies apart). A nexus
without alias (a probe such as ``iscsi-inq``) is counted apart and is not a body.

The verdict also says how well it looked: samples, failed reads and the longest gap between two
good samples, so a quiet verdict from an observer that could not see is not taken for a clean one.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import Any

from aimctl.drivers.tgt_show import parse_targets

log = logging.getLogger(__name__)

MAX_EVIDENCE = 200  # kept samples of double access; the count goes on


class AccessObserver:
    def __init__(self, tgtadm_env: Mapping[str, str], interval_s: float = 0.1) -> None:
        self.env = {**os.environ, **tgtadm_env}
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget what was seen (the lab's reset); sampling goes on."""
        with self._lock:
            self._samples = 0
            self._errors = 0
            self._double = 0
            self._unaliased = 0
            self._evidence: list[dict[str, Any]] = []
            self._last_error = ""
            self._last_ok: float | None = None
            self._max_gap = 0.0
            self._started = time.monotonic()
            self._seen: set[tuple[str, tuple[str, ...]]] = set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        with self._lock:
            self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="access-observer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.sample()
            next_at += self.interval_s
            now = time.monotonic()
            next_at = max(next_at, now)  # after a slow read keep the rate; do not burst to catch up
            self._stop.wait(next_at - now)

    def sample(self) -> None:
        """One read of the target's view (also callable directly, e.g. right after a failover step)."""
        t_wall, t0 = time.time(), time.monotonic()
        try:
            p = subprocess.run(["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"], env=self.env,
                               capture_output=True, text=True, timeout=5, check=False)
            ok, out, err = p.returncode == 0, p.stdout, (p.stderr or p.stdout).strip()
        except (subprocess.TimeoutExpired, OSError) as exc:
            ok, out, err = False, "", str(exc)
        with self._lock:
            if not ok:
                self._errors += 1
                self._last_error = err[:200]
                return
            self._samples += 1
            if self._last_ok is not None:
                self._max_gap = max(self._max_gap, t0 - self._last_ok)
            self._last_ok = t0
            for name, view in parse_targets(out).items():
                aliases = sorted({n.alias for n in view.sessions if n.alias})
                self._unaliased += sum(1 for n in view.sessions if not n.alias)
                if len(aliases) > 1:
                    self._double += 1
                    if len(self._evidence) < MAX_EVIDENCE:
                        self._evidence.append({"time": round(t_wall, 3), "target": name, "aliases": aliases,
                                               "initiators": sorted({n.initiator for n in view.sessions})})
                    if (name, tuple(aliases)) not in self._seen:  # once per episode, not 10 times a second
                        self._seen.add((name, tuple(aliases)))
                        log.warning("double access to %s: %s", name, ", ".join(aliases))

    def verdict(self) -> dict[str, Any]:
        with self._lock:
            elapsed = time.monotonic() - self._started
            return {
                "samples": self._samples,
                "double_access": self._double,
                "evidence": list(self._evidence),
                "errors": self._errors,
                "last_error": self._last_error,
                "unaliased_nexus": self._unaliased,
                "max_gap_s": round(self._max_gap, 3),
                "rate_hz": round(self._samples / elapsed, 1) if elapsed > 0 else 0.0,
            }
