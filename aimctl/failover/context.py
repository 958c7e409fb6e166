"""What every failover step is given: definitions, journal, drivers and the controller's callbacks."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aimctl.drivers.registry import Drivers
from aimctl.drivers.switch_batch import SwitchBatcher
from aimctl.failover.chap import ChapStore
from aimctl.journal import JournalInterrupted, JournalStore, Operation
from aimctl.loader import Definitions


@dataclass
class Settings:
    power_deadline_s: float = 30.0
    kill_deadline_s: float = 10.0
    boot_timer_override_s: float | None = None  # tests shorten the persona's boot timer
    # A step that changes switches gets this long, retries included, to change all of them (or
    # it restores the ones it changed): a switch that hangs must not hold a failover for long.
    switch_deadline_s: float = 60.0
    heartbeat_poll_s: float = 0.05


@dataclass
class Ctx:
    defs: Definitions
    journal: JournalStore
    drivers: Drivers
    chap: ChapStore
    # (persona, since_wall_time) -> True once a heartbeat arrived after that time
    heartbeat_since: Callable[[str, float], bool]
    run_hooks: Callable[[Operation, str], list[dict[str, Any]]]
    bmc_unhealthy: Callable[[], dict[str, str]] = dict
    change_approved: Callable[[str], bool] = lambda number: False
    # Ask the persona's agent to shut the persona down; True once it said it stopped.
    stop_persona: Callable[[str, float], bool] = lambda persona, deadline_s: False
    # (persona, server) -> a sentence when a second source says the body is alive after all (its BMC
    # reads On and healthy with no death signal, or fresh heartbeats); None while it still looks dead.
    # Asked at the moment of acting (confirm, before any power-off): no live host is fenced.
    alive_evidence: Callable[[str, str], str | None] = lambda persona, server: None
    settings: Settings = field(default_factory=Settings)
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(32, thread_name_prefix="wf"))
    switches: SwitchBatcher = field(init=False)

    def __post_init__(self) -> None:
        self.switches = SwitchBatcher(self.drivers)


def targets_of(ctx: Ctx, persona: str) -> list[str]:
    spec = ctx.defs.personas[persona].spec
    return [spec.boot.target] + [d.target for d in spec.data]


def parallel(ctx: Ctx, jobs: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run independent I/O at once; each result is the value or the exception it raised.

    Except a lost leadership (or journal): that is no job's failure, and it stops the step."""
    futs = {k: ctx.pool.submit(fn) for k, fn in jobs.items()}
    out: dict[str, Any] = {}
    for k, f in futs.items():
        try:
            out[k] = f.result()
        except Exception as exc:  # noqa: BLE001 - the caller decides what each failure means
            out[k] = exc
    for v in out.values():
        if isinstance(v, JournalInterrupted):
            raise v
    return out
