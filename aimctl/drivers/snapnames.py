"""Names of snapshots: what they are is in the name, so a listing is one directory read.

A snapshot file is ``<label>+<stamp>+<target>+<lun>.img``:

- ``label`` — the persona's name for its archives, ``gold.<image>`` for a gold image;
- ``stamp`` — UTC, ``YYYYmmddTHHMMSSmmmZ``; label and stamp together are the **set**: the LUNs that
  were frozen and copied together;
- ``target`` and ``lun`` — the LUN it was taken from.

``+`` appears in none of the parts (persona names, IQNs), so the name splits one way only. Every
part is checked against a strict pattern before it reaches a command line (DESIGN.md rule 6).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from aimctl.errors import OperatorError
from aimctl.validation import IQN_RE

LABEL = r"[a-z][a-z0-9-]{0,62}(?:\.[a-z0-9][a-z0-9-]{0,62})?"
STAMP = r"\d{8}T\d{9}Z"
LABEL_RE = re.compile(rf"^{LABEL}\Z")
SET_RE = re.compile(rf"^(?P<label>{LABEL})\+(?P<stamp>{STAMP})\Z")
FILE_RE = re.compile(rf"^(?P<set>{LABEL}\+{STAMP})\+(?P<target>iqn\.[a-z0-9.:_-]{{1,220}})\+(?P<lun>\d{{1,3}})\.img\Z")
GOLD_PREFIX = "gold."


class BadSnapshotName(OperatorError):
    """A label, set or snapshot id that does not fit the naming rules."""


@dataclass(frozen=True)
class SnapshotName:
    set: str
    label: str
    stamp: str
    target: str
    lun: int

    @property
    def id(self) -> str:
        return f"{self.set}+{self.target}+{self.lun}"

    @property
    def file(self) -> str:
        return f"{self.id}.img"

    @property
    def created(self) -> float:
        return stamp_time(self.stamp)


def stamp(when: float) -> str:
    t = datetime.fromtimestamp(when, UTC)
    return t.strftime("%Y%m%dT%H%M%S") + f"{t.microsecond // 1000:03d}Z"


def stamp_time(value: str) -> float:
    t = datetime.strptime(value[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return t.timestamp() + int(value[15:18]) / 1000


def set_id(label: str, when: float | None = None) -> str:
    """A new set name: ``<label>+<stamp>`` (millisecond stamps: two sets of one label never collide
    in practice; a lease keeps one persona's archives apart anyway)."""
    if not LABEL_RE.match(label):
        raise BadSnapshotName(f"snapshot label {label!r} refused: a persona name or gold.<image>")
    return f"{label}+{stamp(time.time() if when is None else when)}"


def gold_label(image: str) -> str:
    label = GOLD_PREFIX + image
    if not LABEL_RE.match(label):
        raise BadSnapshotName(f"gold image name {image!r} refused: lower-case letters, digits and '-'")
    return label


def check_set(value: str) -> tuple[str, str]:
    m = SET_RE.match(value)
    if not m:
        raise BadSnapshotName(f"snapshot set {value!r} refused: want <label>+<YYYYmmddTHHMMSSmmm>Z")
    return m["label"], m["stamp"]


def name_of(set_: str, target: str, lun: int) -> SnapshotName:
    label, st = check_set(set_)
    if not IQN_RE.match(target) or not 0 <= lun <= 255:
        raise BadSnapshotName(f"snapshot of {target!r} LUN {lun!r} refused: not an iqn. name and LUN 0-255")
    return SnapshotName(set_, label, st, target, lun)


def parse_file(name: str) -> SnapshotName | None:
    """A snapshot file name, or None for anything else in the directory (copies in progress too)."""
    m = FILE_RE.match(name)
    if not m or not IQN_RE.match(m["target"]):
        return None
    label, st = check_set(m["set"])
    return SnapshotName(m["set"], label, st, m["target"], int(m["lun"]))


def parse_id(snapshot_id: str) -> SnapshotName:
    n = parse_file(snapshot_id + ".img")
    if n is None:
        raise BadSnapshotName(f"snapshot id {snapshot_id!r} refused: want <label>+<stamp>+<target>+<lun>")
    return n
