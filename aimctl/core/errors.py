"""The base of every error an operator can act on; the controller's driver errors build on it."""

from __future__ import annotations


class OperatorError(Exception):
    """A mistake or condition the operator must fix; shown without a traceback (exit 2)."""

    exit_code = 2


class SecretError(OperatorError):
    """A secret reference that cannot be resolved (missing env var, unreadable file)."""
