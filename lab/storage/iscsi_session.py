"""A booted host's iSCSI session, held over real iSCSI with libiscsi (ctypes on ``libiscsi.so.7``).

cython-iscsi cannot set the initiator alias, and the alias (the server's name) is what the access
observer reads, so we call libiscsi directly. A libiscsi context is not thread-safe: each session
owns one thread that makes every libiscsi call for it — login, reads, logout and the service loop
that answers the target's NOP-Ins and notices a closed connection. Callers hand work to that thread
through a queue and an eventfd. Many sessions in one process are many such threads.

Automatic reconnect is off: a session the target killed stays dead (``alive`` turns False), as a
fenced host's session must; what the host does next is the host simulator's business.
"""

from __future__ import annotations

import ctypes
import math
import os
import queue
import select
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_lib = ctypes.CDLL("libiscsi.so.7", use_errno=True)
_P, _S, _I = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
for _name, _res, _args in (
    ("iscsi_create_context", _P, [_S]),
    ("iscsi_destroy_context", _I, [_P]),
    ("iscsi_set_alias", _I, [_P, _S]),
    ("iscsi_set_targetname", _I, [_P, _S]),
    ("iscsi_set_session_type", _I, [_P, _I]),
    ("iscsi_set_initiator_username_pwd", _I, [_P, _S, _S]),
    ("iscsi_set_noautoreconnect", None, [_P, _I]),
    ("iscsi_set_timeout", _I, [_P, _I]),
    ("iscsi_full_connect_sync", _I, [_P, _S, _I]),
    ("iscsi_logout_sync", _I, [_P]),
    ("iscsi_get_error", _S, [_P]),
    ("iscsi_get_fd", _I, [_P]),
    ("iscsi_which_events", _I, [_P]),
    ("iscsi_service", _I, [_P, _I]),
    ("scsi_cdb_read10", _P, [ctypes.c_uint32, ctypes.c_uint32, _I, _I, _I, _I, _I, _I]),
    ("scsi_task_add_data_in_buffer", _I, [_P, _I, _P]),
    ("iscsi_scsi_command_sync", _P, [_P, _I, _P, _P]),
    ("scsi_free_scsi_task", None, [_P]),
):
    _fn = getattr(_lib, _name)
    _fn.restype, _fn.argtypes = _res, _args

ISCSI_SESSION_NORMAL = 2
BLOCK = 512  # tgtd's default logical block size for file-backed LUNs

# Login failure reasons (LoginFailed.reason). tgtd answers both "initiator not in the ACL" and
# "no such target" with status 515 (Target not found), so those two share a reason.
AUTH = "auth-failure"              # 513: wrong CHAP user or secret (or CHAP required and none given)
NOT_PERMITTED = "not-permitted"    # 514/515: not in the target's ACL, no ACL, or no such target
TIMEOUT = "timeout"
UNREACHABLE = "unreachable"        # no TCP connection to the portal
ERROR = "error"                    # anything else (LUN missing, protocol error)


class LoginFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


def _classify(err: str) -> str:
    if "(513)" in err or "Authentication failure" in err:
        return AUTH
    if "(514)" in err or "(515)" in err or "Authorization failure" in err or "Target not found" in err:
        return NOT_PERMITTED
    if "connect" in err.lower() or "Connection refused" in err:
        return UNREACHABLE
    return ERROR


class HeldSession:
    """One logged-in session. Use ``login``; end with ``logout``, or ``freeze`` then ``drop``."""

    def __init__(self, portal: str, target: str, lun: int, alias: str) -> None:
        self.portal, self.target, self.lun, self.alias = portal, target, lun, alias
        self._ctx: int | None = None
        self._fd = -1
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._accepting = True      # the thread still takes jobs (guarded by _lock)
        self._stop = False          # leave the loop and close the socket
        self._freeze = False        # leave the loop and keep the socket as it is
        self._frozen = False
        self._dead = threading.Event()
        self._lock = threading.Lock()      # jobs and wake-ups vs. the thread's exit
        self._ctx_lock = threading.Lock()  # the context's close

    # ------------------------------------------------------------------ login

    @classmethod
    def login(cls, portal: str, target: str, lun: int, initiator: str, alias: str,
              chap_user: str | None, chap_secret: str | None, timeout_s: float = 5) -> HeldSession:
        s = cls(portal, target, lun, alias)
        started: Future[None] = Future()
        s._thread = threading.Thread(target=s._main, name=f"iscsi-{alias}-{target.rsplit(':', 1)[-1]}",
                                     args=(initiator, chap_user, chap_secret, timeout_s, started), daemon=True)
        s._thread.start()
        try:
            started.result(timeout=timeout_s + 1.0)  # libiscsi's own timeout fires first, in whole seconds
        except TimeoutError:
            s._stop = True  # the thread logs out and closes when its login call returns
            s._signal()
            raise LoginFailed(TIMEOUT, f"no login answer from {portal} for {target} in {timeout_s:g}s") from None
        return s

    def _main(self, initiator: str, user: str | None, secret: str | None, timeout_s: float,
              started: Future[None]) -> None:
        try:
            if self._connect(initiator, user, secret, timeout_s, started):
                self._serve()
        finally:
            with self._lock:
                self._accepting = False
                os.close(self._wake)
                self._wake = -1
            while not self._jobs.empty():  # jobs that came in before we stopped taking them
                self._jobs.get()()

    def _connect(self, initiator: str, user: str | None, secret: str | None, timeout_s: float,
                 started: Future[None]) -> bool:
        ctx = _lib.iscsi_create_context(initiator.encode())
        if not ctx:
            started.set_exception(LoginFailed(ERROR, "libiscsi could not create a context"))
            return False
        _lib.iscsi_set_alias(ctx, self.alias.encode())
        _lib.iscsi_set_targetname(ctx, self.target.encode())
        _lib.iscsi_set_session_type(ctx, ISCSI_SESSION_NORMAL)
        _lib.iscsi_set_noautoreconnect(ctx, 1)
        _lib.iscsi_set_timeout(ctx, max(1, math.ceil(timeout_s)))
        if user:
            _lib.iscsi_set_initiator_username_pwd(ctx, user.encode(), (secret or "").encode())
        if _lib.iscsi_full_connect_sync(ctx, self.portal.encode(), self.lun) != 0:
            err = (_lib.iscsi_get_error(ctx) or b"").decode(errors="replace")
            _lib.iscsi_destroy_context(ctx)
            self._dead.set()
            reason = TIMEOUT if "timed out" in err.lower() or "timeout" in err.lower() else _classify(err)
            if not started.done():
                started.set_exception(LoginFailed(reason, f"{self.target} via {self.portal}: {err}"))
            return False
        self._ctx, self._fd = ctx, _lib.iscsi_get_fd(ctx)
        if self._stop:  # the caller gave up waiting: leave no session behind
            self._close(logout=True)
            return False
        started.set_result(None)
        return True

    # ------------------------------------------------------------------ the session's thread

    def _serve(self) -> None:
        ctx = self._ctx
        p = select.poll()
        p.register(self._wake, select.POLLIN)
        while True:
            while not self._jobs.empty():
                self._jobs.get()()
            if self._freeze:
                self._frozen = True
                return
            if self._stop or self._dead.is_set():
                self._close(logout=False)
                return
            p.register(self._fd, _lib.iscsi_which_events(ctx) | select.POLLRDHUP)
            ready = dict(p.poll(1000))  # libiscsi wants a call about once a second for its timeouts
            if ready.get(self._wake):
                os.eventfd_read(self._wake)
            revents = ready.get(self._fd, 0)
            if revents & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) or \
                    _lib.iscsi_service(ctx, revents & ~select.POLLRDHUP) < 0:
                self._dead.set()  # the target closed it (or it broke): no reconnect

    def _signal(self) -> None:
        with self._lock:
            if self._wake >= 0:
                os.eventfd_write(self._wake, 1)

    def _call(self, fn: Callable[[], Any], timeout_s: float) -> Any:
        """Run ``fn`` on the session's thread (libiscsi contexts are single-threaded), or here
        once that thread has ended (then nothing else touches the context)."""
        fut: Future[Any] = Future()

        def job() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)
        with self._lock:
            queued = self._accepting
            if queued:
                self._jobs.put(job)
                os.eventfd_write(self._wake, 1)
        if not queued:
            self._join()
            job()
        return fut.result(timeout=timeout_s)

    def _close(self, logout: bool) -> None:
        with self._ctx_lock:
            if self._ctx is None:
                return
            if logout and not self._dead.is_set():
                _lib.iscsi_logout_sync(self._ctx)
            # Destroying a context closes its socket without a logout PDU.
            _lib.iscsi_destroy_context(self._ctx)
            self._ctx, self._fd = None, -1
            self._dead.set()

    def _join(self) -> None:
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=10)

    # ------------------------------------------------------------------ API

    def read_label(self) -> str:
        """Block 0 of the LUN, up to the first NUL: the persona label the lab wrote there."""
        def read() -> bytes:
            ctx = self._ctx
            if ctx is None or self._frozen or self._dead.is_set():
                raise OSError(f"session to {self.target} is not running")
            task = _lib.scsi_cdb_read10(0, BLOCK, BLOCK, 0, 0, 0, 0, 0)
            buf = ctypes.create_string_buffer(BLOCK)
            _lib.scsi_task_add_data_in_buffer(task, BLOCK, buf)
            try:
                done = _lib.iscsi_scsi_command_sync(ctx, self.lun, task, None)
                status = ctypes.c_int.from_address(task).value  # struct scsi_task starts with int status
                if not done or status != 0:
                    err = (_lib.iscsi_get_error(ctx) or b"").decode(errors="replace")
                    raise OSError(f"READ(10) of {self.target} LUN {self.lun} failed: {err or status}")
                return buf.raw
            finally:
                _lib.scsi_free_scsi_task(task)
        for attempt in range(3):
            try:
                data: bytes = self._call(read, timeout_s=30)
                break
            except OSError as exc:
                # A UNIT ATTENTION (tgtd raises one per nexus after a reset, a new LUN...) is
                # reported once and cleared: like any initiator, ask again.
                if "UNIT_ATTENTION" not in str(exc) or attempt == 2:
                    raise
        return data.split(b"\0", 1)[0].decode(errors="replace").strip()

    def logout(self) -> None:
        """Clean logout (graceful shutdown). Quiet on a session that is already dead or closed."""
        try:
            self._call(lambda: self._close(logout=self.alive), timeout_s=30)
        finally:
            self._stop = True
            self._signal()
            self._join()

    def freeze(self) -> None:
        """Power cut: stop answering, no logout; the socket stays open like a dead server's TCP."""
        self._freeze = True
        self._signal()
        self._join()

    def drop(self) -> None:
        """Close the socket without logout (the lab's TCP timeout passed, or the target killed it)."""
        self._stop = True
        self._signal()
        self._join()
        self._close(logout=False)

    @property
    def alive(self) -> bool:
        """False once the connection is gone (killed by the target, logged out or dropped)."""
        fd = self._fd
        if self._dead.is_set() or fd < 0:
            return False
        if self._frozen:
            # Nobody reads the socket: ask the kernel whether the target has closed its side.
            p = select.poll()
            p.register(fd, select.POLLRDHUP)
            if p.poll(0):
                return False
        return True

    def wait_dead(self, timeout_s: float) -> bool:
        """Until the session is gone (the serviced case; a frozen session learns it by ``alive``)."""
        return self._dead.wait(timeout_s)
