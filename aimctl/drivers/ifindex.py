"""SNMP ifIndex of a switch port, as each network OS numbers them (rules in ``switch_templates/os.yaml``).

Traps name a port by ifIndex only; the controller maps it back to (server, channel) through the
cabling. A cable may set ``ifindex`` explicitly when a switch numbers differently.
"""

from __future__ import annotations

from aimctl import netos


def ifindex(os_name: str, port: str) -> int:
    """The ifIndex of ``port`` on an ``os_name`` switch; ValueError when no rule of the OS matches."""
    row = netos.table().get(os_name)
    if row is None:
        raise ValueError(f"no network OS {os_name!r} in the OS table")
    return row.ifindex(port)
