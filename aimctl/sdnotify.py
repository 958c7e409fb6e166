"""systemd's notification protocol (sd_notify), without a library: one datagram to $NOTIFY_SOCKET.

``READY=1`` once the controller serves, ``WATCHDOG=1`` from its loop. With ``WatchdogSec=`` in the
unit, a controller whose loop hangs is killed (and restarted) by systemd — for a leader, before
its etcd lease runs out (aimctl/cluster/aimctl-controller.service). A no-op outside systemd.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    addr = "\0" + path[1:] if path.startswith("@") else path  # '@' names an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval_s() -> float | None:
    """Half of systemd's watchdog timeout (as sd_watchdog_enabled advises), or None without one."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
