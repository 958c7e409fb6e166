"""A per-user cache of validated definitions, for the operator's CLI only (``validate``, ``plan``).

Unpickling runs code chosen by whoever wrote the file, so a cache file is read only when nobody
else could have written it: the cache directory must be the caller's own and closed to others
(0700, or at least writable by nobody else), and each file the caller's own (written 0600), a
regular file opened without following a symlink.
Anything else is ignored (and never repaired in place). The controller never uses this cache: it
validates its definitions itself when it starts.
"""

from __future__ import annotations

import logging
import os
import pickle
import stat
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CACHE_ENV = "AIMCTL_CACHE"


def cache_root() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "aimctl")
    return Path(base)


def _private_dir(path: Path, create: bool) -> bool:
    """Is ``path`` a directory of ours that nobody else could have written into? It is made (or
    tightened to) 0700: a directory only we could write holds only what we wrote."""
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        log.warning("definitions cache %s ignored: not a directory owned by uid %d and closed to others",
                    path, os.geteuid())
        return False
    if st.st_mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError:
            return False
    return True


def read(key: str, name: str) -> Any:
    """The object cached under ``key``/``name``, or None (missing, foreign, torn or stale)."""
    directory = cache_root() / key
    if not (_private_dir(cache_root(), create=False) and _private_dir(directory, create=False)):
        return None
    try:
        fd = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            log.warning("definitions cache file %s ignored: not a file owned by uid %d and closed to others",
                        directory / name, os.geteuid())
            return None
        try:
            return pickle.load(fh)  # noqa: S301 - our own file in our own 0700 directory (checked above)
        except Exception:  # noqa: BLE001 - a stale or torn cache file is only a lost shortcut
            return None


def write(key: str, objects: dict[str, Any]) -> None:
    """Store ``objects`` under ``key`` (0600 files in 0700 directories); failures only cost speed."""
    directory = cache_root() / key
    if not (_private_dir(cache_root(), create=True) and _private_dir(directory, create=True)):
        return
    for name, obj in objects.items():
        tmp = directory / f".{name}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, directory / name)
        except OSError as exc:
            log.debug("definitions cache not written: %s", exc)
            try:
                tmp.unlink()
            except OSError:
                pass
