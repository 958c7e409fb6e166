"""Name patterns both the agent and the controller check (persona names, host names)."""

from __future__ import annotations

import re

# Persona, server, pool, network names: lower-case, DNS-label-like, safe on any command line.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")
# RFC 1123 host names (an IPv4 address fits too: labels of digits).
HOSTNAME_RE = re.compile(r"^(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")
