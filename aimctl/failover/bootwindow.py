"""Who may fetch a server's iPXE script, and when: a pure decision over the journal.

The script carries the persona's current CHAP secret. A real iPXE ROM fetches it over plain HTTP
from whatever URL the site's DHCP server hands out, with no credential of its own, so the only
things the controller can check are *who* asks (the address DHCP reserves for that server's boot
NIC, ``boot_address`` in the inventory) and *when* (an operation is powering that server on: from
its bootcfg write until its heartbeat wait ends). Outside that window the script is refused to
everyone, even its own body: a server that reboots on its own later boots from the site's
default, and a copy of the secret fetched then would already be stale at the next fence.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aimctl.journal import Record

# Step results after which the body is no longer being powered on by this operation.
CLOSING_STEPS = frozenset({"heartbeat", "choose", "fence", "done"})


def powering_on(records: Sequence[Record], server: str) -> bool:
    """Whether these records (one running operation, in order) leave ``server`` inside its boot window."""
    open_ = False
    for r in records:
        if r.phase != "result":
            continue
        if r.step == "bootcfg":
            open_ = r.status == "ok" and r.detail.get("server") == server
        elif r.step in CLOSING_STEPS:
            open_ = False
    return open_


def same_address(client: str, declared: str) -> bool:
    try:
        a, b = ipaddress.ip_address(client), ipaddress.ip_address(declared)
    except ValueError:
        return False
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return a == b


def refusal(server: str, client: str, declared: str | None, window_op: str | None) -> str | None:
    """Why the script of ``server`` is not served to ``client`` (None: serve it).

    ``declared`` is the server's boot address from the definitions (None: not declared, the window
    alone decides); ``window_op`` is the operation powering it on now, if any."""
    if declared is not None and not same_address(client, declared):
        return f"request from {client}, not {server}'s boot address {declared}"
    if window_op is None:
        return f"no operation is powering {server} on"
    return None
