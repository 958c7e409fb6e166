"""Events of the watchful controller, beside the detector's own (dead, unreachable, recovered...).

Every event carries its one-sentence reason; ``severity`` says how loudly the alert channels say
it: a *page* wakes someone (an operation stopped for a human, a rack event, a storm pause, the
escalation limit), an *alert* goes to the queue (drift, a suspect body, spares running out), *info*
closes what an alert opened.
"""

from __future__ import annotations

from dataclasses import dataclass

from aimctl.detect.detector import Event


@dataclass(frozen=True, slots=True)
class DriftFound(Event):
    """The world differs from the definitions (``persona``: the persona or body it concerns)."""


@dataclass(frozen=True, slots=True)
class DriftResolved(Event):
    pass


@dataclass(frozen=True, slots=True)
class DriftRepaired(Event):
    pass


@dataclass(frozen=True, slots=True)
class RepairFailed(Event):
    """A drift repair could not be applied or read back; the finding stays open."""


@dataclass(frozen=True, slots=True)
class SuspectBody(Event):
    """A body shows signs of failing (``persona``: the body's server name)."""


@dataclass(frozen=True, slots=True)
class SuspectCleared(Event):
    pass


@dataclass(frozen=True, slots=True)
class SparesExhausted(Event):
    """A pool's k reached 0, or a persona has no qualified standby (``persona``: pool or persona)."""


@dataclass(frozen=True, slots=True)
class SparesRestored(Event):
    pass


@dataclass(frozen=True, slots=True)
class RackEventAlert(Event):
    """Several deaths in one rack at once (``persona``: the rack)."""


@dataclass(frozen=True, slots=True)
class EscalationStop(Event):
    """A persona reached its automatic-failover limit; an operator decides."""


PAGES = ("NeedsOperatorAlert", "RackEventAlert", "EscalationStop", "StormPause")
INFO = ("PersonaRecovered", "DriftResolved", "DriftRepaired", "SuspectCleared", "SparesRestored")


def severity(event: Event) -> str:
    if event.kind in PAGES or event.reason.startswith("PAGE:"):
        return "page"
    if event.kind in INFO:
        return "info"
    return "alert"
