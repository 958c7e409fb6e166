"""Free loopback ports for the lab's servers, chosen below the kernel's ephemeral range.

A port found free is only reserved once its server binds it, which may be seconds later (the
controller's ports are chosen when the lab starts). Asking the kernel for port 0 hands out a port
from the ephemeral range, the same range every outgoing connection draws its source port from: with
two test workers and their labs, an outgoing connection took a controller's API port in between.
Ports below that range are never given to outgoing connections, so only another pick can collide,
and the pick is random over thousands of ports and checked by a bind.
"""

from __future__ import annotations

import random
import socket

_LOW = 20000  # above the well-known and registered ports services here use (etcd 2379, tgt 3260, ...)


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int, kinds: tuple[int, ...]) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port(*kinds: int) -> int:
    """A loopback port free for every socket kind given (TCP when none is)."""
    wanted = kinds or (socket.SOCK_STREAM,)
    high = _ephemeral_start() - 1
    low = _LOW if high - _LOW >= 1000 else 1024  # a machine whose ephemeral range starts low
    for _ in range(200):
        port = random.randint(low, high)
        if _bindable(port, wanted):
            return port
    raise OSError("no free loopback port found below the ephemeral range")
