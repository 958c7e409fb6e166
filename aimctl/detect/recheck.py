"""Is the body still dead? The verdict asked again at the moment of acting.

A death verdict can be old by the time something acts on it: a trigger waits in the storm brake's
queue, an operation waits for approval, the fence runs seconds after confirm. Before anything is
touched, the controller asks the sources again (``alive_evidence``): if a second source now says the
body is alive, the operation stops, recorded as "not dead after all". A pure function of what the
sources hold now, table-tested like ``detector.decide``.

What counts as alive, by what the operation was started for:

- a death (PersonaDead, PersonaPresumedDead): a fresh heartbeat (any health but ``stopped``: an agent
  that sends is running on a live body), or the body's BMC reading On with no death signal (its SCN
  links not all down, no BMC failure alert since the last heartbeat): rule 2's "unreachable, not
  dead". An old or in-flight BMC answer is not a reading (``bmc`` is then "no-answer"/"unknown");
- the agent's own word that its services failed (PersonaUnhealthy): only fresh heartbeats that say
  the services are fine again; the body being on is expected and proves nothing;
- any body other than the one the verdict was about (a standby given up on): heartbeats only; its
  BMC reads On because we powered it on.

Operations an operator asked for (planned moves, an operator's failover) are the operator's decision
and are not second-guessed here: the daemon does not ask.
"""

from __future__ import annotations

from dataclasses import dataclass

from aimctl.detect.detector import BmcAnswer, Health, LinkState, Params

DEATHS = ("PersonaDead", "PersonaPresumedDead")
UNHEALTHY = "PersonaUnhealthy"


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the sources hold now about a persona and one body."""

    trigger: str  # the detector event the operation was opened for (Event.kind)
    verdict_body: bool  # the body is the one the verdict was about (not a standby given up on)
    hb_age: float | None  # s since the last accepted heartbeat arrived; None: none since the controller started
    interval: float
    health: Health = "ok"  # of the last heartbeat
    bmc: BmcAnswer = "unknown"  # the poller's current reading of the body's BMC
    bmc_read_age: float | None = None  # s since the BMC gave that reading
    links: LinkState = "unknown"  # the body's SCN channels
    bmc_alert: bool = False  # a BMC failure alert arrived after the last heartbeat


def alive_evidence(e: Evidence, params: Params = Params()) -> str | None:
    """One sentence when a second source says the body is alive after all; None while it looks dead."""
    fresh = e.hb_age is not None and e.interval > 0 and e.hb_age <= params.miss_intervals * e.interval
    if fresh:
        beat = f"fresh heartbeats (last {e.hb_age:.1f}s ago, health {e.health})"
        if e.trigger == UNHEALTHY:
            if e.health in ("ok", "degraded"):
                return f"{beat}: its services recovered"
        elif e.health != "stopped":
            return beat
    if not e.verdict_body or e.trigger not in DEATHS:
        return None
    if e.bmc != "on":
        return None
    if e.links == "down":
        return None  # rule 2: linkDown on every SCN channel is a death signal, whatever the BMC says
    if e.bmc_alert:
        return None  # the BMC itself reported the host failed after its last heartbeat
    age = "" if e.bmc_read_age is None else f" ({e.bmc_read_age:.1f}s ago)"
    return f"BMC reads On{age}, SCN links {e.links}, no BMC alert: unreachable, not dead"
