"""Secrets at rest in etcd: AES-256-GCM with a key file every controller of the cluster shares.

etcd is not a secret store: its data dir, snapshots and debug logs hold values in the clear. So
the journal's secret state (CHAP secrets) is encrypted before it leaves the controller, with the
key's name as associated data (a ciphertext copied under another name does not decrypt). The key
file holds 32 random bytes, base64; it must be 0600 (or stricter) and owned by the controller.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aimctl.errors import OperatorError

NONCE_LEN = 12


def make_key_file(path: Path) -> None:
    """Write a new key (refuses to overwrite one: a lost key loses every stored secret)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(AESGCM.generate_key(bit_length=256)).decode() + "\n")


def load_key(path: Path) -> bytes:
    try:
        st = path.stat()
        raw = path.read_text().strip()
    except OSError as exc:
        raise OperatorError(f"cluster key file {path}: {exc.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise OperatorError(f"cluster key file {path}: mode {oct(stat.S_IMODE(st.st_mode))} lets others read it;"
                            " chmod 600 it")
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise OperatorError(f"cluster key file {path}: want 32 bytes in base64 (aimctl cluster keygen FILE)")
    return key


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        return cls(load_key(path))

    def seal(self, name: str, value: str) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, value.encode(), name.encode())

    def open(self, name: str, blob: bytes) -> str:
        try:
            return self._aead.decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], name.encode()).decode()
        except (InvalidTag, ValueError):
            raise OperatorError(f"secret {name}: cannot decrypt (another cluster key file?)") from None
