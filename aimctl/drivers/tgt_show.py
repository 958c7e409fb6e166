"""Parsers for ``tgtadm --op show`` output (tgt 1.0.x), shared by the driver and the lab's observer.

tgtadm has no machine-readable output; its text is indented by four spaces per level and stable
across 1.0.x releases. A section we do not know is skipped, so an added field does not break us;
a line we must understand and cannot (a nexus without ``Initiator:``) is simply not reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TARGET_RE = re.compile(r"^Target (\d+): (\S+)$")
_NEXUS_RE = re.compile(r"^I_T nexus: (\d+)$")
# "Initiator: <iqn> alias: <alias>"; tgtd prints "alias: none" when the initiator sent none.
_INITIATOR_RE = re.compile(r"^Initiator: (\S+)(?: alias: ?(.*))?$")
_LUN_RE = re.compile(r"^LUN: (\d+)$")
_SESSION_RE = re.compile(r"^Session: (\d+)$")
_CONN_RE = re.compile(r"^Connection: (\d+)$")
_STAT_RE = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")


@dataclass(frozen=True)
class Nexus:
    """One I_T nexus (= one iSCSI session; tgtd numbers it with the session id)."""

    sid: int
    initiator: str
    alias: str  # "" when the initiator sent no alias


@dataclass
class TargetView:
    name: str
    tid: int
    luns: list[int] = field(default_factory=list)  # without LUN 0, tgtd's own controller LUN
    acl: list[str] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)  # incoming CHAP users bound to the target
    outgoing: list[str] = field(default_factory=list)
    sessions: list[Nexus] = field(default_factory=list)
    state: str = ""  # "ready", or "offline" while tgtd refuses its commands (a snapshot's freeze)
    backing: dict[int, str] = field(default_factory=dict)  # LUN -> backing store path

    @property
    def nexus(self) -> list[tuple[str, str]]:
        """(initiator, alias) per I_T nexus, in tgtd's order."""
        return [(n.initiator, n.alias) for n in self.sessions]


@dataclass(frozen=True)
class ConnView:
    sid: int
    cid: int
    initiator: str


def _level(line: str) -> int:
    return (len(line) - len(line.lstrip(" "))) // 4


def _alias(raw: str | None) -> str:
    a = (raw or "").strip()
    return "" if a in ("", "none", "(null)") else a


def parse_targets(text: str) -> dict[str, TargetView]:
    """``tgtadm --lld iscsi --op show --mode target`` → {target IQN: view}."""
    out: dict[str, TargetView] = {}
    cur: TargetView | None = None
    section = ""
    pending_sid: int | None = None
    lun: int | None = None
    for raw in text.splitlines():
        if not raw.strip():
            continue
        lvl, line = _level(raw), raw.strip()
        if lvl == 0:
            m = _TARGET_RE.match(line)
            cur = TargetView(m[2], int(m[1])) if m else None
            if cur is not None:
                out[cur.name] = cur
            section = ""
            continue
        if cur is None:
            continue
        if lvl == 1:
            section = line.rstrip(":")
            continue
        if section == "System information" and lvl == 2 and line.startswith("State:"):
            cur.state = line.split(":", 1)[1].strip()
        elif section == "I_T nexus information":
            m = _NEXUS_RE.match(line)
            if lvl == 2 and m:
                pending_sid = int(m[1])
            elif lvl == 3 and pending_sid is not None and (m := _INITIATOR_RE.match(line)):
                cur.sessions.append(Nexus(pending_sid, m[1], _alias(m[2])))
                pending_sid = None
        elif section == "LUN information" and lvl == 2 and (m := _LUN_RE.match(line)):
            lun = int(m[1])
            if lun != 0:
                cur.luns.append(lun)
        elif section == "LUN information" and lvl == 3 and lun and line.startswith("Backing store path:"):
            path = line.split(":", 1)[1].strip()
            if path and path != "None":
                cur.backing[lun] = path
        elif section == "Account information" and lvl == 2:
            if line.endswith("(outgoing)"):
                cur.outgoing.append(line.removesuffix("(outgoing)").strip())
            else:
                cur.accounts.append(line)
        elif section == "ACL information" and lvl == 2:
            cur.acl.append(line)
    return out


def parse_conns(text: str) -> list[ConnView]:
    """``tgtadm --lld iscsi --op show --mode conn --tid N`` → one entry per connection."""
    out: list[ConnView] = []
    sid: int | None = None
    cid: int | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if m := _SESSION_RE.match(line):
            sid, cid = int(m[1]), None
        elif m := _CONN_RE.match(line):
            cid = int(m[1])
        elif line.startswith("Initiator:") and sid is not None and cid is not None:
            out.append(ConnView(sid, cid, line.split(":", 1)[1].strip().split()[0]))
            cid = None
    return out


def parse_accounts(text: str) -> list[str]:
    """``tgtadm --lld iscsi --op show --mode account`` → every account name (they are global)."""
    return [ln.strip() for ln in text.splitlines()[1:] if ln.startswith("    ") and ln.strip()]


@dataclass(frozen=True)
class LunStat:
    """Commands submitted to and done by one LUN's backing store, per I_T nexus (``--op stat``)."""

    tid: int
    lun: int
    sid: int
    rd_subm: int
    rd_done: int
    wr_subm: int
    wr_done: int

    @property
    def in_flight(self) -> int:
        return (self.rd_subm - self.rd_done) + (self.wr_subm - self.wr_done)


def parse_stats(text: str) -> list[LunStat]:
    """``tgtadm --lld iscsi --op stat --mode target --tid N`` (header line, then one line per LUN and nexus:
    tid lun sid rd_subm(bytes cmds) rd_done(bytes cmds) wr_subm(bytes cmds) wr_done(bytes cmds) errs)."""
    out = []
    for line in text.splitlines():
        m = _STAT_RE.match(line)
        if m:
            v = [int(x) for x in m.groups()]
            out.append(LunStat(v[0], v[1], v[2], v[4], v[6], v[8], v[10]))
    return out
