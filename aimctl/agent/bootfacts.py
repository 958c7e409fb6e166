"""What the persona OS learns from how it was booted: its iSCSI boot facts.

Firmware that boots from iSCSI hands the OS its boot parameters (the iBFT; Linux shows it under
``/sys/firmware/ibft``, Windows as ``MSiSCSI_iBFTTable``). A spare rehearsal boots a copy of the
persona under the rehearsal initiator name (``<initiator>-rehearsal``), so the initiator name alone
tells the agent it is a rehearsal: it then signs its heartbeats as rehearsal heartbeats (the
controller never counts them as the persona's own) and starts no service.
"""

from __future__ import annotations

from pathlib import Path

from aimctl.core.names import is_rehearsal_initiator

IBFT_INITIATOR = Path("/sys/firmware/ibft/initiator/initiator-name")


def boot_initiator(path: Path = IBFT_INITIATOR) -> str | None:
    """The initiator name this OS was booted with, or None (not an iSCSI boot, or no iBFT)."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def is_rehearsal(initiator: str | None) -> bool:
    return bool(initiator) and is_rehearsal_initiator(str(initiator))
