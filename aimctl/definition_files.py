"""Finding and reading the definition files of a tree, within limits, naming every odd entry.

Every ``*.yaml``/``*.yml`` under the root is a definition file and must be a readable, non-empty
regular file of bounded size: a directory or a FIFO named ``x.yaml``, a broken symlink, a symlink
loop or an unreadable file is a problem reported with its path, never skipped in silence (a file
an operator believes is loaded and is not is worse than an error). Names starting with ``.`` are
ignored (``.git``, editor lock files). Directories reached through symlinks are followed once.

Files are opened non-blocking and checked with ``fstat`` on the open descriptor, so a file swapped
for a FIFO after the listing cannot hang the loader.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from aimctl.errors import OperatorError
from aimctl.yaml_source import Problems

SUFFIXES = (".yaml", ".yml")
MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds that keep any tree, however bad, answered in seconds and bounded memory."""

    max_file_bytes: int = 4 * MiB
    max_tree_bytes: int = 12 * MiB  # the 10,000-persona benchmark tree is 7.9 MiB
    max_files: int = 20_000
    max_entries: int = 200_000  # directory entries looked at, files or not
    max_depth: int = 16
    max_problems: int = 200


LIMITS = Limits()


@dataclass(frozen=True)
class DefinitionFile:
    """A file that was read whole and passed the checks. Its bytes are not kept (a tree's files are
    parsed one at a time, read again then, so only one file's bytes are ever held)."""

    path: Path
    shown: str
    digest: bytes  # sha256 of the bytes (the cache key is made of these); b"" when not asked for


def _mb(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _listing(root: Path, limits: Limits, problems: Problems) -> list[Path]:
    """The definition files under ``root``, sorted; odd entries go to ``problems``."""
    try:
        st = root.stat()
    except FileNotFoundError:
        raise OperatorError(f"{root}: definitions directory does not exist") from None
    except OSError as exc:
        raise OperatorError(f"{root}: cannot open the definitions directory: {_why(exc)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise OperatorError(f"{root}: not a directory")
    seen_dirs = {(st.st_dev, st.st_ino): root}
    files: list[Path] = []
    entries = 0
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        directory, depth = stack.pop()
        try:
            with os.scandir(directory) as it:
                names = sorted(e.name for e in it if not e.name.startswith("."))
        except OSError as exc:
            problems.add_at(str(directory), f"cannot read this directory: {_why(exc)}")
            continue
        subdirs: list[Path] = []
        for name in names:
            entries += 1
            if entries > limits.max_entries:
                problems.add_at(str(root), f"more than {limits.max_entries:,} entries under the definitions "
                                           "directory: not a definitions tree?")
                return sorted(files)
            path = directory / name
            wanted = name.endswith(SUFFIXES)
            try:
                st = path.stat()  # follows symlinks
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    problems.add_at(str(path), "symlink loop (it resolves to itself)")
                elif path.is_symlink() and wanted:
                    problems.add_at(str(path), f"broken symlink (points to {os.readlink(path)!r}, {_why(exc)})")
                elif wanted or not path.is_symlink():
                    problems.add_at(str(path), f"cannot read: {_why(exc)}")
                continue
            if stat.S_ISDIR(st.st_mode):
                if wanted:
                    problems.add_at(str(path), "a directory named like a definition file")
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen_dirs:
                    problems.add_at(str(path), f"directory reached twice (symlink loop or second link to "
                                               f"{seen_dirs[key]}); each directory is loaded once")
                    continue
                if depth + 1 > limits.max_depth:
                    problems.add_at(str(path), f"deeper than {limits.max_depth} directories below the "
                                               "definitions directory")
                    continue
                seen_dirs[key] = path
                subdirs.append(path)
            elif wanted:
                if not stat.S_ISREG(st.st_mode):
                    problems.add_at(str(path), "not a regular file (a FIFO, socket or device named like a "
                                               "definition file)")
                    continue
                files.append(path)
                if len(files) > limits.max_files:
                    problems.add_at(str(root), f"more than {limits.max_files:,} definition files")
                    return sorted(files)
        stack.extend((d, depth + 1) for d in reversed(subdirs))
    return sorted(files)


def read_bounded(path: Path, shown: str, max_bytes: int, problems: Problems) -> bytes | None:
    """A regular file's bytes, or None with the reason in ``problems`` (never blocks on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        problems.add_at(shown, f"cannot read: {_why(exc)}")
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            problems.add_at(shown, "not a regular file")
            return None
        if st.st_size > max_bytes:
            problems.add_at(shown, f"file is {_mb(st.st_size)}; a definition file may be at most {_mb(max_bytes)}")
            return None
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 * MiB, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:  # it grew while being read
            problems.add_at(shown, f"file is larger than {_mb(max_bytes)}, the limit for a definition file")
            return None
        return b"".join(chunks)
    except OSError as exc:
        problems.add_at(shown, f"cannot read: {_why(exc)}")
        return None
    finally:
        os.close(fd)


def collect(root: Path, limits: Limits, problems: Problems, digests: bool = False) -> list[DefinitionFile]:
    """Every definition file under ``root`` that can be read and is within the limits; problems for
    the ones that cannot be. With ``digests``, each file's sha256 (for a cache key)."""
    paths = _listing(root, limits, problems)
    if not paths and not problems:
        raise OperatorError(f"{root}: no *.yaml definition files found")
    out: list[DefinitionFile] = []
    total = 0
    for path in paths:
        shown = str(path)
        data = read_bounded(path, shown, limits.max_file_bytes, problems)
        if data is None:
            continue
        if not data.strip():
            problems.add_at(shown, EMPTY)
            continue
        total += len(data)
        if total > limits.max_tree_bytes:
            problems.add_at(shown, f"the definitions add up to more than {_mb(limits.max_tree_bytes)} "
                                   f"(the limit for one tree) at this file")
            break
        out.append(DefinitionFile(path, shown, hashlib.sha256(data).digest() if digests else b""))
    return out


def text_of(f: DefinitionFile, limits: Limits, problems: Problems) -> str | None:
    """The file's text, read again (bounded) when it is parsed."""
    data = read_bounded(f.path, f.shown, limits.max_file_bytes, problems)
    return decode(data, f.shown, problems) if data is not None else None


EMPTY = "empty definition file (a pool file has pool:, an inventory file servers:, switches: or storage:)"


def decode(data: bytes, shown: str, problems: Problems) -> str | None:
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        problems.add_at(shown, f"not a YAML text file (not UTF-8 at byte {exc.start})", line, col)
        return None
