"""CHAP secrets per persona, kept by the controller (0600 files in CTRLDIR/chap/).

The fence rotates a persona's secret. The new secret is generated once per operation and written
to disk *before* it is set on any target, so a controller killed between the two resumes with the
same secret instead of locking the persona out with one nobody knows.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from aimctl.errors import OperatorError
from aimctl.secrets import register, resolve

# RFC 3720 allows 96..128-bit secrets; Microsoft's initiator wants 12..16 characters.
SECRET_LEN = 16


def write_private(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` as a 0600 file (its directory 0700), atomically and synced."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class ChapStore:
    def __init__(self, state: Path) -> None:
        self.dir = state / "chap"

    @staticmethod
    def user(persona: str) -> str:
        return f"aimctl-{persona}"

    def current(self, persona: str, initial_ref: str | None = None) -> str:
        path = self.dir / f"{persona}.current"
        if not path.exists():
            if initial_ref is None:
                raise OperatorError(f"persona {persona}: no CHAP secret known (set initial_chap in its definition)")
            write_private(path, resolve(initial_ref))
        value = path.read_text()
        register(value)
        return value

    def pending(self, persona: str, op_id: str) -> str:
        """The secret this operation rotates to: generated once, then read back on every resume."""
        path = self.dir / f"{persona}.{op_id}"
        if not path.exists():
            write_private(path, secrets.token_urlsafe(SECRET_LEN)[:SECRET_LEN])
        value = path.read_text()
        register(value)
        return value

    def commit(self, persona: str, op_id: str) -> None:
        path = self.dir / f"{persona}.{op_id}"
        if path.exists():
            write_private(self.dir / f"{persona}.current", path.read_text())
            path.unlink()
