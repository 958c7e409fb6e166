"""Polling with a deadline, the one way tests wait for something (never a fixed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(cond: Callable[[], object], timeout_s: float = 5.0, poll_s: float = 0.02) -> bool:
    """True as soon as ``cond()`` is truthy; False if it is still falsy at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll_s)
    return bool(cond())


def wait_for(cond: Callable[[], T], timeout_s: float = 5.0, what: str = "condition", poll_s: float = 0.02) -> T:
    """``cond()``'s first truthy value, or AssertionError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s}s")
        time.sleep(poll_s)
