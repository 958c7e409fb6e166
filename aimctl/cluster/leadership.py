"""Leadership on etcd: one leader key under a lease, its create revision as the fencing token.

Modelled on patroni's etcd3 DCS and HA loop: the key is created only if absent, under this
member's lease; the leader keeps the lease alive every ``renew_s``; a leader that has not renewed
by its *renew deadline* stops acting at once (self-demotion) — well before etcd lets the lease go
— and a paused or cut-off leader that wakes up late finds its token stale: etcd refuses its
journal writes (``journal.etcd``). Time alone never makes two leaders impossible; the token does.

Timing rule (patroni's): ``renew_s + 2 × retry_s ≤ ttl_s``. A renewal is tried every ``renew_s``;
each etcd call gives up after ``retry_s``; a failed renewal is retried once at once. The renew
deadline is ``last renewal sent + renew_s + 2 × retry_s``: by then both tries have failed, and the
rule keeps that at or before the lease's end (measured from the moment the renewal was *sent*,
which etcd's own timer can only follow). Defaults: TTL 6 s, renew 2 s, retry 1.5 s (5 s ≤ 6 s,
one second to spare); tests use shorter ones through the same rule.

One lease per controller process carries both its member key (``members/<id>``, for ``aimctl
cluster status``) and, while it leads, the leader key. The pure decision of each cycle is
``decide``; the thread around it does the I/O.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aimctl.journal import etcdkv as kv
from aimctl.journal.etcdkv import Etcd, EtcdUnavailable
from aimctl.journal.base import LostLeadership

log = logging.getLogger("aimctl.cluster")

NO_TOKEN = -1


@dataclass(frozen=True)
class Timing:
    ttl_s: float = 6.0
    renew_s: float = 2.0
    retry_s: float = 1.5

    def __post_init__(self) -> None:
        if min(self.ttl_s, self.renew_s, self.retry_s) <= 0:
            raise ValueError("cluster timing: ttl, renew and retry must be positive")
        if self.renew_s + 2 * self.retry_s > self.ttl_s:
            raise ValueError(f"cluster timing: renew {self.renew_s}s + 2 x retry {self.retry_s}s must be"
                             f" <= ttl {self.ttl_s}s (a leader must know it failed to renew before its lease ends)")
        if self.ttl_s < 1 or self.ttl_s != int(self.ttl_s):
            raise ValueError("cluster timing: etcd leases take whole seconds; ttl must be an integer >= 1")

    @property
    def renew_deadline_s(self) -> float:
        return self.renew_s + 2 * self.retry_s


# -- the decision -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class View:
    """What one cycle knows (monotonic seconds)."""

    now: float
    leading: bool
    renewed_at: float | None  # when the last successful renewal (or the election) was sent
    leader_member: str | None  # who holds the leader key, None if nobody (as read this cycle)
    me: str
    read_ok: bool  # the leader key could be read this cycle


def decide(v: View, t: Timing) -> str:
    """One of: ``renew`` (leading, renewal due), ``hold`` (leading, nothing due), ``demote``,
    ``campaign`` (no leader: try to create the key), ``reclaim`` (the key names me but I do not lead:
    a previous run of mine; delete it so a fresh election gives a fresh token), ``follow``, ``wait``
    (cannot read etcd)."""
    if v.leading:
        if v.renewed_at is None or v.now >= v.renewed_at + t.renew_deadline_s:
            return "demote"
        if v.read_ok and v.leader_member is not None and v.leader_member != v.me:
            return "demote"  # someone else holds the key: we lost it whatever our lease says
        if v.read_ok and v.leader_member is None:
            return "demote"  # the key is gone (lease revoked or expired)
        return "renew" if v.now >= v.renewed_at + t.renew_s else "hold"
    if not v.read_ok:
        return "wait"
    if v.leader_member is None:
        return "campaign"
    if v.leader_member == v.me:
        return "reclaim"
    return "follow"


# -- the loop -----------------------------------------------------------------------------------------

@dataclass
class LeaderInfo:
    member: str | None = None
    api: str | None = None
    token: int = NO_TOKEN
    since: float | None = None  # wall clock


@dataclass
class Stats:
    elections: int = 0  # times this member became leader
    demotions: int = 0
    changes_seen: int = 0  # leader changes observed (any member)
    refused_writes: int = 0
    last_renew_wall: float | None = None
    last_error: str = ""
    demoted_because: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)


class Leadership:
    def __init__(self, etcd: Etcd, prefix: str, member: str, *, api_url: str = "", timing: Timing | None = None,
                 on_elected: Callable[[int], None] | None = None,
                 on_demoted: Callable[[str], None] | None = None,
                 may_campaign: Callable[[], bool] = lambda: True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.key = prefix + "leader"
        self.member = member
        self.api_url = api_url
        self.timing = timing or Timing()
        self._on_elected = on_elected or (lambda token: None)
        self._on_demoted = on_demoted or (lambda why: None)
        self._may_campaign = may_campaign
        self._clock = clock
        self._lock = threading.RLock()
        self._lease: int | None = None
        self._leading = False
        self._renewed_at: float | None = None
        self._token = NO_TOKEN
        self.leader = LeaderInfo()
        self.stats = Stats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reachable = False  # etcd answered the last cycle
        self.last_cycle = clock()
        self._member_due = 0.0
        self._members_due = 0.0
        self.members_seen: list[dict[str, Any]] = []

    # -- what the rest of the controller asks ------------------------------------------------------

    @property
    def token(self) -> int:
        """The token this member was last elected with. Kept after a demotion on purpose: the
        journal sends it, and etcd — not this process — refuses it once it is stale."""
        return self._token

    def is_leader(self) -> bool:
        with self._lock:
            return self._leading and self._renewed_at is not None and \
                self._clock() < self._renewed_at + self.timing.renew_deadline_s

    def check(self) -> None:
        """Raise ``LostLeadership`` unless this member leads now (before any device call)."""
        if not self.is_leader():
            raise LostLeadership(f"{self.member} does not lead the cluster now; no device call")

    def lease_left_s(self) -> float | None:
        with self._lock:
            if not self._leading or self._renewed_at is None:
                return None
            return max(0.0, self._renewed_at + self.timing.ttl_s - self._clock())

    def note_refused(self, why: str) -> None:
        self.stats.refused_writes += 1

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"leadership-{self.member}", daemon=True)
        self._thread.start()

    def stop(self, resign: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timing.retry_s * 2 + 1)
        if resign:
            with self._lock:
                lease, was = self._lease, self._leading
                self._leading = False
            if lease is not None:
                try:
                    self.etcd.revoke(lease)  # the key goes now: a successor need not wait for the TTL
                except EtcdUnavailable as exc:
                    log.warning("could not resign (lease left to expire): %s", exc)
            if was:
                self._event("resigned", "controller stopping")

    def run_once(self) -> str:
        """One cycle (the thread calls it; tests and the toy workflow may call it directly)."""
        leading, renewed = self._leading, self._renewed_at
        holder, read_ok = self._read_leader()
        if leading and holder == self.member and self.leader.token != self._token:
            holder = f"{self.member} (a later run)"  # same name, newer token: not us any more
        action = decide(View(self._clock(), leading, renewed, holder, self.member, read_ok), self.timing)
        if action == "renew":
            self._renew()
        elif action == "demote":
            self._demote(self._demote_reason(holder, read_ok))
        elif action == "campaign" and self._may_campaign():
            self._campaign()
        elif action == "reclaim":
            self._reclaim()
        elif action == "follow" and self._clock() >= self._member_due:
            self._follower_renew()
        if read_ok and self.reachable and self._clock() >= self._members_due:
            self._members_due = self._clock() + self.timing.renew_s
            self._read_members()
        return action

    def _follower_renew(self) -> None:
        """A follower keeps its own member key (and lease) fresh, for ``aimctl cluster status``."""
        self._member_due = self._clock() + self.timing.renew_s
        try:
            lease = self._ensure_lease()
            if self.etcd.keepalive(lease) <= 0:
                self._lease = None
                lease = self._ensure_lease()
            self.etcd.txn([], [kv.put(self.prefix + f"members/{self.member}", self._member_doc("follower"), lease)])
            self.stats.last_renew_wall = time.time()
        except EtcdUnavailable as exc:
            self._unreachable(exc)

    def healthy(self) -> bool:
        """The leadership thread has completed a cycle lately (the watchdog asks before petting)."""
        return self._clock() - self.last_cycle < 2 * self.timing.ttl_s

    def _run(self) -> None:
        t = self.timing
        while not self._stop.is_set():
            self.last_cycle = self._clock()
            try:
                self.run_once()
            except Exception:  # the loop must survive anything; the deadline still demotes
                log.exception("leadership cycle failed")
            # Leaders wake often enough to renew on time; followers poll the key often enough for a
            # quick takeover (a fraction of the TTL) without loading etcd.
            self._stop.wait(min(t.renew_s / 4, 0.25) if self._leading else min(t.renew_s / 4, 0.2))

    # -- the I/O of each action --------------------------------------------------------------------

    def _read_leader(self) -> tuple[str | None, bool]:
        try:
            got = self.etcd.get(self.key)
        except EtcdUnavailable as exc:
            self._unreachable(exc)
            return None, False
        self.reachable = True
        if got is None:
            if self.leader.member is not None:
                self.leader = LeaderInfo()
            return None, True
        try:
            doc = json.loads(got.value)
        except ValueError:
            doc = {}
        member = str(doc.get("member", "?"))
        if got.create_revision != self.leader.token:
            self.stats.changes_seen += 1
            self.leader = LeaderInfo(member, doc.get("api"), got.create_revision, doc.get("since"))
        return member, True

    def _unreachable(self, exc: Exception) -> None:
        if self.reachable:
            log.warning("etcd unreachable: %s", exc)
        self.reachable = False
        self.stats.last_error = str(exc)

    def _ensure_lease(self) -> int:
        if self._lease is None:
            self._lease = self.etcd.grant(int(self.timing.ttl_s))
        return self._lease

    def _member_doc(self, role: str) -> str:
        return json.dumps({"member": self.member, "api": self.api_url, "pid": os.getpid(), "role": role,
                           "last_renew": time.time()})

    def _campaign(self) -> None:
        sent, sent_wall = self._clock(), time.time()
        try:
            lease = self._ensure_lease()
            doc = json.dumps({"member": self.member, "api": self.api_url, "since": time.time(), "pid": os.getpid()})
            res = self.etcd.txn([kv.created_at(self.key, 0)],
                                [kv.put(self.key, doc, lease), kv.put(self.prefix + f"members/{self.member}",
                                                                      self._member_doc("leader"), lease)],
                                [kv.get(self.key)])
        except EtcdUnavailable as exc:
            self._unreachable(exc)
            self._lease = None  # a grant of unknown outcome: start over with a new lease
            return
        if not res.succeeded:
            return  # someone else was quicker
        token = res.revision  # the key was created in this transaction: its create revision
        with self._lock:
            self._leading, self._renewed_at, self._token = True, sent, token
            self.leader = LeaderInfo(self.member, self.api_url, token, time.time())
        self.stats.elections += 1
        self.stats.last_renew_wall = sent_wall
        self._event("elected", f"token {token}")
        log.warning("%s leads the cluster (fencing token %d)", self.member, token)
        self._on_elected(token)

    def _renew(self) -> None:
        t = self.timing
        for attempt in (1, 2):
            sent, sent_wall = self._clock(), time.time()
            if sent >= (self._renewed_at or 0) + t.renew_deadline_s:
                break
            try:
                left = self.etcd.keepalive(self._lease or 0)
                if left <= 0:
                    self._demote("the leader lease is gone (expired or revoked in etcd)")
                    return
                self.etcd.txn([], [kv.put(self.prefix + f"members/{self.member}", self._member_doc("leader"),
                                          self._lease)])
            except EtcdUnavailable as exc:
                self._unreachable(exc)
                log.warning("renewal %d failed: %s", attempt, exc)
                continue
            with self._lock:
                self._renewed_at = sent
            self.stats.last_renew_wall = sent_wall  # when it was sent: the lease runs at least TTL from then
            self.reachable = True
            return

    def _demote_reason(self, holder: str | None, read_ok: bool) -> str:
        if read_ok and holder is not None and holder != self.member:
            return f"the leader key now belongs to {holder}"
        if read_ok and holder is None:
            return "the leader key is gone"
        return f"not renewed within {self.timing.renew_deadline_s:.1f}s (etcd: {self.stats.last_error or 'no answer'})"

    def _demote(self, why: str) -> None:
        with self._lock:
            if not self._leading:
                return
            self._leading = False
            lease, self._lease = self._lease, None
        self.stats.demotions += 1
        self.stats.demoted_because = why
        self._event("demoted", why)
        log.error("%s stops leading: %s", self.member, why)
        self._on_demoted(why)
        if lease is not None:
            try:
                self.etcd.revoke(lease)  # if etcd still answers, let a successor in at once
            except EtcdUnavailable:
                pass

    def _reclaim(self) -> None:
        """The key names this member but this process does not lead (it restarted): delete that key
        (only if unchanged) so the next election creates it anew — with a new token that fences any
        still-running earlier process of this member."""
        try:
            got = self.etcd.get(self.key)
            if got is None:
                return
            self.etcd.txn([kv.modified_at(self.key, got.mod_revision)], [kv.delete(self.key)])
            log.warning("%s: removed its own leader key from an earlier run (token %d)", self.member,
                        got.create_revision)
        except EtcdUnavailable as exc:
            self._unreachable(exc)

    def _event(self, what: str, detail: str) -> None:
        self.stats.history.append({"time": time.time(), "event": what, "detail": detail})
        del self.stats.history[:-20]

    # -- operator view ------------------------------------------------------------------------------

    def _read_members(self) -> None:
        """The members' keys, read by this thread once per renew interval (status never waits on etcd)."""
        try:
            kvs = self.etcd.range(self.prefix + "members/", prefix=True)
        except EtcdUnavailable as exc:
            self._unreachable(exc)
            return
        self.members_seen = [json.loads(x.value) for x in kvs]

    def status(self) -> dict[str, Any]:
        leading, leader = self.is_leader(), self.leader
        if not leading and leader.member == self.member and leader.token == self._token:
            # Its own term ran out (by the clock) before the thread read the key again (a member
            # that was stopped wakes like this): who leads now is not known until that read.
            leader = LeaderInfo()
        return {
            "member": self.member,
            "role": "leader" if leading else "follower",
            "etcd_reachable": self.reachable,
            "leader": {"member": leader.member, "api": leader.api, "token": leader.token,
                       "since": leader.since},
            "my_token": self._token,
            "lease_left_s": self.lease_left_s(),
            "timing": {"ttl_s": self.timing.ttl_s, "renew_s": self.timing.renew_s, "retry_s": self.timing.retry_s},
            "elections": self.stats.elections, "demotions": self.stats.demotions,
            "leader_changes_seen": self.stats.changes_seen, "refused_writes": self.stats.refused_writes,
            "last_renew": self.stats.last_renew_wall, "last_error": self.stats.last_error,
            "demoted_because": self.stats.demoted_because, "events": list(self.stats.history[-10:]),
        }
