"""SNMP ifIndex of a switch port, as each network OS numbers them (data, not code paths).

Traps name a port by ifIndex only; the controller maps it back to (server, channel) through the
cabling. A cable may set ``ifindex`` explicitly when a switch numbers differently.
"""

from __future__ import annotations

import re

# (pattern, formula over the named groups) per OS, first match wins.
_TABLE: dict[str, list[tuple[re.Pattern[str], str]]] = {
    # PowerConnect 62xx: 1..48 copper, then 10G ports; each stack unit adds 64.
    "dell_powerconnect": [(re.compile(r"^(?P<u>\d+)/g(?P<n>\d+)$"), "(u-1)*64 + n"),
                          (re.compile(r"^(?P<u>\d+)/xg(?P<n>\d+)$"), "(u-1)*64 + 48 + n")],
    # DNOS6 (N-series): one block of 128 per unit; 10G ports first.
    "dell_os6": [(re.compile(r"^(?:Gi|Te|Tw|Fo)(?P<u>\d+)/0/(?P<n>\d+)$"), "(u-1)*128 + n")],
    # IOS access switches: module/port -> 10000 + module*100 + port (Catalyst numbering).
    "cisco_ios": [(re.compile(r"^(?:Fa|Gi|Te|FastEthernet|GigabitEthernet|TenGigabitEthernet)"
                              r"(?P<m>\d+)/(?P<n>\d+)$"), "10000 + (m+1)*100 + n")],
    "arista_eos": [(re.compile(r"^Ethernet(?P<n>\d+)$"), "n")],
}


def ifindex(os_name: str, port: str) -> int:
    for pattern, formula in _TABLE.get(os_name, []):
        m = pattern.match(port)
        if m:
            names = {k: int(v) for k, v in m.groupdict().items()}
            return int(eval(formula, {"__builtins__": {}}, names))
    raise ValueError(f"no ifIndex rule for {os_name} port {port!r}")
