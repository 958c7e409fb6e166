"""What a lifecycle step is given: the failover's context plus what only the lifecycle needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aimctl.agent.wire import Heartbeat
from aimctl.drivers.protocols import Snapshots
from aimctl.failover.context import Ctx, targets_of

# (receiver monotonic time, rehearsal heartbeat, rehearsal heartbeats so far) of a persona
RehearsalSeen = Callable[[str], tuple[float, Heartbeat, int] | None]


@dataclass
class LCtx:
    ctx: Ctx
    rehearsal_seen: RehearsalSeen
    preempted: Callable[[str], str | None]  # operation id -> who pre-empted it, or None
    state_dir: Path
    interval_s: float = 1.0  # agents' heartbeat interval

    def snapshots(self, persona: str) -> Snapshots:
        return self.ctx.drivers.snapshots(self.ctx.defs.personas[persona].spec.storage)

    def luns(self, persona: str) -> list[tuple[str, int]]:
        spec = self.ctx.defs.personas[persona].spec
        return [(spec.boot.target, spec.boot.lun)] + [(d.target, d.lun) for d in spec.data]


__all__ = ["LCtx", "RehearsalSeen", "targets_of"]
