"""StorageAccess for a Linux tgt target (``tgtd``), driven with ``tgtadm`` here or over SSH.

What the fence needs from any iSCSI array, and how tgt gives it:

- **who may log in** — an ACL by initiator name: ``--op bind --mode target -Q <iqn>``;
- **with which secret** — one incoming CHAP account per persona, bound to its targets. tgtd's
  accounts are global (a user has one secret on every target it is bound to);
- **who is logged in** — ``show --mode target`` lists each I_T nexus with the initiator's alias
  (we set it to the server's name), ``show --mode conn`` the session and connection ids;
- **throw them out** — ``--op delete --mode conn`` per connection, then poll until none is left;
- **prove it** — a real login (``iscsi-inq`` from libiscsi, run on the controller's host) that
  must be refused with the old secret.

An array driver fits the same Protocol by mapping these words (its own module, same contract suite):

- Dell PowerStore (REST): a *host* object per persona whose initiator is the persona's IQN; the
  host's volume mappings are the ACL; CHAP is set per host initiator (single CHAP user/password:
  rotate by modifying the host's initiator); ``sessions`` are the host initiators' active sessions.
  There is no logout call: ``kill_sessions`` removes the host's mappings (or its initiator) and
  reads back until no active session is left. EqualLogic PS has no REST API: its group CLI over
  SSH (the ``SshRunner`` here) has per-volume access records (initiator name + CHAP user), local
  CHAP accounts, and per-volume connection lists to read back.
- NetApp ONTAP (REST): an *igroup* per persona (protocol iscsi, the IQN as member) mapped to its
  LUNs is the ACL; CHAP is per initiator under ``/api/protocols/san/iscsi/credentials``
  (``chap.inbound.user``/``password``, rotate with PATCH); ``/api/protocols/san/iscsi/sessions``
  lists sessions (tsih, initiator name and alias) but cannot end them: unmap (or empty the igroup)
  and read back, or ``vserver iscsi session shutdown`` through the CLI passthrough.

In every case ``login_refused`` stays what it is here: a real login from the controller's host.

Every write is read back. Values reaching tgtadm are checked against strict patterns first, so an
injection attempt is refused before any command runs. tgtadm takes a CHAP password only as an
argument (``--password``): anyone who can list processes on the storage host can see it in that
tgtadm's argv for its life (milliseconds); we never log it (``Secret`` renders as ``***``) and over SSH it is sent on stdin,
not in the exec request. ``login_refused`` hands its secret to ``iscsi-inq`` in the environment
(``LIBISCSI_CHAP_PASSWORD``), which only its own user and root can read.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time

from aimctl import secrets
from aimctl.drivers.protocols import Session, TargetAccess
from aimctl.drivers.runner import Arg, LocalRunner, Runner, Secret, SshRunner, display
from aimctl.drivers.tgt_show import TargetView, parse_accounts, parse_conns, parse_targets
from aimctl.errors import OperatorError, Rejected, StateMismatch, Timeout, Unreachable
from aimctl.validation import CHAP_SECRET_RE, CHAP_USER_RE, HOSTNAME_RE, IQN_RE

__all__ = ["LocalRunner", "Runner", "SshRunner", "TgtStorage"]

log = logging.getLogger(__name__)

TGTADM = "tgtadm"
ISCSI_INQ = "iscsi-inq"
# tgtadm's words for "the daemon is not there" (exit 107 with the socket gone, 111 when refused).
_DAEMON_DOWN = ("can't connect", "Transport endpoint is not connected", "failed to send request", "Connection refused")
# What a target says when it refuses a login: 513 bad CHAP, 514 not authorized (most targets' ACL
# answer), 515 "not found" (tgtd's ACL answer: an initiator outside the ACL cannot see the target).
_REFUSED = ("Authentication failure", "Authorization failure", "Target not found")
_CONNECT_FAILED = ("connect", "Connection refused", "No route", "timed out", "Name or service")


class TgtStorage:
    def __init__(self, portal_host: str, portal_port: int, runner: Runner, *, timeout_s: float = 10.0,
                 poll_s: float = 0.05) -> None:
        if not HOSTNAME_RE.match(portal_host) or not 0 < portal_port < 65536:
            raise OperatorError(f"iSCSI portal {portal_host}:{portal_port} refused")
        self.portal_host, self.portal_port = portal_host, portal_port
        self.runner = runner
        self.timeout_s, self.poll_s = timeout_s, poll_s
        self.device = f"tgt {portal_host}:{portal_port}"
        self._lock = threading.Lock()  # one change at a time: a rotation is several tgtadm steps

    # ------------------------------------------------------------------ tgtadm

    def _tgtadm(self, *args: Arg, missing_ok: bool = False) -> str:
        argv: list[Arg] = [TGTADM, "--lld", "iscsi", *args]
        log.debug("%s via %s: %s", self.device, self.runner.where, display(argv))
        r = self.runner.run(argv, self.timeout_s)
        if "tgtd closed the socket" in r.stderr:
            # tgtadm exits 0 when tgtd dies (or drops it) mid-answer: the output is not the answer.
            raise Unreachable(self.device, f"tgtd closed its control socket during {display(argv)} (did it crash?)")
        if r.exit_status == 0:
            return r.stdout
        msg = secrets.mask((r.stderr.strip() or r.stdout.strip() or f"exit status {r.exit_status}").splitlines()[-1])
        if any(s in msg for s in _DAEMON_DOWN):
            raise Unreachable(self.device, f"tgtd does not answer its control socket ({self.runner.where}): {msg}")
        if missing_ok and ("can't find" in msg or "does not exist" in msg):
            return ""
        raise Rejected(self.device, f"{display(argv)}: {msg}")

    def tgtadm(self, *args: Arg, missing_ok: bool = False) -> str:
        """One checked tgtadm call (for the snapshot driver, which shares this target's runner and lock)."""
        return self._tgtadm(*args, missing_ok=missing_ok)

    @property
    def lock(self) -> threading.Lock:
        """Held across a change of several tgtadm steps (a CHAP rotation, a new target's tid)."""
        return self._lock

    def forget_accounts(self, candidates: set[str]) -> None:
        """Delete those of ``candidates`` that are bound to no target any more."""
        self._forget_unbound(candidates)

    def targets_of(self) -> dict[str, TargetView]:
        return parse_targets(self._tgtadm("--op", "show", "--mode", "target"))

    def _view(self, target: str) -> TargetView:
        views = self.targets_of()
        if target not in views:
            raise Rejected(self.device, f"target {target} does not exist")
        return views[target]

    def _check_iqn(self, value: str, what: str) -> None:
        if not IQN_RE.match(value):
            raise OperatorError(f"{self.device}: {what} {value!r} refused: not an iqn. name")

    def _check_chap(self, user: str, secret: str) -> None:
        if not CHAP_USER_RE.match(user) or user.startswith("-"):
            raise OperatorError(f"{self.device}: CHAP user {user!r} refused")
        if not CHAP_SECRET_RE.match(secret):
            raise OperatorError(f"{self.device}: CHAP secret refused (characters outside [A-Za-z0-9._~+/=:@-])")

    # ------------------------------------------------------------------ ACL by initiator name

    def bind(self, target: str, initiator: str) -> None:
        self._check_iqn(target, "target")
        self._check_iqn(initiator, "initiator")
        with self._lock:
            v = self._view(target)
            if initiator not in v.acl:
                self._tgtadm("--op", "bind", "--mode", "target", "--tid", str(v.tid), "--initiator-name", initiator)
            if initiator not in self._view(target).acl:
                raise StateMismatch(self.device, f"{initiator} bound to {target} but the ACL does not show it")

    def unbind(self, target: str, initiator: str) -> None:
        self._check_iqn(target, "target")
        self._check_iqn(initiator, "initiator")
        with self._lock:
            v = self._view(target)
            if initiator in v.acl:
                self._tgtadm("--op", "unbind", "--mode", "target", "--tid", str(v.tid), "--initiator-name",
                             initiator, missing_ok=True)
            if initiator in self._view(target).acl:
                raise StateMismatch(self.device, f"{initiator} unbound from {target} but the ACL still shows it")

    def initiators(self, target: str) -> list[str]:
        self._check_iqn(target, "target")
        return list(self._view(target).acl)

    def read_access(self, targets: list[str]) -> dict[str, TargetAccess]:
        for t in targets:
            self._check_iqn(t, "target")
        views = self.targets_of()  # one tgtadm for every target
        return {t: TargetAccess(tuple(views[t].acl), tuple(views[t].accounts)) for t in targets if t in views}

    # ------------------------------------------------------------------ CHAP

    def set_chap(self, target: str, user: str, secret: str) -> None:
        """Rotate: ``user``/``secret`` becomes the target's only incoming account.

        tgtd cannot change a secret in place: the account is unbound, deleted, made anew and bound.
        A target with no account lets anyone in its ACL in without CHAP — and the ACL names the
        persona, whose name the old body has too — so each affected target's ACL is emptied while
        its accounts change (tgtd lets nobody in without an ACL) and restored after. Interrupted,
        a target stays closed: safe, and ``bind`` opens it again. The user keeps its other targets
        (a persona's boot and data targets share it); tgtd's accounts are global, they take the
        new secret too.
        """
        self._check_iqn(target, "target")
        self._check_chap(user, secret)
        secrets.register(secret)
        with self._lock:
            views = self.targets_of()
            if target not in views:
                raise Rejected(self.device, f"target {target} does not exist")
            v = views[target]
            others = [t for t in views.values() if t.name != target and user in t.accounts]
            closed: list[TargetView] = []
            try:
                for t in (v, *others):
                    closed.append(t)
                    for ini in reversed(t.acl):
                        self._acl(t.tid, "unbind", ini)
                # Quirk (tgt 1.0.85): unbinding or deleting an account that is not the target's
                # *last* one corrupts its account table and tgtd segfaults on the next show.
                # So accounts only ever come off a target from the end, and go back on in order.
                put_back: dict[int, list[str]] = {}
                for t in others:
                    tail = t.accounts[t.accounts.index(user):]
                    for a in reversed(tail):
                        self._account(t.tid, "unbind", a)
                    put_back[t.tid] = [a for a in tail if a != user]
                for a in reversed(v.accounts):
                    self._account(v.tid, "unbind", a)
                self._tgtadm("--op", "delete", "--mode", "account", "--user", user, missing_ok=True)
                self._tgtadm("--op", "new", "--mode", "account", "--user", user, "--password", Secret(secret))
                self._account(v.tid, "bind", user)
                for t in others:
                    for a in [user, *put_back[t.tid]]:
                        self._account(t.tid, "bind", a)
            finally:
                for t in closed:
                    for ini in t.acl:
                        self._acl(t.tid, "bind", ini)
            self._forget_unbound(set(v.accounts) - {user})
            after = self.targets_of()
        got = after[target] if target in after else TargetView(target, 0)
        if got.accounts != [user] or sorted(got.acl) != sorted(v.acl):
            raise StateMismatch(self.device, f"{target} reads CHAP {got.accounts} and ACL {got.acl}, "
                                f"want [{user!r}] and {v.acl}")
        lost = [t.name for t in others if user not in after.get(t.name, TargetView(t.name, 0)).accounts]
        if lost:
            raise StateMismatch(self.device, f"CHAP user {user} lost its binding to {', '.join(lost)}")

    def _account(self, tid: int, op: str, user: str) -> None:
        self._tgtadm("--op", op, "--mode", "account", "--tid", str(tid), "--user", user, missing_ok=op == "unbind")

    def _acl(self, tid: int, op: str, initiator: str) -> None:
        self._tgtadm("--op", op, "--mode", "target", "--tid", str(tid), "--initiator-name", initiator,
                     missing_ok=op == "unbind")

    def _forget_unbound(self, candidates: set[str]) -> None:
        """Delete the old accounts that are bound to no target any more (deleting a bound one
        would unbind it, with the quirk above)."""
        if not candidates:
            return
        bound = {a for t in self.targets_of().values() for a in t.accounts + t.outgoing}
        for a in parse_accounts(self._tgtadm("--op", "show", "--mode", "account")):
            if a in candidates and a not in bound:
                self._tgtadm("--op", "delete", "--mode", "account", "--user", a, missing_ok=True)

    def chap_user(self, target: str) -> str | None:
        self._check_iqn(target, "target")
        accounts = self._view(target).accounts
        if len(accounts) > 1:
            raise StateMismatch(self.device, f"{target} has {len(accounts)} CHAP accounts ({', '.join(accounts)}): "
                                "a rotation was interrupted; set the CHAP secret again")
        return accounts[0] if accounts else None

    # ------------------------------------------------------------------ sessions

    def sessions(self, target: str) -> list[Session]:
        self._check_iqn(target, "target")
        v = self._view(target)
        alias = {n.sid: n.alias for n in v.sessions}
        seen: dict[int, Session] = {}
        for c in parse_conns(self._tgtadm("--op", "show", "--mode", "conn", "--tid", str(v.tid))):
            seen.setdefault(c.sid, Session(target, c.initiator, alias.get(c.sid, ""), c.sid))
        return list(seen.values())

    def kill_sessions(self, target: str, deadline_s: float = 10.0) -> None:
        """Delete every connection to ``target`` until a read shows none (initiators may come back)."""
        self._check_iqn(target, "target")
        end = time.monotonic() + deadline_s
        tid = self._view(target).tid
        wait = threading.Event()
        asked: set[tuple[int, int]] = set()
        while True:
            conns = parse_conns(self._tgtadm("--op", "show", "--mode", "conn", "--tid", str(tid)))
            if not conns and not self._view(target).sessions:
                return
            if time.monotonic() >= end:
                who = ", ".join(sorted({c.initiator for c in conns})) or "an I_T nexus without connection"
                raise Timeout(self.device, f"sessions to {target} still there after {deadline_s:.0f}s: {who}")
            now = {(c.sid, c.cid) for c in conns}
            if now <= asked:  # all already asked to go: give tgtd a moment before asking again
                wait.wait(self.poll_s)
            asked |= now
            for c in conns:
                self._tgtadm("--op", "delete", "--mode", "conn", "--tid", str(tid), "--sid", str(c.sid),
                             "--cid", str(c.cid), missing_ok=True)

    # ------------------------------------------------------------------ proof by login

    def login_refused(self, target: str, initiator: str, user: str, secret: str) -> bool:
        """A real iSCSI login from this host. True only when the target refuses it (CHAP or ACL)."""
        self._check_iqn(target, "target")
        self._check_iqn(initiator, "initiator")
        if user or secret:
            self._check_chap(user, secret)
            secrets.register(secret)
        # tgtd answers "target not found" to initiators outside its ACL: make sure it does exist.
        v = self._view(target)
        url = f"iscsi://{self.portal_host}:{self.portal_port}/{target}/{v.luns[0] if v.luns else 0}"
        env = {k: x for k, x in os.environ.items() if not k.startswith("LIBISCSI_CHAP")}
        if user:
            env |= {"LIBISCSI_CHAP_USERNAME": user, "LIBISCSI_CHAP_PASSWORD": secret}
        try:
            p = subprocess.run([ISCSI_INQ, "-i", initiator, url], env=env, capture_output=True, text=True,
                               timeout=self.timeout_s, check=False)
        except FileNotFoundError:
            raise Unreachable(self.device, f"{ISCSI_INQ} (libiscsi-bin) is not installed on this host") from None
        except subprocess.TimeoutExpired:
            raise Timeout(self.device, f"iSCSI login to {target} gave no answer in {self.timeout_s:.0f}s") from None
        if p.returncode == 0:
            return False
        text = secrets.mask(" ".join((p.stderr + " " + p.stdout).split()))
        if any(s in text for s in _REFUSED):
            return True
        if re.search("|".join(_CONNECT_FAILED), text, re.IGNORECASE):
            raise Unreachable(self.device, f"iSCSI portal {self.portal_host}:{self.portal_port}: {text[:300]}")
        raise Rejected(self.device, f"iSCSI login to {target} failed for another reason: {text[:300]}")
