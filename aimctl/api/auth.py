"""Bearer tokens and roles for the controller's API.

``CTRLDIR/api-token`` holds the admin token (0600, created on first start). ``CTRLDIR/tokens.yaml``
(optional) adds named tokens with a role; it holds no usable secret, only a SHA-256 of each token
or a reference to where the token is kept::

    tokens:
      - {name: alice, role: operator, sha256: 3f1c...}      # sha256 hex of the token
      - {name: grafana, role: viewer, token: env:GRAFANA_TOKEN}
      - {name: webops, role: viewer, pools: {web: operator}, sha256: 9ab2...}
      - {name: webonly, pools: {web: operator}, sha256: 77de...}   # sees nothing outside pool web

``role`` is the token's role in every pool it does not list under ``pools`` (and for what belongs
to no pool); without ``role`` the token sees only the pools it lists.

The file is re-read when it changes; a broken edit is refused whole and the previous tokens stay.
Tokens are compared as SHA-256 digests with ``hmac.compare_digest`` against every entry, so
timing does not reveal which entry (or how much of one) matched.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets as pysecrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aimctl.errors import OperatorError
from aimctl.secrets import is_reference, register, resolve

log = logging.getLogger(__name__)

ROLES = {"viewer": 1, "operator": 2, "admin": 3}
TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")


POOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")


@dataclass(frozen=True)
class Identity:
    """Who called: a token's name and its role, possibly different per pool."""

    name: str
    role: str | None  # everywhere not listed in ``pools``; None: nothing there
    pools: tuple[tuple[str, str], ...] = ()

    def role_in(self, pool: str | None) -> str | None:
        """The role this identity has for ``pool`` (None: for what belongs to no pool)."""
        if pool is not None:
            for name, role in self.pools:
                if name == pool:
                    return role
        return self.role

    def allows(self, role: str, pool: str | None = None) -> bool:
        mine = self.role_in(pool)
        return mine is not None and ROLES[mine] >= ROLES[role]

    def allows_somewhere(self, role: str) -> bool:
        """Whether some pool (or the default) grants ``role``: a cheap first check before the scope is known."""
        return any(ROLES[r] >= ROLES[role] for r in [self.role, *(r for _, r in self.pools)] if r is not None)

    def sees(self, pool: str | None) -> bool:
        return self.role_in(pool) is not None

    def label(self, pool: str | None = None) -> str:
        return f"{self.name}({self.role_in(pool) or 'none'})"


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def ensure_admin_token(state_dir: Path) -> str:
    """Read ``CTRLDIR/api-token``, creating it (0600, O_EXCL: never racing a second writer) if absent."""
    path = state_dir / "api-token"
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s was readable by others (mode %o); tightened to 0600", path, mode)
            os.chmod(path, 0o600)
        token = path.read_text().strip()
        if len(token) < 16:
            raise OperatorError(f"{path}: the admin token is empty or too short; delete the file to make a new one") from None
    else:
        token = pysecrets.token_urlsafe(32)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
    register(token)
    return token


def load_tokens(path: Path, admin: bytes) -> dict[bytes, Identity]:
    """Parse tokens.yaml into digest -> identity; any problem refuses the whole file."""
    try:
        doc: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise OperatorError(f"{path}: cannot read: {exc}") from None
    entries = (doc or {}).get("tokens", []) if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise OperatorError(f"{path}: want a mapping with a 'tokens' list")
    out: dict[bytes, Identity] = {}
    names: set[str] = set()
    for i, e in enumerate(entries):
        where = f"{path}: tokens[{i}]"
        if not isinstance(e, dict):
            raise OperatorError(f"{where}: want a mapping with name, role and sha256 or token")
        name = str(e.get("name", ""))
        role = None if e.get("role") is None and e.get("pools") else str(e.get("role", ""))
        if not TOKEN_NAME_RE.match(name) or name in names or name == "admin":
            raise OperatorError(f"{where}: name {name!r} is missing, invalid, reserved or repeated")
        if role is not None and role not in ROLES:
            raise OperatorError(f"{where}: role must be one of {', '.join(ROLES)}, not {role!r}")
        pools = e.get("pools") or {}
        if not isinstance(pools, dict) or not all(
                isinstance(p, str) and POOL_RE.match(p) and r in ROLES for p, r in pools.items()):
            raise OperatorError(f"{where}: pools must map pool names to one of {', '.join(ROLES)}")
        if "sha256" in e and SHA256_RE.match(str(e["sha256"])):
            d = bytes.fromhex(str(e["sha256"]))
        elif "token" in e and is_reference(str(e["token"])):
            d = digest(resolve(str(e["token"]), path.parent))
        else:
            raise OperatorError(f"{where}: want sha256 (64 hex digits) or token (env:NAME or file:PATH)")
        if d in out or hmac.compare_digest(d, admin):
            raise OperatorError(f"{where}: this token is already used by another entry")
        names.add(name)
        out[d] = Identity(name, role, tuple(sorted((str(p), str(r)) for p, r in pools.items())))
    return out


class TokenStore:
    def __init__(self, state_dir: Path) -> None:
        self.admin_token = ensure_admin_token(state_dir)
        self._admin = digest(self.admin_token)
        self._path = state_dir / "tokens.yaml"
        self._lock = threading.Lock()
        self._entries: dict[bytes, Identity] = {}
        self._seen: tuple[float, int] | None = None
        self._reload(strict=True)

    def identify(self, token: str) -> Identity | None:
        """The identity of ``token``, or None. A token that identifies is registered with the masker,
        so it never reaches a log line or the audit log even when it is sent where it does not belong."""
        found = self.identify_digest(digest(token))
        if found is not None:
            register(token)
        return found

    def identify_digest(self, d: bytes) -> Identity | None:
        """The identity of the token with SHA-256 ``d`` (a console session re-checks its token so)."""
        self._reload(strict=False)
        found: Identity | None = None
        if hmac.compare_digest(d, self._admin):
            found = Identity("admin", "admin")
        with self._lock:
            entries = list(self._entries.items())
        for known, ident in entries:
            if hmac.compare_digest(d, known):
                found = ident
        return found

    def _reload(self, strict: bool) -> None:
        try:
            st = self._path.stat()
            seen: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except FileNotFoundError:
            seen = None
        if seen == self._seen:
            return
        try:
            entries = load_tokens(self._path, self._admin) if seen else {}
        except OperatorError as exc:
            if strict:
                raise
            log.error("%s; keeping the previous tokens", exc)
            entries = None
        with self._lock:
            self._seen = seen
            if entries is not None:
                self._entries = entries
