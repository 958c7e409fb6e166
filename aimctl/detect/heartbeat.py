"""The controller's heartbeat receiver: one thread, a blocking ``recv_into`` loop.

Measured on the lab machine, a blocking loop in a thread verifies about four times as many packets
per second as an asyncio datagram protocol, so the hot path is plain code on a plain socket.
Every packet that is not accepted is dropped and counted by cause. Ages are measured on this
process's monotonic clock when a packet arrives; the sender's clock is only carried along.

Rehearsal heartbeats (kind 3, signed with the persona's key) are kept in a table of their own: a
spare rehearsal of a persona is never taken as the persona alive, and the kind is inside the tag,
so no packet can move from one table to the other.

Replays: per persona we keep the current boot id and the last accepted sequence. A sequence not
above the last one is a replay. A boot id seen before (the last ``OLD_BOOTS`` are remembered) is an
old boot coming back and is refused; any other new boot id is a restart and is accepted. Boot ids
are random, so older boots beyond that memory cannot be told from new ones; capturing them needs
access to the SCN and they still carry a valid tag only for that persona.
"""

from __future__ import annotations

import hmac
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Self

from aimctl.agent import wire

log = logging.getLogger(__name__)

OLD_BOOTS = 8
SO_RCVBUFFORCE = 33  # Linux <asm-generic/socket.h>; Python does not export it
RCVBUF = 8 * 1024 * 1024
COUNTERS = ("received", "accepted", "bad_signature", "replay", "old_boot", "unknown_persona", "malformed")
_C_RECEIVED, _C_ACCEPTED, _C_BADSIG, _C_REPLAY, _C_OLDBOOT, _C_UNKNOWN, _C_MALFORMED = range(7)


class _Seen:
    """Lean per-persona state: ~10 slots; the Heartbeat object is built only when asked for."""

    __slots__ = ("addr", "beats", "boot", "health", "key", "mono", "name", "old", "reason", "sent", "seq")

    def __init__(self, name: str, key: bytes) -> None:
        self.name = name
        self.key = key
        self.boot = -1
        self.seq = 0
        self.mono = 0.0
        self.sent = 0.0
        self.health = 0
        self.reason = b""
        self.beats = 0
        self.addr: tuple[str, int] | None = None
        self.old: tuple[int, ...] = ()


NewBootCallback = Callable[[str, wire.Heartbeat], None]


class HeartbeatReceiver:
    def __init__(
        self,
        host: str,
        port: int,
        keys: Mapping[str, bytes],
        clock: Callable[[], float] = time.monotonic,
        on_new_boot: NewBootCallback | None = None,
    ) -> None:
        self._host = host
        self._clock = clock
        self._on_new_boot = on_new_boot
        self._table: dict[bytes, _Seen] = {}
        self._rtable: dict[bytes, _Seen] = {}
        for name, key in keys.items():
            self._table[name.encode("ascii")] = _Seen(name, key)
            self._rtable[name.encode("ascii")] = _Seen(name, key)
        self._counts = [0] * len(COUNTERS)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # A big buffer absorbs bursts (every agent of a rack waking at once). SO_RCVBUFFORCE passes
        # net.core.rmem_max but needs CAP_NET_ADMIN; without it we take what SO_RCVBUF gives.
        try:
            if not sys.platform.startswith("linux"):
                raise OSError("SO_RCVBUFFORCE is Linux only")
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self._sock.bind((host, port))
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def rcvbuf(self) -> int:
        """The receive buffer the kernel granted, bytes."""
        return int(self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._loop, name="heartbeat-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        if self._thread is not None:
            # A blocking recv has no timeout (a timeout costs a poll() per packet): wake it instead.
            wake_host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                while self._thread.is_alive():
                    s.sendto(b"\0", (wake_host, self.port))
                    self._thread.join(0.2)
            self._thread = None
        self._sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries

    def last_seen(self, persona: str) -> tuple[float, wire.Heartbeat] | None:
        """(receiver monotonic time of the last accepted heartbeat, that heartbeat) or None."""
        s = self._get(persona)
        if s is None or s.boot < 0:
            return None
        hb = wire.Heartbeat(
            s.name, s.boot, s.seq, s.sent, wire.Health(s.health), s.reason.decode("utf-8", "replace")
        )
        return s.mono, hb

    def last_rehearsal(self, persona: str) -> tuple[float, wire.Heartbeat, int] | None:
        """(receiver monotonic time, heartbeat, rehearsal heartbeats so far) of the persona's rehearsal."""
        s = self._rtable.get(persona.encode("ascii", "replace"))
        if s is None or s.boot < 0:
            return None
        hb = wire.Heartbeat(s.name, s.boot, s.seq, s.sent, wire.Health(s.health),
                            s.reason.decode("utf-8", "replace"), wire.KIND_REHEARSAL)
        return s.mono, hb, s.beats

    def beats(self, persona: str) -> int:
        """How many heartbeats of this persona were accepted since start (detector hysteresis)."""
        s = self._get(persona)
        return 0 if s is None else s.beats

    def address(self, persona: str) -> tuple[str, int] | None:
        """Where the persona's last accepted heartbeat came from (its agent, or the SCN relay)."""
        s = self._get(persona)
        return None if s is None else s.addr

    def _get(self, persona: str) -> _Seen | None:
        return self._table.get(persona.encode("ascii", "replace"))

    def counters(self) -> dict[str, int]:
        return dict(zip(COUNTERS, self._counts))

    def set_key(self, persona: str, key: bytes) -> None:
        """Add a persona or replace its key (state is kept for an existing persona)."""
        raw = persona.encode("ascii")
        for table in (self._table, self._rtable):
            s = table.get(raw)
            if s is None:
                table[raw] = _Seen(persona, key)
            else:
                s.key = key

    def send_stop(self, persona: str) -> bool:
        """Ask the persona's agent to stop the persona (planned failback).

        Sent to the address its last heartbeat came from, signed with its key, bound to its current
        boot and echoing its last sequence as a nonce, so the request cannot be replayed to a later
        boot. False when no heartbeat was seen yet.
        """
        s = self._get(persona)
        if s is None or s.addr is None or s.boot < 0:
            return False
        req = wire.Heartbeat(persona, s.boot, s.seq, time.time(), wire.Health.OK, "stop", wire.KIND_STOP)
        self._sock.sendto(wire.encode(s.key, req), s.addr)
        return True

    # ------------------------------------------------------------------ hot path

    def _loop(self) -> None:
        sock, table, rtable, counts, clock = self._sock, self._table, self._rtable, self._counts, self._clock
        unpack = wire.HEADER.unpack_from
        digest, compare = hmac.digest, hmac.compare_digest
        hlen, tlen, min_len, max_len = wire.HEADER_LEN, wire.TAG_LEN, wire.MIN_LEN, wire.MAX_LEN
        magic_ok, version, kind_hb, kind_rh = wire.MAGIC, wire.VERSION, wire.KIND_HEARTBEAT, wire.KIND_REHEARSAL
        max_health, max_reason = int(wire.Health.STOPPED), wire.MAX_REASON
        buf = bytearray(2048)
        mv = memoryview(buf)
        while True:
            try:
                n, addr = sock.recvfrom_into(buf)
            except OSError:
                if self._stopping:
                    return
                log.exception("heartbeat socket error")
                continue
            if self._stopping:
                return
            counts[_C_RECEIVED] += 1
            if n < min_len or n > max_len:
                counts[_C_MALFORMED] += 1
                continue
            magic, ver, kind, health, nlen, rlen, boot, seq, sent = unpack(buf, 0)
            if (
                magic != magic_ok
                or ver != version
                or (kind != kind_hb and kind != kind_rh)
                or health > max_health
                or nlen == 0
                or rlen > max_reason
                or hlen + nlen + rlen + tlen != n
            ):
                counts[_C_MALFORMED] += 1
                continue
            s = (table if kind == kind_hb else rtable).get(bytes(mv[hlen : hlen + nlen]))
            if s is None:
                counts[_C_UNKNOWN] += 1
                continue
            end = n - tlen
            if not compare(digest(s.key, mv[:end], "sha256")[:tlen], mv[end:n]):
                counts[_C_BADSIG] += 1
                continue
            new_boot = boot != s.boot
            if new_boot:
                if boot in s.old:
                    counts[_C_OLDBOOT] += 1
                    continue
                if s.boot >= 0:
                    s.old = (s.old + (s.boot,))[-OLD_BOOTS:]
                s.boot = boot
            elif seq <= s.seq:
                counts[_C_REPLAY] += 1
                continue
            s.seq, s.sent, s.health, s.addr = seq, sent, health, addr
            s.reason = bytes(mv[hlen + nlen : end]) if rlen else b""
            s.beats += 1
            s.mono = clock()
            counts[_C_ACCEPTED] += 1
            if new_boot and self._on_new_boot is not None and kind == kind_hb:
                self._notify_new_boot(s)

    def _notify_new_boot(self, s: _Seen) -> None:
        seen = self.last_seen(s.name)
        if seen is None or self._on_new_boot is None:
            return
        try:
            self._on_new_boot(s.name, seen[1])
        except Exception:  # a broken callback must not stop heartbeat reception
            log.exception("new-boot callback failed for %s", s.name)
