"""The heartbeat wire format, shared by the persona agent and the controller's receiver.

One UDP datagram, network byte order::

    0   2s  magic  b"AH"
    2   B   version (1)
    3   B   kind    (1 heartbeat agent->controller, 2 stop request controller->agent, 3 rehearsal heartbeat)
    4   B   health  (0 ok, 1 degraded, 2 unhealthy, 3 stopped)
    5   B   name length   (<= 63, the persona name, ASCII per NAME_RE)
    6   B   reason length (<= 120, UTF-8)
    7   x   padding (keeps the 8-byte fields aligned)
    8   Q   boot id  (random per agent start)
    16  Q   sequence (monotonic per boot; in a stop request: the agent's seq it answers, a nonce)
    24  d   sender time (wall clock; informational only, never used for ages)
    32  ... name, reason
    -16 16s tag = HMAC-SHA256(key, everything before the tag), truncated to 16 bytes

Why 16 bytes of tag: RFC 2104 section 5 allows truncation to half the hash output; 128 bits make a
blind forgery a 2^-128 chance per try, while a heartbeat's value expires within seconds. It keeps a
heartbeat under 100 bytes, and the HMAC is computed in full anyway, so it costs no speed.
The kind is inside the tagged header, so a heartbeat can never be reflected back as a stop request.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"AH"
VERSION = 1
KIND_HEARTBEAT = 1
KIND_STOP = 2
# A heartbeat from a spare rehearsal of the persona: same key, but the kind is signed, so it can
# never be taken (or replayed) as the persona's own heartbeat.
KIND_REHEARSAL = 3
TAG_LEN = 16
MAX_NAME = 63
MAX_REASON = 120

HEADER = struct.Struct("!2sBBBBBxQQd")
HEADER_LEN = HEADER.size  # 32
MIN_LEN = HEADER_LEN + 1 + TAG_LEN
MAX_LEN = HEADER_LEN + MAX_NAME + MAX_REASON + TAG_LEN
_U64 = (1 << 64) - 1


class Health(IntEnum):
    OK = 0
    DEGRADED = 1
    UNHEALTHY = 2
    STOPPED = 3

    @property
    def word(self) -> str:
        return self.name.lower()


class MalformedPacket(ValueError):
    """The bytes are not a well-formed packet of this format (before any signature check)."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    persona: str
    boot_id: int
    seq: int
    sent_at: float
    health: Health = Health.OK
    reason: str = ""
    kind: int = KIND_HEARTBEAT


def tag(key: bytes, signed: bytes | bytearray | memoryview) -> bytes:
    return hmac.digest(key, signed, "sha256")[:TAG_LEN]


def _truncate_utf8(text: str, limit: int) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return raw
    # Cut on a character boundary so the receiver never sees half a code point.
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8")


def encode(key: bytes, hb: Heartbeat) -> bytes:
    """Sign and serialise; a reason longer than MAX_REASON bytes is truncated, a bad name refused."""
    name = hb.persona.encode("ascii")
    if not 1 <= len(name) <= MAX_NAME:
        raise ValueError(f"persona name must be 1-{MAX_NAME} ASCII bytes: {hb.persona!r}")
    if not (0 <= hb.boot_id <= _U64 and 0 <= hb.seq <= _U64):
        raise ValueError("boot id and sequence must fit in 64 bits")
    reason = _truncate_utf8(hb.reason, MAX_REASON)
    body = (
        HEADER.pack(
            MAGIC, VERSION, hb.kind, int(hb.health), len(name), len(reason), hb.boot_id, hb.seq, hb.sent_at
        )
        + name
        + reason
    )
    return body + tag(key, body)


def decode(buf: bytes | bytearray | memoryview) -> Heartbeat:
    """Parse without checking the tag; raise MalformedPacket on anything that does not fit."""
    n = len(buf)
    if n < MIN_LEN or n > MAX_LEN:
        raise MalformedPacket(f"length {n} outside {MIN_LEN}-{MAX_LEN}")
    magic, version, kind, health, nlen, rlen, boot_id, seq, sent = HEADER.unpack_from(buf, 0)
    if magic != MAGIC or version != VERSION:
        raise MalformedPacket("bad magic or version")
    if kind not in (KIND_HEARTBEAT, KIND_STOP, KIND_REHEARSAL) or health > Health.STOPPED:
        raise MalformedPacket("bad kind or health")
    if nlen == 0 or nlen > MAX_NAME or rlen > MAX_REASON or HEADER_LEN + nlen + rlen + TAG_LEN != n:
        raise MalformedPacket("lengths do not add up")
    raw = bytes(buf[HEADER_LEN : HEADER_LEN + nlen + rlen])
    try:
        name = raw[:nlen].decode("ascii")
        reason = raw[nlen:].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("name or reason not text") from None
    return Heartbeat(name, boot_id, seq, sent, Health(health), reason, kind)


def verify(key: bytes, buf: bytes | bytearray | memoryview) -> bool:
    """True when the trailing tag is this key's HMAC of the rest (constant-time compare)."""
    n = len(buf)
    if n < MIN_LEN:
        return False
    return hmac.compare_digest(tag(key, buf[: n - TAG_LEN]), bytes(buf[n - TAG_LEN : n]))


def decode_verified(key: bytes, buf: bytes | bytearray | memoryview) -> Heartbeat:
    """decode + verify; raise MalformedPacket for a bad tag too (the agent's control path uses it)."""
    hb = decode(buf)
    if not verify(key, buf):
        raise MalformedPacket("bad signature")
    return hb
