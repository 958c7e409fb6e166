"""Pieces both BMC emulators share: on-time scheduling, in-order power callbacks, fault flags.

The emulators keep a *true* power state per server and apply a pending change after a fixed delay.
Host simulators learn of real changes through ``subscribe`` callbacks, delivered on one notifier
thread so a slow subscriber never stalls a BMC request, and always in the order changes happened.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

# down: no answer; slow: every request waits (0.5 s, or the delay given); lies: power reads On;
# auth: the BMC's credentials changed (every login and request refused as unauthorized);
# phantom: power commands are accepted and read back as asked, but the body's power never changes.
FAULT_KINDS = ("down", "slow", "lies", "auth", "phantom")

PowerCallback = Callable[[str, bool], None]


class Notifier:
    """Deliver ``(server, on)`` to every subscriber, in order, on a thread of its own."""

    def __init__(self, label: str) -> None:
        self._subs: list[PowerCallback] = []
        self._lock = threading.Lock()
        self._q: queue.SimpleQueue[tuple[str, bool] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"{label}-notify", daemon=True)
        self._thread.start()

    def subscribe(self, cb: PowerCallback) -> None:
        with self._lock:
            self._subs.append(cb)

    def publish(self, name: str, on: bool) -> None:
        self._q.put((name, on))

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            with self._lock:
                subs = list(self._subs)
            for cb in subs:
                try:
                    cb(*item)
                except Exception:  # a broken subscriber must not silence the others
                    log.exception("power subscriber failed for %s", item[0])


class DueTimer:
    """Call ``fire(key)`` when a key's due time (``time.time()`` based) arrives.

    One thread sleeps until the earliest due time instead of polling, so a change set to land
    after D seconds lands within a few milliseconds of D. Re-scheduling a key replaces it.
    """

    def __init__(self, label: str, fire: Callable[[str], None]) -> None:
        self._fire = fire
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, tuple[float, int]] = {}
        self._seq = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"{label}-due", daemon=True)
        self._thread.start()

    def schedule(self, key: str, due: float) -> None:
        with self._cond:
            self._seq += 1
            self._due[key] = (due, self._seq)
            heapq.heappush(self._heap, (due, self._seq, key))
            self._cond.notify()

    def cancel(self, key: str) -> None:
        with self._cond:
            self._due.pop(key, None)

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.time()
                    # drop entries that were cancelled or replaced
                    while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][:2]:
                        heapq.heappop(self._heap)
                    if self._heap and self._heap[0][0] <= now:
                        _, _, key = heapq.heappop(self._heap)
                        del self._due[key]
                        break
                    self._cond.wait(timeout=(self._heap[0][0] - now) if self._heap else None)
                else:
                    return
            try:
                self._fire(key)
            except Exception:
                log.exception("applying a due change for %s failed", key)


class Faults:
    """Per-server fault switches of one emulator, read by request handlers on every request."""

    def __init__(self, servers: Iterable[str]) -> None:
        self._servers = frozenset(servers)
        self._on: dict[str, set[str]] = {kind: set() for kind in FAULT_KINDS}
        self._delay: dict[str, float] = {}  # "slow": seconds per request, per server
        # phantom: the power state the BMC says it set (what it reads back), per server
        self._claims: dict[str, bool] = {}

    def set(self, name: str, kind: str, on: bool, delay_s: float | None = None) -> None:
        if name not in self._servers:
            raise KeyError(name)
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; want one of {', '.join(FAULT_KINDS)}")
        (self._on[kind].add if on else self._on[kind].discard)(name)
        if kind == "slow":
            if on and delay_s is not None:
                self._delay[name] = delay_s
            else:
                self._delay.pop(name, None)
        if kind == "phantom" and not on:
            self._claims.pop(name, None)

    def delay_for(self, name: str, default_s: float) -> float:
        return self._delay.get(name, default_s)

    def has(self, name: str, kind: str) -> bool:
        return name in self._on[kind]

    def claim(self, name: str, on: bool) -> None:
        """A phantom BMC took a power command: from now on it reads back ``on``."""
        self._claims[name] = on

    def claimed(self, name: str) -> bool | None:
        """What a phantom BMC reads back (None: no command taken yet, it tells the truth)."""
        return self._claims.get(name) if name in self._on["phantom"] else None

    def clear(self, name: str) -> None:
        for names in self._on.values():
            names.discard(name)
        self._delay.pop(name, None)
        self._claims.pop(name, None)
