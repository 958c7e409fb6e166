"""Secret references: ``env:NAME`` or ``file:PATH``; never inline values.

Resolved values are registered with the process-wide masker so that any log line or error that
would carry them prints ``***`` instead.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

from aimctl.core.errors import SecretError

REF_RE = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]{0,127}|file:[^\x00\n]{1,4096})$")

_lock = threading.Lock()
_known: set[str] = set()


def is_reference(value: str) -> bool:
    return bool(REF_RE.match(value))


def register(secret: str) -> None:
    """Remember a secret so ``mask`` hides it (secrets shorter than 4 chars would mask noise)."""
    if len(secret) >= 4:
        with _lock:
            _known.add(secret)


def mask(text: str) -> str:
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for s in known:
        text = text.replace(s, "***")
    return text


def resolve(ref: str, base: Path | None = None) -> str:
    """Resolve a reference to its value; relative ``file:`` paths are taken from ``base``."""
    if ref.startswith("env:"):
        name = ref[4:]
        value = os.environ.get(name)
        if value is None:
            raise SecretError(f"secret reference {ref}: environment variable {name} is not set")
    elif ref.startswith("file:"):
        path = Path(ref[5:])
        if not path.is_absolute() and base is not None:
            path = base / path
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise SecretError(f"secret reference {ref}: cannot read {path}: {exc.strerror}") from None
    else:
        raise SecretError(f"not a secret reference (want env:NAME or file:PATH): {ref[:8]}...")
    register(value)
    return value


def resolve_bytes(ref: str, base: Path | None = None) -> bytes:
    return resolve(ref, base).encode()


class MaskingFilter(logging.Filter):
    """Logging filter that masks every registered secret in the rendered message."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        masked = mask(msg)
        if masked != msg:
            record.msg, record.args = masked, None
        return True


def install_log_masking() -> None:
    root = logging.getLogger()
    for f in root.filters:
        if isinstance(f, MaskingFilter):
            return
    root.addFilter(MaskingFilter())
    for h in root.handlers:
        h.addFilter(MaskingFilter())
