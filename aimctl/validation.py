"""Strict patterns for every value that can reach a switch CLI, a shell or PowerShell.

These are the single source of truth; the model, the drivers and the hooks all call them, so an
injection attempt is refused before any connection is made (DESIGN.md rule 6).
"""

from __future__ import annotations

import re

# RFC 3720 3.2.6.3.1: iqn.YYYY-MM.reversed.domain[:unique]; lower-case, no spaces.
IQN_RE = re.compile(r"^iqn\.\d{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[a-z0-9.:_-]{1,200})?\Z")
HOSTNAME_RE = re.compile(r"^(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")
# Exchange object names reaching PowerShell: letters, digits, dash, underscore; no quotes, no $.
PS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
DESCRIPTION_RE = re.compile(r"^[A-Za-z0-9 ._:/-]{0,64}\Z")
# CHAP credentials reach firmware settings and iPXE scripts (``set password ...``): no spaces,
# quotes, ``$`` (iPXE expansion) or line breaks. RFC 3720 allows more; the controller never needs it.
CHAP_USER_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}\Z")
CHAP_SECRET_RE = re.compile(r"^[A-Za-z0-9._~+/=:@-]{1,255}\Z")

# Port names by network OS (netmiko device type). Kept as data: adding an OS adds a row.
PORT_RE: dict[str, re.Pattern[str]] = {
    # PowerConnect 62xx: unit/g|xg port, e.g. 1/g1, 1/xg4
    "dell_powerconnect": re.compile(r"^[1-9]/(g|xg)[1-9][0-9]?\Z"),
    # DNOS6 (N-series): Gi1/0/1, Te1/0/1, Fo1/0/1
    "dell_os6": re.compile(r"^(Gi|Te|Tw|Fo)[1-9]/0/[1-9][0-9]?\Z"),
    "cisco_ios": re.compile(r"^(FastEthernet|GigabitEthernet|TenGigabitEthernet|Fa|Gi|Te)[0-9](/[0-9]{1,2}){1,2}\Z"),
    "arista_eos": re.compile(r"^Ethernet[1-9][0-9]{0,2}(/[1-9])?\Z"),
}


def valid_vlan(vlan: int) -> bool:
    return isinstance(vlan, int) and not isinstance(vlan, bool) and 1 <= vlan <= 4094


def valid_port(os_name: str, port: str) -> bool:
    pat = PORT_RE.get(os_name)
    return bool(pat and pat.match(port))


# A rehearsal boots a copy of a persona under this initiator name, so the persona's own LUNs and
# CHAP account never let it in, and the booted OS can tell from its iSCSI boot facts (the iBFT
# initiator name) that it is a rehearsal. No persona's own initiator may end with it.
REHEARSAL_SUFFIX = "-rehearsal"


def rehearsal_initiator(initiator: str) -> str:
    return initiator + REHEARSAL_SUFFIX


def is_rehearsal_initiator(initiator: str) -> bool:
    return initiator.endswith(REHEARSAL_SUFFIX)
