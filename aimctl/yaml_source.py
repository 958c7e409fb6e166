"""YAML text to plain data, fast and bounded, and problems that point at ``FILE:LINE:COL``.

The data comes from a native YAML 1.2 parser (yaml-rs) with its alias expansion capped, so an
alias bomb is refused after a bounded amount of work instead of filling memory. Positions are
worked out only for the paths that have a problem, by one streaming pass over PyYAML's parse
events (libyaml): no node tree is built, aliases are never expanded, and the pass stops as soon as
every wanted path is found. Problems are collected up to a cap (the first N, and a count of all);
only those shown ever get a position.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from yaml_rs import AliasLimits, DuplicateKeyPolicy, YAMLDecodeError
from yaml_rs import loads as _fast_loads

from aimctl.errors import DefinitionError

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml missing; still correct, only slower
    _Loader = yaml.SafeLoader

Path_ = tuple[Any, ...]
Pos = tuple[int, int]

# A definition file has no business expanding an alias into more than this many events; a real
# one (a shared credentials block used by every server) stays far below it.
MAX_ALIAS_EVENTS = 100_000
MAX_ALIAS_DEPTH = 16


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_@/+-]{1,120}")


def _shown_key(key: Any) -> str:
    # Keys are shown as written unless they could be misread: a key with a dot, a colon, a space
    # or a control character is quoted (and its colons escaped), so "FILE:LINE:COL: PATH: message"
    # always splits the same way.
    text = str(key)
    if isinstance(key, int | float | bool) or key is None or _PLAIN_KEY.fullmatch(text):
        return text
    return repr(text[:120]).replace(":", "\\x3a")


def dotted(path: Path_) -> str:
    return ".".join(_shown_key(p) for p in path) or "<file>"


class Source:
    """One definition file's text; says where a path of its data is written."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self._text = text
        self._positions: dict[Path_, Pos] = {(): (1, 1)}
        self._searched: set[Path_] = {()}  # found or not: a path is looked for once

    def locate(self, paths: Iterable[Path_]) -> None:
        """Find the positions of ``paths`` (and their ancestors) in one pass over the text."""
        wanted = {tuple(p) for p in paths} - self._searched
        if wanted:
            self._positions.update(locate(self._text, wanted))
            self._searched |= wanted

    def position(self, path: Path_) -> Pos:
        # Walk up until a located ancestor: a missing field is reported at its parent.
        self.locate([path])
        p = tuple(path)
        while p:
            if p in self._positions:
                return self._positions[p]
            p = p[:-1]
        return self._positions[()]

    def at(self, path: Path_, message: str) -> str:
        line, col = self.position(path)
        return f"{self.file}:{line}:{col}: {dotted(path)}: {message}"

    def __getstate__(self) -> dict[str, object]:
        # A cache keeps definitions, not source texts.
        return {"file": self.file, "_text": "", "_positions": {(): (1, 1)}, "_searched": {()}}


@dataclass(frozen=True)
class _At:
    """A problem whose position is already known (a YAML syntax error, a file that cannot be read)."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def text(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.path}: {self.message}"


class Problems:
    """Every problem found, counted; the first ``limit`` kept, positioned only when shown."""

    def __init__(self, limit: int = 200) -> None:
        self.limit = limit
        self.count = 0
        self._items: list[tuple[Source, Path_, str] | _At] = []

    def __bool__(self) -> bool:
        return self.count > 0

    @property
    def full(self) -> bool:
        return len(self._items) >= self.limit

    def add(self, src: Source, path: Path_, message: str) -> None:
        self.count += 1
        if len(self._items) < self.limit:
            self._items.append((src, tuple(path), message))

    def add_at(self, file: str, message: str, line: int = 1, col: int = 1, path: str = "<file>") -> None:
        self.count += 1
        if len(self._items) < self.limit:
            self._items.append(_At(file, line, col, path, message))

    def skipped(self, n: int) -> None:
        """``n`` more problems that are counted but not kept (the cap is reached)."""
        self.count += n

    def lines(self) -> list[str]:
        by_src: dict[Source, list[Path_]] = defaultdict(list)
        for item in self._items:
            if not isinstance(item, _At):
                by_src[item[0]].append(item[1])
        for src, paths in by_src.items():
            src.locate(paths)  # one pass per file for all its problems
        return [item.text() if isinstance(item, _At) else item[0].at(item[1], item[2]) for item in self._items]

    def error(self) -> DefinitionError:
        return DefinitionError(self.lines(), total=self.count)


# ---------------------------------------------------------------------------- text -> data

_AT_RE = re.compile(r"at line (\d+), column (\d+)")


def parse(text: str, file: str, problems: Problems) -> tuple[Any, Source] | None:
    """The data of one YAML document, or None with the problem recorded where it is."""
    src = Source(file, text)
    try:
        data = _fast_loads(text, parse_datetime=False, duplicate_key_policy=DuplicateKeyPolicy.Error,
                           alias_limits=AliasLimits(max_total_replayed_events=MAX_ALIAS_EVENTS,
                                                    max_replay_stack_depth=MAX_ALIAS_DEPTH))
    except YAMLDecodeError as exc:
        _syntax_problem(str(exc), text, file, problems)
        return None
    except (RecursionError, MemoryError, OverflowError, ValueError) as exc:
        problems.add_at(file, f"not valid YAML: {type(exc).__name__}")
        return None
    return data, src


def _syntax_problem(message: str, text: str, file: str, problems: Problems) -> None:
    lines = [ln for ln in message.splitlines() if ln.strip()]
    m = _AT_RE.search(message)
    if m:
        problems.add_at(file, f"not valid YAML: {lines[-1].strip()}", int(m.group(1)), int(m.group(2)))
        return
    if message.startswith("duplicate mapping key"):
        where = find_duplicate(text)
        if where is not None:
            path, (line, col) = where
            problems.add_at(file, "duplicate key", line, col, dotted(path))
            return
    if message.startswith("alias replay limit"):
        line, col = _first_alias(text)
        problems.add_at(file, f"YAML aliases expand to more than {MAX_ALIAS_EVENTS:,} nodes (an alias bomb?)",
                        line, col)
        return
    problems.add_at(file, f"not valid YAML: {lines[0] if lines else 'unreadable'}")


# ---------------------------------------------------------------------------- positions, streamed

_INT_RE = re.compile(r"[-+]?[0-9]+")
_FLOAT_RE = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_PLAIN = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False,
          "null": None, "Null": None, "NULL": None, "~": None, "": None}


def _key(ev: yaml.ScalarEvent) -> Any:
    """A key as the data has it (YAML 1.2 core schema for plain scalars, text when quoted)."""
    v = ev.value
    if ev.style:
        return v
    if v in _PLAIN:
        return _PLAIN[v]
    if _INT_RE.fullmatch(v):
        return int(v)
    if v.startswith("0x") and re.fullmatch(r"0x[0-9a-fA-F]+", v):
        return int(v, 16)
    if v.startswith("0o") and re.fullmatch(r"0o[0-7]+", v):
        return int(v[2:], 8)
    if _FLOAT_RE.fullmatch(v):
        return float(v)
    return v


_START = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_END = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
_NODE = (yaml.ScalarEvent, yaml.AliasEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)


def _mark(ev: yaml.Event) -> Pos:
    m = ev.start_mark
    return (m.line + 1, m.column + 1) if m is not None else (1, 1)


def _events(text: str) -> Iterable[yaml.Event]:
    try:
        yield from yaml.parse(text, Loader=_Loader)
    except yaml.YAMLError:
        return  # a file the fast parser took and libyaml does not: positions fall back to parents


def locate(text: str, wanted: set[Path_]) -> dict[Path_, Pos]:
    """Positions of the wanted paths (and of each of their ancestors) in the first document.

    A key's position is its key; a list item's is its first character. Subtrees on no wanted path
    are skipped by depth counting, and the pass ends when nothing wanted can still appear.
    """
    prefixes: set[Path_] = set()
    under: dict[Path_, list[Path_]] = defaultdict(list)
    for w in wanted:
        for i in range(len(w) + 1):
            prefixes.add(w[:i])
            if i < len(w):
                under[w[:i]].append(w)
    remaining = set(wanted)
    found: dict[Path_, Pos] = {}
    # Frames: ["m", path, expect_key, key_path] / ["s", path, next_index] / ["x", depth] (skipped subtree)
    stack: list[list[Any]] = []

    def closed(frame: list[Any]) -> None:
        for w in under.get(frame[1], ()):
            remaining.discard(w)

    def child_done() -> None:
        if stack and stack[-1][0] == "m":
            stack[-1][2] = not stack[-1][2]

    for ev in _events(text):
        if isinstance(ev, yaml.DocumentEndEvent) or not remaining:
            break
        if not isinstance(ev, _NODE + _END):
            continue
        top = stack[-1] if stack else None
        if top is not None and top[0] == "x":
            if isinstance(ev, _START):
                top[1] += 1
            elif isinstance(ev, _END):
                top[1] -= 1
                if top[1] == 0:
                    stack.pop()
                    child_done()
            continue
        if isinstance(ev, _END):
            if stack:
                closed(stack.pop())
                child_done()
            continue
        mark = _mark(ev)
        if top is None:
            path: Path_ | None = ()
        elif top[0] == "m" and top[2]:  # a key
            path = None
            if isinstance(ev, yaml.ScalarEvent):
                sub = top[1] + (_key(ev),)
                if sub in prefixes:
                    found[sub] = mark
                    remaining.discard(sub)
                top[3] = sub
            else:
                top[3] = None
        elif top[0] == "m":  # a value
            path = top[3]
        else:  # a list item
            path = top[1] + (top[2],)
            top[2] += 1
            if path in prefixes:
                found[path] = mark
                remaining.discard(path)
        if isinstance(ev, _START):
            if path is not None and path in prefixes:
                stack.append(["m", path, True, None] if isinstance(ev, yaml.MappingStartEvent) else ["s", path, 0])
            else:
                stack.append(["x", 1])
        else:
            child_done()
    return found


def find_duplicate(text: str) -> tuple[Path_, Pos] | None:
    """The first key written twice in one mapping: its path and the second occurrence."""
    stack: list[list[Any]] = []  # ["m", path, expect_key, key, seen] / ["s", path, index] / ["x", path]

    def child_done() -> None:
        if stack and stack[-1][0] == "m":
            stack[-1][2] = not stack[-1][2]

    for ev in _events(text):
        if isinstance(ev, yaml.DocumentEndEvent):
            break
        if isinstance(ev, _END):
            if stack:
                stack.pop()
                child_done()
            continue
        if not isinstance(ev, _NODE):
            continue
        top = stack[-1] if stack else None
        path: Path_ = ()
        if top is not None and top[0] == "m" and top[2]:
            if isinstance(ev, yaml.ScalarEvent):
                key = _key(ev)
                if key in top[4]:
                    return top[1] + (key,), _mark(ev)
                top[4].add(key)
                top[3] = key
            path = top[1] + ("?",)
        elif top is not None and top[0] == "m":
            path = top[1] + (top[3],)
        elif top is not None and top[0] == "s":
            path = top[1] + (top[2],)
            top[2] += 1
        elif top is not None:
            path = top[1]
        if isinstance(ev, yaml.MappingStartEvent):
            stack.append(["m", path, True, None, set()])
        elif isinstance(ev, yaml.SequenceStartEvent):
            stack.append(["s", path, 0])
        else:
            child_done()
    return None


def _first_alias(text: str) -> Pos:
    for ev in _events(text):
        if isinstance(ev, yaml.AliasEvent):
            return _mark(ev)
    return 1, 1


__all__ = ["Path_", "Problems", "Source", "dotted", "find_duplicate", "locate", "parse"]
