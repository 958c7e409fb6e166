"""The definitions cache never unpickles a file someone else could have written.

A booby-trapped pickle (it creates a marker file when loaded) is put where the cache would read it;
the positive control shows the trap fires when the file is trusted, so each refusal is meaningful.
"""

from __future__ import annotations

import os
import pickle
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from aimctl.definition_cache import cache_root
from aimctl.loader import Definitions, load
from tests.conftest import DEFINITIONS


class Trap:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.fixture
def trapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """(definitions, the cache file ``load`` reads first, the marker the trap creates)."""
    monkeypatch.setenv("AIMCTL_CACHE", str(tmp_path / "cache"))
    defs = tmp_path / "defs"
    shutil.copytree(DEFINITIONS, defs)
    load(defs, use_cache=True)  # makes the cache entry for this content
    (entry,) = [p for p in cache_root().iterdir() if p.is_dir()]
    full = entry / "full.pickle"
    marker = tmp_path / "pwned"
    full.write_bytes(pickle.dumps(Trap(marker)))
    return defs, full, marker


def test_cache_is_private(trapped: tuple[Path, Path, Path]) -> None:
    _, full, _ = trapped
    assert stat.S_IMODE(cache_root().stat().st_mode) == 0o700
    assert stat.S_IMODE(full.parent.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in full.parent.iterdir())


def test_trusted_file_is_read(trapped: tuple[Path, Path, Path]) -> None:
    """The positive control: our own 0600 file in our own 0700 directory is unpickled."""
    defs, _, marker = trapped
    d = load(defs, use_cache=True)
    assert marker.exists()
    assert isinstance(d, Definitions) and d.homes()["exchange1"] == "r720-1"  # a bad entry is only a lost shortcut


def test_controller_load_never_reads_the_cache(trapped: tuple[Path, Path, Path]) -> None:
    """``load`` without ``use_cache`` (what ``controller run`` calls) validates, never unpickles."""
    defs, _, marker = trapped
    assert load(defs).homes()["exchange1"] == "r720-1"
    assert not marker.exists()


def _file_writable_by_others(full: Path) -> None:
    full.chmod(0o666)


def _dir_writable_by_others(full: Path) -> None:
    full.parent.chmod(0o777)


def _root_writable_by_others(full: Path) -> None:
    full.parent.parent.chmod(0o777)


def _symlinked_file(full: Path) -> None:
    elsewhere = full.parent.parent.parent / "planted.pickle"
    full.rename(elsewhere)
    full.symlink_to(elsewhere)


def _symlinked_dir(full: Path) -> None:
    entry = full.parent
    elsewhere = entry.parent.parent / "planted-dir"
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere)


def _foreign_owner(full: Path) -> None:
    os.chown(full, 65534, 65534)


FOREIGN: list[tuple[str, Callable[[Path], None]]] = [
    ("file writable by others", _file_writable_by_others),
    ("entry directory writable by others", _dir_writable_by_others),
    ("cache directory writable by others", _root_writable_by_others),
    ("file is a symlink", _symlinked_file),
    ("entry directory is a symlink", _symlinked_dir),
    ("file owned by someone else", _foreign_owner),
]


@pytest.mark.parametrize("name,spoil", FOREIGN, ids=[c[0] for c in FOREIGN])
def test_foreign_cache_is_never_unpickled(trapped: tuple[Path, Path, Path], name: str,
                                          spoil: Callable[[Path], None]) -> None:
    defs, full, marker = trapped
    if name == "file owned by someone else" and os.geteuid() != 0:
        pytest.skip("giving a file away needs root")
    spoil(full)
    d = load(defs, use_cache=True)
    assert not marker.exists(), name
    assert d.homes()["exchange1"] == "r720-1"
