"""Heartbeat wire format and the receiver's accept/drop rules, over a real UDP socket."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from aimctl.agent import wire
from aimctl.agent.wire import Health, Heartbeat
from aimctl.detect.heartbeat import HeartbeatReceiver
from aimctl.errors import ListenError

KEY = b"k" * 32
OTHER = b"o" * 32


def wait_for(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.005)


def hb(seq: int, boot: int = 7, persona: str = "exchange1", **kw: object) -> Heartbeat:
    return Heartbeat(persona, boot, seq, kw.pop("sent_at", time.time()), **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- wire


def test_roundtrip_sign_verify() -> None:
    h = hb(5, health=Health.DEGRADED, reason="smtp: restarted 1/3")
    buf = wire.encode(KEY, h)
    assert len(buf) < 100
    assert wire.verify(KEY, buf)
    assert wire.decode(buf) == h
    assert wire.decode_verified(KEY, buf) == h


def test_wrong_key_and_any_flipped_byte_fail_verification() -> None:
    buf = wire.encode(KEY, hb(1))
    assert not wire.verify(OTHER, buf)
    for i in range(len(buf)):
        bad = bytearray(buf)
        bad[i] ^= 0x01
        assert not wire.verify(KEY, bytes(bad)), f"flip at byte {i} went unnoticed"


def test_reason_truncated_on_a_character_boundary() -> None:
    buf = wire.encode(KEY, hb(1, reason="é" * 100))
    reason = wire.decode(buf).reason
    assert len(reason.encode()) <= wire.MAX_REASON
    assert set(reason) == {"é"}


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:10],  # too short
        lambda b: b"XX" + b[2:],  # bad magic
        lambda b: b[:2] + b"\x09" + b[3:],  # unknown version
        lambda b: b[:5] + b"\x20" + b[6:],  # name length does not add up
        lambda b: b + b"\0",  # trailing byte
    ],
)
def test_decode_refuses_malformed(mangle: Callable[[bytes], bytes]) -> None:
    with pytest.raises(wire.MalformedPacket):
        wire.decode(mangle(wire.encode(KEY, hb(1))))


def test_encode_refuses_bad_names() -> None:
    with pytest.raises(ValueError):
        wire.encode(KEY, hb(1, persona=""))
    with pytest.raises(ValueError):
        wire.encode(KEY, hb(1, persona="x" * 64))


# ---------------------------------------------------------------------------- receiver

Clock = Callable[[], float]


@pytest.fixture
def new_boots() -> list[tuple[str, int]]:
    return []


@pytest.fixture
def receiver(new_boots: list[tuple[str, int]]) -> Iterator[HeartbeatReceiver]:
    r = HeartbeatReceiver(
        "127.0.0.1",
        0,
        {"exchange1": KEY, "exchange2": OTHER},
        clock=lambda: 42.0,
        on_new_boot=lambda p, h: new_boots.append((p, h.boot_id)),
    )
    r.start()
    yield r
    r.stop()


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


def send(r: HeartbeatReceiver, s: socket.socket, packet: bytes, counter: str) -> None:
    """Send one packet and wait until the receiver has counted it under ``counter``."""
    before = r.counters()[counter]
    s.sendto(packet, ("127.0.0.1", r.port))
    wait_for(lambda: r.counters()[counter] == before + 1)


def test_accepts_and_records_on_the_receivers_clock(
    receiver: HeartbeatReceiver, sender: socket.socket
) -> None:
    # Sender clock a day ahead: carried along, never used for ages.
    send(receiver, sender, wire.encode(KEY, hb(1, sent_at=time.time() + 86400)), "accepted")
    seen = receiver.last_seen("exchange1")
    assert seen is not None
    mono, got = seen
    # The receiver's clock read 42.0; arrival is that minus the time the packet sat in the buffer.
    assert 41.5 < mono <= 42.0
    assert got.seq == 1 and got.boot_id == 7
    assert receiver.beats("exchange1") == 1
    assert receiver.last_seen("exchange2") is None


def test_forged_tag_is_dropped_and_counted(receiver: HeartbeatReceiver, sender: socket.socket) -> None:
    send(
        receiver, sender, wire.encode(OTHER, hb(1)), "bad_signature"
    )  # exchange1 signed with exchange2's key
    assert receiver.last_seen("exchange1") is None
    assert receiver.counters()["accepted"] == 0


def test_replayed_and_older_packets_are_rejected(receiver: HeartbeatReceiver, sender: socket.socket) -> None:
    first, second = wire.encode(KEY, hb(1)), wire.encode(KEY, hb(2))
    send(receiver, sender, first, "accepted")
    send(receiver, sender, second, "accepted")
    send(receiver, sender, second, "replay")
    send(receiver, sender, first, "replay")
    assert receiver.last_seen("exchange1")[1].seq == 2  # type: ignore[index]
    assert receiver.beats("exchange1") == 2


def test_unknown_persona_and_garbage_are_counted(receiver: HeartbeatReceiver, sender: socket.socket) -> None:
    send(receiver, sender, wire.encode(KEY, hb(1, persona="intruder")), "unknown_persona")
    send(receiver, sender, b"\x00" * 60, "malformed")
    send(receiver, sender, wire.encode(KEY, hb(1))[:-1], "malformed")
    c = receiver.counters()
    assert c["received"] == 3 and c["accepted"] == 0


def test_restart_with_new_boot_is_accepted_old_boot_is_not(
    receiver: HeartbeatReceiver, sender: socket.socket, new_boots: list[tuple[str, int]]
) -> None:
    send(receiver, sender, wire.encode(KEY, hb(100, boot=1)), "accepted")
    # The agent restarted: new boot id, sequence starts over.
    send(receiver, sender, wire.encode(KEY, hb(1, boot=2)), "accepted")
    assert receiver.last_seen("exchange1")[1].boot_id == 2  # type: ignore[index]
    # A recorded packet of the old boot, even with a higher sequence, is refused.
    send(receiver, sender, wire.encode(KEY, hb(101, boot=1)), "old_boot")
    assert receiver.last_seen("exchange1")[1].boot_id == 2  # type: ignore[index]
    send(receiver, sender, wire.encode(KEY, hb(2, boot=2)), "accepted")
    assert new_boots == [("exchange1", 1), ("exchange1", 2)]


def test_send_stop_reaches_the_agent_socket(receiver: HeartbeatReceiver, sender: socket.socket) -> None:
    assert not receiver.send_stop("exchange1")  # nothing heard yet: nowhere to send
    send(receiver, sender, wire.encode(KEY, hb(9, boot=5)), "accepted")
    assert receiver.send_stop("exchange1")
    sender.settimeout(3)
    data, _ = sender.recvfrom(512)
    req = wire.decode_verified(KEY, data)
    assert (req.kind, req.persona, req.boot_id, req.seq) == (wire.KIND_STOP, "exchange1", 5, 9)


def test_stop_is_prompt() -> None:
    r = HeartbeatReceiver("127.0.0.1", 0, {"a": KEY}).start()
    t0 = time.monotonic()
    r.stop()
    assert time.monotonic() - t0 < 3.0  # woken at once; without the wake it would block forever


# ---------------------------------------------------------------------------- arrival time


def test_a_backlog_is_timed_by_arrival_not_by_read() -> None:
    """Issue 11 hole 12: packets that waited in the socket buffer while the controller stalled were
    stamped when read, so a backlog counted as fresh. The kernel's receive stamp times them now."""
    r = HeartbeatReceiver("127.0.0.1", 0, {"exchange1": KEY})
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(wire.encode(KEY, hb(1)), ("127.0.0.1", r.port))
        arrived = time.monotonic()
        time.sleep(0.4)  # the stall itself (the receiver is not reading yet), not a wait for a condition
        r.start()
        wait_for(lambda: r.counters()["accepted"] == 1)
        read = time.monotonic()
        seen = r.last_seen("exchange1")
        assert seen is not None
        assert abs(seen[0] - arrived) < 0.1, (seen[0] - arrived, read - arrived)
        assert read - seen[0] >= 0.35  # it is as old as it is, not fresh
    finally:
        s.close()
        r.stop()


# ---------------------------------------------------------------------------- replay memory across restarts


class MemStore:
    def __init__(self) -> None:
        self.marks: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        self.saves = 0

    def heartbeat_marks(self) -> dict[str, tuple[int, int, tuple[int, ...]]]:
        return dict(self.marks)

    def save_heartbeat_marks(self, marks: Mapping[str, tuple[int, int, tuple[int, ...]]]) -> None:
        self.saves += 1
        self.marks.update(marks)


def test_marks_survive_a_restart_and_refuse_replays(sender: socket.socket) -> None:
    store = MemStore()
    r1 = HeartbeatReceiver("127.0.0.1", 0, {"exchange1": KEY}, store=store, flush_s=3600, replay_guard=3).start()
    captured = [wire.encode(KEY, hb(n, boot=1)) for n in range(1, 4)]
    captured += [wire.encode(KEY, hb(n, boot=2)) for n in range(1, 6)]  # the agent restarted once
    for pkt in captured:
        send(r1, sender, pkt, "accepted")
    r1.stop()  # a clean stop saves the marks
    assert store.marks["exchange1"] == (2, 5, (1,))
    r2 = HeartbeatReceiver("127.0.0.1", 0, {"exchange1": KEY}, store=store, flush_s=3600, replay_guard=3).start()
    try:
        assert r2.last_seen("exchange1") is None  # a restored mark is not a heartbeat
        for pkt in captured[:3]:
            send(r2, sender, pkt, "old_boot")
        for pkt in captured[3:]:
            send(r2, sender, pkt, "replay")
        # Up to the guard (5 + 3) refused too: they may have been accepted and not yet saved.
        send(r2, sender, wire.encode(KEY, hb(8, boot=2)), "replay")
        send(r2, sender, wire.encode(KEY, hb(9, boot=2)), "accepted")
        assert r2.beats("exchange1") == 1
    finally:
        r2.stop()


def test_flush_saves_only_what_moved() -> None:
    store = MemStore()
    r = HeartbeatReceiver("127.0.0.1", 0, {"a": KEY, "b": OTHER}, store=store, flush_s=3600)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        r.start()
        send(r, s, wire.encode(KEY, hb(1, persona="a")), "accepted")
        assert r.flush() == 1 and store.marks == {"a": (7, 1, ())}
        assert r.flush() == 0  # nothing moved: no write
        send(r, s, wire.encode(OTHER, hb(4, persona="b")), "accepted")
        assert r.flush() == 1 and store.marks["b"] == (7, 4, ())
    finally:
        s.close()
        r.stop()


def test_marks_roundtrip_through_the_journal(tmp_path: Path) -> None:
    from aimctl.journal import Journal

    j = Journal(tmp_path / "journal.db")
    big = (1 << 64) - 1  # boot ids are unsigned 64-bit: past SQLite's INTEGER
    j.save_heartbeat_marks({"exchange1": (big, 12, (big - 1, 3)), "exchange2": (5, 1, ())})
    j.save_heartbeat_marks({"exchange2": (6, 2, (5,))})
    j.close()
    again = Journal(tmp_path / "journal.db")
    assert again.heartbeat_marks() == {"exchange1": (big, 12, (big - 1, 3)), "exchange2": (6, 2, (5,))}
    again.close()


# ---------------------------------------------------------------------------- environment errors


def test_port_in_use_is_one_clear_line() -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ListenError) as err:
            HeartbeatReceiver("127.0.0.1", port, {"a": KEY})
        msg = str(err.value)
        assert msg == f"cannot listen for persona heartbeats on UDP 127.0.0.1:{port}: address already in use " \
                      "(another controller, or a lab, already listens there)"
    finally:
        taken.close()


@pytest.mark.parametrize(("code", "words"), [(errno.EACCES, "permission denied"),
                                             (errno.EADDRNOTAVAIL, "not an address of this host"),
                                             (errno.ENOBUFS, "No buffer space")])
def test_listen_errors_name_the_cause(code: int, words: str) -> None:
    e = ListenError.from_oserror("SNMP traps", "UDP", "0.0.0.0", 162, OSError(code, os.strerror(code)))
    assert str(e).startswith("cannot listen for SNMP traps on UDP 0.0.0.0:162: ")
    assert words in str(e) and "\n" not in str(e)
