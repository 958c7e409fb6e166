"""What the data tables (``switch_templates/os.yaml``, ``bootcfg/redfish_vendors.json``) share:
read again only when the file changes, part of the definitions cache key, and offered to editors
as an enum of their row names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aimctl.errors import OperatorError


def stamp(path: Path, what: str) -> tuple[int, int]:
    """(mtime, size) of a table file: the key its parsed form is cached under."""
    try:
        st = path.stat()
    except OSError as exc:
        raise OperatorError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    return st.st_mtime_ns, st.st_size


def read_bounded(path: Path, what: str, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise OperatorError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    if len(raw) > max_bytes:
        raise OperatorError(f"{path}: the {what} is larger than {max_bytes // 1024} KiB")
    return raw


def file_bytes(path: Path) -> bytes:
    """A table's bytes for a cache key (definitions are valid or not depending on them)."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def enum_schema(names: Callable[[], list[str]]) -> dict[str, Any]:
    """JSON Schema of a row name: the table's rows at the time the schema is exported."""
    try:
        return {"type": "string", "enum": names()}
    except OperatorError:
        return {"type": "string"}
