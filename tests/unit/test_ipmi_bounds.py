"""The IPMI driver never waits on pyghmi longer than its timeout, whatever pyghmi does."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pyghmi.ipmi.private import session as ipmi_session

from aimctl.drivers import ipmi
from aimctl.errors import Unreachable


def test_pyghmis_two_session_locks_are_one() -> None:
    """The lock-order deadlock between pyghmi's send path (KEEPALIVE, then WAITING) and its
    retransmit path (WAITING, then KEEPALIVE) cannot happen with a single re-entrant lock."""
    assert ipmi_session.WAITING_SESSIONS is ipmi_session.KEEPALIVE_SESSIONS
    lock = ipmi_session.KEEPALIVE_SESSIONS
    with lock, lock:  # re-entrant: the nested takes of both paths still work in one thread
        pass


def test_a_call_returns_on_time_even_when_dropping_the_session_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A BMC that never answers, and a pyghmi that never lets go when its session is killed (as in
    the deadlock above): the caller is told Unreachable after about its timeout, not never."""
    forever = threading.Event()
    p = ipmi.IpmiPower("127.0.0.1", 1, "u", "p", timeout_s=0.3)
    monkeypatch.setattr(p, "_command", lambda: forever.wait())  # the BMC never answers
    monkeypatch.setattr(p, "_pyghmi_sessions", lambda: [object()])
    monkeypatch.setattr(ipmi, "_kill", lambda sess: forever.wait())  # pyghmi's lock never comes
    t0 = time.monotonic()
    with pytest.raises(Unreachable, match="read power state: no answer within 0.3s"):
        p.state()
    assert time.monotonic() - t0 < 3.0  # about its 0.3 s timeout, never "forever" (margin for a loaded machine)
    forever.set()


def test_an_answer_is_returned_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    class Cmd:
        ipmi_session: Any = type("S", (), {})()

        def raw_command(self, **kw: Any) -> dict[str, Any]:
            return {"data": bytes([0x01])}

    p = ipmi.IpmiPower("127.0.0.1", 1, "u", "p", timeout_s=0.5)
    monkeypatch.setattr(p, "_command", lambda: Cmd())
    assert p.state().value == "on"
