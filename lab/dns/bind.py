"""A real DNS server for the ``dns-update`` hook: a private ``named`` (Debian bind9) on 127.0.0.1.

One master zone that accepts updates signed with one TSIG key, its own config directory (named
writes the zone's journal there), a free port; started only by the tests and demos that need it.
``named -g`` stays in the foreground and logs to stderr, which goes to ``named.log``.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import socket

from lab.ports import free_port
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

NAMED = "/usr/sbin/named"


class BindLab:
    def __init__(self, state: Path, zone: str = "lab.test", key_name: str = "aimctl-key",
                 records: Sequence[str] = ()) -> None:
        self.dir = Path(state)
        self.zone, self.key_name = zone, key_name
        self.secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.records = list(records)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def secret_file(self) -> Path:
        return self.dir / "tsig.secret"

    def start(self, timeout_s: float = 15.0) -> int:
        if not Path(NAMED).exists():
            raise RuntimeError(f"{NAMED} is missing: apt-get install bind9 bind9-utils")
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, mode=0o700)
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.secret)
        self.port = free_port(socket.SOCK_STREAM, socket.SOCK_DGRAM)  # named listens on both
        d = self.dir
        (d / "named.conf").write_text(f"""
key "{self.key_name}" {{ algorithm hmac-sha256; secret "{self.secret}"; }};
options {{
    directory "{d}";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file "{d}/named.pid";
    recursion no;
    notify no;
}};
controls {{ }};
zone "{self.zone}" {{ type master; file "{d}/zone.db"; allow-update {{ key "{self.key_name}"; }}; }};
""")
        (d / "zone.db").write_text("\n".join([
            "$TTL 300",
            f"@ IN SOA ns1.{self.zone}. hostmaster.{self.zone}. 1 3600 600 86400 300",
            f"@ IN NS ns1.{self.zone}.",
            "ns1 IN A 127.0.0.1",
            *self.records, ""]))
        self._log = open(d / "named.log", "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen([NAMED, "-g", "-u", "root", "-c", str(d / "named.conf")], stdout=self._log,
                                      stderr=self._log, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.port

    def _wait(self, timeout_s: float) -> None:
        import dns.message
        import dns.query

        deadline = time.monotonic() + timeout_s
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"named exited {self._proc.returncode}; see {self.dir / 'named.log'}")
            try:
                r = dns.query.tcp(dns.message.make_query(self.zone, "SOA"), "127.0.0.1", port=self.port, timeout=1)
                if r.answer:
                    return
            except (OSError, EOFError, Exception):  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"named not answering after {timeout_s:g}s; see {self.dir / 'named.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def read(self, name: str, rtype: str) -> tuple[int | None, list[str]]:
        """(TTL, values) the server answers for NAME TYPE now: a plain query, unsigned, over UDP."""
        import dns.message
        import dns.query

        r = dns.query.udp(dns.message.make_query(name, rtype), "127.0.0.1", port=self.port, timeout=3)
        for rrset in r.answer:
            return rrset.ttl, sorted(x.to_text() for x in rrset)
        return None, []
