"""Secret references (``env:NAME``, ``file:PATH``) and the masker, under the name the controller's
modules import. The one implementation is ``aimctl.core.secrets``, shared with the persona agent."""

from __future__ import annotations

from aimctl.core.secrets import (
    REF_RE,
    MaskingFilter,
    install_log_masking,
    is_reference,
    mask,
    register,
    resolve,
    resolve_bytes,
)

__all__ = ["REF_RE", "MaskingFilter", "install_log_masking", "is_reference", "mask", "register", "resolve",
           "resolve_bytes"]
