"""Console sessions: an API token exchanged once for a session cookie, with a CSRF token per session.

The cookie holds a random session id only (HttpOnly, SameSite=Strict, Secure under TLS); the
server keeps the identity, the token's digest (so a token removed from tokens.yaml ends its
sessions at the next request) and the CSRF token. Sessions live in memory: a controller restart
signs everyone out, which is the safe direction. Their number is bounded; the oldest goes first.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from aimctl.api.auth import Identity

COOKIE = "aimctl_session"
PRE_COOKIE = "aimctl_signin"  # the sign-in form's own CSRF value (double submit: no session yet)


@dataclass(frozen=True)
class Session:
    identity: Identity
    token_digest: bytes
    csrf: str
    created: float
    seen: float


class Sessions:
    def __init__(self, ttl_s: float = 12 * 3600, idle_s: float = 3600, limit: int = 2000) -> None:
        self.ttl_s, self.idle_s, self.limit = ttl_s, idle_s, limit
        self._lock = threading.Lock()
        self._by_key: OrderedDict[bytes, Session] = OrderedDict()

    @staticmethod
    def _key(sid: str) -> bytes:
        return hashlib.sha256(sid.encode()).digest()

    def create(self, identity: Identity, token_digest: bytes) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        now = time.time()
        s = Session(identity, token_digest, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._by_key[self._key(sid)] = s
            while len(self._by_key) > self.limit:
                self._by_key.popitem(last=False)
        return sid, s

    def get(self, sid: str | None) -> Session | None:
        if not sid or len(sid) > 128:
            return None
        key, now = self._key(sid), time.time()
        with self._lock:
            s = self._by_key.get(key)
            if s is None:
                return None
            if now - s.created > self.ttl_s or now - s.seen > self.idle_s:
                del self._by_key[key]
                return None
            s = Session(s.identity, s.token_digest, s.csrf, s.created, now)
            self._by_key[key] = s
            return s

    def drop(self, sid: str | None) -> None:
        if sid:
            with self._lock:
                self._by_key.pop(self._key(sid), None)

    def replace_identity(self, sid: str, identity: Identity) -> None:
        with self._lock:
            s = self._by_key.get(self._key(sid))
            if s is not None:
                self._by_key[self._key(sid)] = Session(identity, s.token_digest, s.csrf, s.created, s.seen)


def same(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two CSRF values; a missing one never matches."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())
