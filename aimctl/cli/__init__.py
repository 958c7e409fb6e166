"""The operator's command line: ``aimctl ...``."""

from aimctl.cli.main import app, main

__all__ = ["app", "main"]
