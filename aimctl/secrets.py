"""Secret references (``env:NAME``, ``file:PATH``) and the masker, under the name the controller's
modules import. The one implementation is ``aimctl.core.secrets``, shared with the persona agent."""

from __future__ import annotations

import os
from pathlib import Path

from aimctl.core.secrets import (
    REF_RE,
    MaskingFilter,
    install_log_masking,
    is_reference,
    mask,
    register,
    resolve,
    resolve_bytes,
)

__all__ = ["REF_RE", "MaskingFilter", "install_log_masking", "is_reference", "mask", "register", "resolve",
           "resolve_bytes", "write_private"]


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
