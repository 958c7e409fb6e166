"""The audit log: who did what, to what, when and from where (DESIGN.md rule 5).

Append-only JSON lines at ``CTRLDIR/audit.log``. Each line carries ``prev``, the SHA-256 of the
previous line's exact bytes (the first line carries 64 zeros), so editing or deleting a line breaks
the chain at the line after it and ``verify()`` names it. The chain has no key: someone who can
rewrite the whole file from a point on can forge a consistent tail, and the newest line can always
be dropped. ``head()`` returns the newest hash so it can be pinned elsewhere (a change record, an
external log) when that matters.

Secrets never reach the log: values of secret-looking keys are replaced, and every string passes
through ``aimctl.secrets.mask``.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aimctl.secrets import mask

GENESIS = "0" * 64
SECRET_KEY_RE = re.compile(r"secret|passw|token|chap|credential|private|key|authorization|cookie|session|csrf",
                           re.IGNORECASE)


def masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, Mapping):
        return {str(k): "***" if SECRET_KEY_RE.search(str(k)) else masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [masked(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return mask(str(value))


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


@dataclass(frozen=True)
class Verification:
    ok: bool
    lines: int
    bad_line: int | None = None  # 1-based line where the chain breaks
    problem: str = ""


def _last_line(f: BinaryIO) -> bytes:
    """The last line of a binary file opened for reading, found by reading backwards."""
    f.seek(0, os.SEEK_END)
    end = f.tell()
    if end == 0:
        return b""
    pos, chunk = end, b""
    while pos > 0:
        step = min(4096, pos)
        pos -= step
        f.seek(pos)
        chunk = f.read(step) + chunk
        body = chunk.rstrip(b"\n")
        cut = body.rfind(b"\n")
        if cut >= 0:
            return body[cut + 1:]
    return chunk.rstrip(b"\n")


class Audit:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()

    def record(
        self,
        actor: str,
        action: str,
        target: str,
        detail: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        """Append one entry; ``source`` says where the request came from (default: this host/user)."""
        now = time.time()
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
            "actor": mask(actor),
            "action": mask(action),
            "target": mask(target),
            "source": mask(source or f"{_user()}@{os.uname().nodename} pid {os.getpid()}"),
            "detail": masked(dict(detail or {})),
        }
        # A thread lock for this process, flock for other processes (CLI, a second controller).
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "r+b") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                try:
                    last = _last_line(f)
                    entry["prev"] = line_hash(last) if last else GENESIS
                    line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
                    f.seek(0, os.SEEK_END)
                    if f.tell() and not _ends_with_newline(f):
                        line = b"\n" + line  # a torn line before us stays visible to verify()
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
                finally:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return entry

    def head(self) -> str:
        """Hash of the newest line (GENESIS for an empty log)."""
        if not self.path.exists():
            return GENESIS
        with open(self.path, "rb") as f:
            last = _last_line(f)
        return line_hash(last) if last else GENESIS

    def entries(self, limit: int | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().splitlines()
        out = []
        for raw in lines[-limit:] if limit else lines:
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"unreadable": raw[:200].decode(errors="replace")})
        return out

    def verify(self) -> Verification:
        if not self.path.exists():
            return Verification(True, 0)
        prev = GENESIS
        n = 0
        for n, raw in enumerate(self.path.read_bytes().splitlines(), start=1):
            try:
                entry = json.loads(raw)
            except ValueError:
                return Verification(False, n, n, f"line {n} is not valid JSON (edited or torn)")
            if not isinstance(entry, dict) or entry.get("prev") != prev:
                if n == 1:
                    return Verification(False, n, n, "line 1 does not start the chain (lines removed before it?)")
                return Verification(
                    False, n, n,
                    f"line {n} does not follow line {n - 1}: prev hash differs"
                    f" (line {n - 1} was changed or a line was removed or inserted before line {n})",
                )
            prev = line_hash(raw)
        return Verification(True, n)


def _ends_with_newline(f: BinaryIO) -> bool:
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b"\n"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
