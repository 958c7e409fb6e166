"""The controller's heartbeat receiver: one thread, a blocking ``recvmsg_into`` loop.

Measured on the lab machine, a blocking loop in a thread verifies about four times as many packets
per second as an asyncio datagram protocol, so the hot path is plain code on a plain socket.
Every packet that is not accepted is dropped and counted by cause.

Ages are measured by *arrival*: the kernel stamps each datagram when it lands in the socket
buffer (``SO_TIMESTAMPNS``), and the receiver turns that into this process's monotonic clock
(``now - (wall now - kernel stamp)``: only the short gap between arrival and read is taken from the
wall clock). A backlog that waited in the buffer while the controller stalled therefore counts as
old, never as fresh. The sender's clock is only carried along.

Rehearsal heartbeats (kind 3, signed with the persona's key) are kept in a table of their own: a
spare rehearsal of a persona is never taken as the persona alive, and the kind is inside the tag,
so no packet can move from one table to the other.

Replays: per persona we keep the current boot id and the last accepted sequence. A sequence not
above the last one is a replay. A boot id seen before (the last ``OLD_BOOTS`` are remembered) is an
old boot coming back and is refused; any other new boot id is a restart and is accepted. Boot ids
are random, so older boots beyond that memory cannot be told from new ones; capturing them needs
access to the SCN and they still carry a valid tag only for that persona.

Across restarts: with a ``MarkStore`` (the journal), the marks (boot, sequence, old boots) are
saved every ``flush_s`` by a thread of their own (one cheap transaction for the personas that
moved, never an fsync per packet) and on stop, and loaded at start. Since up to ``flush_s`` of
accepted heartbeats may not have been saved when the controller died, the first ``replay_guard``
sequences above a loaded mark are refused too: a live agent has moved past them by the time a
restarted controller listens (its heartbeats keep coming while the controller is down), a replay
of packets captured before the crash has not.
"""

from __future__ import annotations

import hmac
import logging
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol, Self

from aimctl.agent import wire
from aimctl.errors import ListenError

log = logging.getLogger(__name__)

OLD_BOOTS = 8
SO_RCVBUFFORCE = 33  # Linux <asm-generic/socket.h>; Python does not export it
SO_TIMESTAMPNS = 35  # Linux <asm-generic/socket.h> (SCM_TIMESTAMPNS: a struct timespec per datagram)
_TIMESPEC = struct.Struct("@qq")
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
RCVBUF = 8 * 1024 * 1024
COUNTERS = ("received", "accepted", "bad_signature", "replay", "old_boot", "unknown_persona", "malformed")
_C_RECEIVED, _C_ACCEPTED, _C_BADSIG, _C_REPLAY, _C_OLDBOOT, _C_UNKNOWN, _C_MALFORMED = range(7)


# A persona's replay memory: (boot id, last accepted sequence, boot ids seen before, oldest first).
Mark = tuple[int, int, tuple[int, ...]]


class MarkStore(Protocol):
    """Where the replay memory outlives the process (the controller's journal)."""

    def heartbeat_marks(self) -> dict[str, Mark]: ...

    def save_heartbeat_marks(self, marks: Mapping[str, Mark]) -> None: ...


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
        store: MarkStore | None = None,
        flush_s: float = 1.0,
        replay_guard: int = 3,
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
        self._store, self._flush_s = store, flush_s
        # Taken by the hot path only when a persona changes boot (rare), so marks are read whole.
        self._mark_lock = threading.Lock()
        self._saved: dict[str, Mark] = {}
        self._flusher: threading.Thread | None = None
        self._flush_stop = threading.Event()
        if store is not None:
            self.restore(store.heartbeat_marks(), replay_guard)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # A big buffer absorbs bursts (every agent of a rack waking at once). SO_RCVBUFFORCE passes
        # net.core.rmem_max but needs CAP_NET_ADMIN; without it we take what SO_RCVBUF gives.
        try:
            if not sys.platform.startswith("linux"):
                raise OSError("SO_RCVBUFFORCE is Linux only")
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        # Kernel receive timestamps: a heartbeat's age starts when it arrived, not when it was read.
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise ListenError.from_oserror("persona heartbeats", "UDP", host, port, exc) from None
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
        if self._store is not None:
            self._flusher = threading.Thread(target=self._flush_loop, name="heartbeat-marks", daemon=True)
            self._flusher.start()
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
        if self._flusher is not None:
            self._flush_stop.set()
            self._flusher.join(5)
            self._flusher = None
        if self._store is not None:
            self.flush()  # the receiver is stopped: these marks are the last word

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries

    def last_seen(self, persona: str) -> tuple[float, wire.Heartbeat] | None:
        """(receiver monotonic time when the last accepted heartbeat *arrived*, that heartbeat) or None
        when none was accepted since this receiver started (restored marks are not heartbeats)."""
        s = self._get(persona)
        if s is None or s.beats == 0:
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
        if s is None or s.addr is None or s.beats == 0:
            return False
        req = wire.Heartbeat(persona, s.boot, s.seq, time.time(), wire.Health.OK, "stop", wire.KIND_STOP)
        self._sock.sendto(wire.encode(s.key, req), s.addr)
        return True

    # ------------------------------------------------------------------ replay memory

    def marks(self) -> dict[str, Mark]:
        """Every persona's replay memory now (only personas with a boot seen or restored)."""
        out: dict[str, Mark] = {}
        with self._mark_lock:
            for s in list(self._table.values()):
                if s.boot >= 0:
                    out[s.name] = (s.boot, s.seq, s.old)
        return out

    def restore(self, marks: Mapping[str, Mark], guard: int = 0) -> None:
        """Load saved marks (before start): each current boot's sequences up to ``seq + guard`` are
        refused from now on, and its old boots stay old."""
        with self._mark_lock:
            for name, (boot, seq, old) in marks.items():
                s = self._get(name)
                if s is None:
                    continue  # a persona no longer defined
                s.boot, s.seq, s.old = boot, seq + guard, tuple(old)[-OLD_BOOTS:]
                self._saved[name] = (boot, s.seq, s.old)

    def flush(self) -> int:
        """Save the marks that moved since the last flush; returns how many were saved."""
        if self._store is None:
            return 0
        changed = {n: m for n, m in self.marks().items() if self._saved.get(n) != m}
        if changed:
            try:
                self._store.save_heartbeat_marks(changed)
            except Exception:  # the next flush tries again; reception never depends on the store
                log.exception("saving heartbeat marks failed")
                return 0
            self._saved.update(changed)
        return len(changed)

    def _flush_loop(self) -> None:
        while not self._flush_stop.wait(self._flush_s):
            self.flush()

    # ------------------------------------------------------------------ hot path

    def _loop(self) -> None:
        sock, table, rtable, counts, clock = self._sock, self._table, self._rtable, self._counts, self._clock
        unpack = wire.HEADER.unpack_from
        digest, compare = hmac.digest, hmac.compare_digest
        hlen, tlen, min_len, max_len = wire.HEADER_LEN, wire.TAG_LEN, wire.MIN_LEN, wire.MAX_LEN
        magic_ok, version, kind_hb, kind_rh = wire.MAGIC, wire.VERSION, wire.KIND_HEARTBEAT, wire.KIND_REHEARSAL
        max_health, max_reason = int(wire.Health.STOPPED), wire.MAX_REASON
        wall, stamp, anc_size, mark_lock = time.time, _TIMESPEC.unpack_from, _ANC_SIZE, self._mark_lock
        buf = bytearray(2048)
        mv = memoryview(buf)
        bufs = [mv]
        while True:
            try:
                n, anc, _flags, addr = sock.recvmsg_into(bufs, anc_size)
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
                with mark_lock:  # boot, seq and old change together for marks() readers
                    if s.boot >= 0:
                        s.old = (s.old + (s.boot,))[-OLD_BOOTS:]
                    s.boot, s.seq = boot, seq
            elif seq <= s.seq:
                counts[_C_REPLAY] += 1
                continue
            s.seq, s.sent, s.health, s.addr = seq, sent, health, addr
            s.reason = bytes(mv[hlen + nlen : end]) if rlen else b""
            s.beats += 1
            # Arrival on our clock: how long it sat in the buffer (kernel stamp to now, both wall
            # clock, a short and steady gap) taken off the monotonic now. No stamp: read time.
            now = clock()
            if anc:
                sec, nsec = stamp(anc[0][2])
                waited = wall() - (sec + nsec * 1e-9)
                if waited > 0.0:
                    now -= waited
            s.mono = now
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
