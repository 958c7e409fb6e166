"""Name patterns both the agent and the controller check (persona names, host names)."""

from __future__ import annotations

import re

# Persona, server, pool, network names: lower-case, DNS-label-like, safe on any command line.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")
# RFC 1123 host names (an IPv4 address fits too: labels of digits).
HOSTNAME_RE = re.compile(r"^(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")


# A rehearsal boots a copy of a persona under this initiator name, so the persona's own LUNs and
# CHAP account never let it in, and the booted OS can tell from its iSCSI boot facts (the iBFT
# initiator name) that it is a rehearsal. No persona's own initiator may end with it.
REHEARSAL_SUFFIX = "-rehearsal"


def rehearsal_initiator(initiator: str) -> str:
    return initiator + REHEARSAL_SUFFIX


def is_rehearsal_initiator(initiator: str) -> bool:
    return initiator.endswith(REHEARSAL_SUFFIX)
