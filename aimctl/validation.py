"""Strict patterns for every value that can reach a switch CLI, a shell or PowerShell.

These are the single source of truth; the model, the drivers and the hooks all call them, so an
injection attempt is refused before any connection is made (DESIGN.md rule 6).
"""

from __future__ import annotations

import re

from aimctl.core.names import HOSTNAME_RE as HOSTNAME_RE  # re-exported: the controller checks both here
from aimctl.core.names import NAME_RE as NAME_RE
from aimctl.core.names import REHEARSAL_SUFFIX as REHEARSAL_SUFFIX  # re-exported
from aimctl.core.names import is_rehearsal_initiator as is_rehearsal_initiator
from aimctl.core.names import rehearsal_initiator as rehearsal_initiator

# RFC 3720 3.2.6.3.1: iqn.YYYY-MM.reversed.domain[:unique]; lower-case, no spaces.
IQN_RE = re.compile(r"^iqn\.\d{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[a-z0-9.:_-]{1,200})?\Z")
# Exchange object names reaching PowerShell: letters, digits, dash, underscore; no quotes, no $.
PS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
DESCRIPTION_RE = re.compile(r"^[A-Za-z0-9 ._:/-]{0,64}\Z")
# A change record's number as the operator's change-management system gives it (``move --change``):
# aimctl adopts it for the operation's change record, so ``aimctl approve CHG...`` finds it.
CHANGE_RE = re.compile(r"^CHG[0-9]{7}\Z")
# The one form of an SSH target (a hook's ``via``, a storage array's ``management``).
SSH_URL_RE = re.compile(r"^ssh://(?P<user>[A-Za-z0-9_.-]{1,64})@(?P<host>[A-Za-z0-9.-]{1,253})(?::(?P<port>[0-9]{1,5}))?\Z")
# How an SSH server's host key is trusted: ``known-hosts`` (the controller's known_hosts; unknown
# hosts refused), a pinned ``SHA256:<fingerprint>`` as ``ssh-keygen -lf`` prints it, or ``auto-add``
# (any key: the lab's simulators make a fresh key each run). ``auto`` is auto-add's earlier spelling,
# still accepted so definitions that used it keep loading. Accepting any key is only ever asked for
# by name, per target: the default everywhere is ``known-hosts``.
HOST_KEY_RE = re.compile(r"^(known-hosts|auto-add|auto|SHA256:[A-Za-z0-9+/]{43}=?)\Z")
HOST_KEY_ANY = ("auto-add", "auto")
# CHAP credentials reach firmware settings and iPXE scripts (``set password ...``): no spaces,
# quotes, ``$`` (iPXE expansion) or line breaks. RFC 3720 allows more; the controller never needs it.
CHAP_USER_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}\Z")
CHAP_SECRET_RE = re.compile(r"^[A-Za-z0-9._~+/=:@-]{1,255}\Z")

# Port names are per network OS: ``aimctl.netos`` (rows of switch_templates/os.yaml).


def ssh_url_parts(url: str) -> tuple[str, str, int]:
    """``ssh://user@host[:port]`` -> ``(user, host, port)``; ValueError saying the form otherwise."""
    m = SSH_URL_RE.match(url)
    port = int(m["port"] or 22) if m else 0
    if m is None or not HOSTNAME_RE.match(m["host"]) or not 0 < port < 65536:
        raise ValueError(f"SSH target {url!r} refused: want ssh://user@host[:port]")
    return m["user"], m["host"], port


def check_host_key(policy: str) -> str:
    if not HOST_KEY_RE.match(policy):
        raise ValueError(f"host_key {policy!r} refused: want known-hosts, SHA256:<fingerprint> or auto-add (lab)")
    return policy


def valid_vlan(vlan: int) -> bool:
    return isinstance(vlan, int) and not isinstance(vlan, bool) and 1 <= vlan <= 4094
