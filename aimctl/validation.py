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

# Port names are per network OS: ``aimctl.netos`` (rows of switch_templates/os.yaml).


def valid_vlan(vlan: int) -> bool:
    return isinstance(vlan, int) and not isinstance(vlan, bool) and 1 <= vlan <= 4094
