"""Host simulators: what a physical body does after its BMC powers it on.

A host learns its power in process from its BMC emulator. Powered on, it reads its boot config
(Redfish iSCSIBoot from its BMC, or the iPXE script the controller serves for IPMI bodies), logs in
to the persona's LUNs over real iSCSI with the configured initiator name, CHAP secret and its own
server name as alias, reads the persona label from the boot LUN, and starts the persona agent.
Power cut: the agent stops at once and the sessions freeze without logout — a dead server's
half-open TCP — until the target kills them or the lab TCP timeout passes. That is what makes
fencing matter, and what the access observer sees. A running body whose boot-LUN session the
target kills (a storage fence of a body that was alive after all) loses its system disk: the OS
stops, and its agent with it, as a SAN-booted server's does.

The agent runs the lab's service check: a TCP port the lab listens on for this body (``service``),
with a restart command that only counts restarts; ``service-fail`` closes the port, so the agent
restarts, gives up and reports the persona unhealthy (restart, then failover).
"""

from __future__ import annotations

import http.client
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aimctl.agent.bootfacts import is_rehearsal
from aimctl.agent.checks import CheckSpec
from aimctl.agent.run import REASON_REQUESTED, run_agent
from aimctl.validation import REHEARSAL_SUFFIX
from lab.storage.iscsi_session import HeldSession

log = logging.getLogger(__name__)

_IPXE_SANBOOT = re.compile(r"sanboot\s+iscsi:(?P<host>[^:]+):[^:]*:(?P<port>\d*):(?P<lun>[0-9a-fA-F]+):(?P<target>\S+)")
_IPXE_SET = re.compile(r"^set\s+(?P<k>[\w-]+)\s+(?P<v>\S+)\s*$", re.MULTILINE)


@dataclass
class BootConfig:
    initiator: str
    target: str
    lun: int
    portal: str
    chap_user: str | None
    chap_secret: str | None


def parse_ipxe(text: str) -> BootConfig | None:
    """What an iPXE ROM would take from the script: ``set`` variables and the ``sanboot`` URI."""
    m = _IPXE_SANBOOT.search(text)
    if not m:
        return None
    sets = {x["k"]: x["v"] for x in _IPXE_SET.finditer(text)}
    # iPXE reads the LUN field of a SAN URI as hexadecimal (scsi_parse_lun), and so do we.
    return BootConfig(sets.get("initiator-iqn", ""), m["target"], int(m["lun"], 16),
                      f"{m['host']}:{m['port'] or 3260}", sets.get("username"), sets.get("password"))


def redfish_boot(raw: dict[str, Any] | None) -> BootConfig | None:
    if not raw or not raw.get("InitiatorName") or not raw.get("PrimaryTargetName"):
        return None
    return BootConfig(raw["InitiatorName"], raw["PrimaryTargetName"], int(raw.get("PrimaryLUN") or 0),
                      f"{raw.get('PrimaryTargetIPAddress')}:{raw.get('PrimaryTargetTCPPort') or 3260}",
                      raw.get("CHAPUsername"), raw.get("CHAPSecret"))


@dataclass
class PersonaRuntime:
    """What the lab knows a persona needs once its OS is up (its data LUNs and agent key)."""

    name: str
    data_luns: list[tuple[str, int]]
    key: bytes
    interval_s: float
    initiator: str = ""


def runtime_for(label: str, initiator: str, personas: dict[str, PersonaRuntime]) -> PersonaRuntime | None:
    """Which persona a boot LUN boots: the one its label names, or for a gold image the one whose
    initiator name it was booted with (a rehearsal's too)."""
    if not label.startswith("gold:"):
        return personas.get(label)
    own = initiator.removesuffix(REHEARSAL_SUFFIX)
    return next((rt for rt in list(personas.values()) if rt.initiator == own), None)


@dataclass
class HostStatus:
    power: bool = False
    booted: str | None = None
    rehearsal: str | None = None  # the persona this body boots as a spare rehearsal
    state: str = "off"
    detail: str = ""
    sessions: list[str] = field(default_factory=list)
    boots: int = 0


class Host:
    def __init__(self, server: str, read_boot: Callable[[], BootConfig | None],
                 personas: dict[str, PersonaRuntime], agent_target: tuple[str, int],
                 boot_s: float, tcp_timeout_s: float,
                 on_persona: Callable[[str, str, bool], None] | None = None,
                 service: CheckSpec | None = None) -> None:
        self.server = server
        self._read_boot = read_boot
        self._personas = personas
        self._agent_target = agent_target
        self.boot_s = boot_s
        self.tcp_timeout_s = tcp_timeout_s
        self._on_persona = on_persona or (lambda server, persona, up: None)
        self.service = service
        self.status = HostStatus()
        self.boot_fail = False
        self._lock = threading.Lock()
        self._power_gen = 0
        self._sessions: list[HeldSession] = []
        self._frozen: list[tuple[float, HeldSession]] = []
        self._agent_stop: threading.Event | None = None

    # -- power, as told by the BMC emulator (in process)

    def power_changed(self, on: bool) -> None:
        with self._lock:
            self._power_gen += 1
            gen = self._power_gen
            self.status.power = on
        if on:
            threading.Thread(target=self._boot, args=(gen,), name=f"boot-{self.server}", daemon=True).start()
        else:
            self._cut()

    def _alive(self, gen: int) -> bool:
        return self._power_gen == gen and self.status.power

    def _set(self, state: str, detail: str = "") -> None:
        self.status.state, self.status.detail = state, detail
        log.info("%s: %s %s", self.server, state, detail)

    def _boot(self, gen: int) -> None:
        self._set("booting", "reading boot config")
        # Firmware and OS take time; a power cut during it aborts the boot.
        deadline = time.monotonic() + self.boot_s
        while time.monotonic() < deadline:
            if not self._alive(gen):
                return
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        if self.boot_fail:
            self._set("boot-failed", "fault injected: the OS does not come up")
            return
        try:
            cfg = self._read_boot()
        except Exception as exc:  # noqa: BLE001 - any failure to read is a failed boot, shown in status
            self._set("boot-failed", f"cannot read boot config: {exc}")
            return
        if cfg is None:
            self._set("boot-failed", "no iSCSI boot config")
            return
        sessions: list[HeldSession] = []
        try:
            boot = HeldSession.login(cfg.portal, cfg.target, cfg.lun, cfg.initiator, self.server,
                                     cfg.chap_user, cfg.chap_secret)
            sessions.append(boot)
            label = boot.read_label().strip()
            rt = runtime_for(label, cfg.initiator, self._personas)
            if rt is None:
                raise RuntimeError(f"boot LUN label {label!r} (initiator {cfg.initiator}) is no persona of this lab")
            persona = rt.name
            rehearsal = is_rehearsal(cfg.initiator)
            for target, lun in [] if rehearsal else rt.data_luns:
                sessions.append(HeldSession.login(cfg.portal, target, lun, cfg.initiator, self.server,
                                                  cfg.chap_user, cfg.chap_secret))
        except Exception as exc:  # noqa: BLE001 - wrong initiator/CHAP/ACL: a visible failed boot
            for s in sessions:
                s.logout()
            self._set("boot-failed", f"iSCSI login: {exc}")
            return
        with self._lock:
            if not self._alive(gen):
                for s in sessions:
                    s.freeze()
                    self._frozen.append((time.monotonic(), s))
                return
            self._sessions = sessions
            stop = threading.Event()
            self._agent_stop = stop
            if rehearsal:
                self.status.rehearsal = persona
            else:
                self.status.booted = persona
            self.status.boots += 1
            self.status.sessions = [cfg.target] + ([] if rehearsal else [t for t, _ in rt.data_luns])
        threading.Thread(target=run_agent, name=f"agent-{persona}", daemon=True,
                         kwargs={"persona": persona, "controller": self._agent_target, "key": rt.key,
                                 "interval_s": rt.interval_s, "stop_event": stop,
                                 "checks": [self.service] if self.service else [], "restarts": 3,
                                 "on_shutdown": self._agent_ended, "rehearsal": rehearsal}).start()
        if rehearsal:
            self._set("rehearsal", persona)
            return
        self._set("running", persona)
        self._on_persona(self.server, persona, True)

    def _agent_ended(self, reason: str) -> None:
        # Only a stop *requested by the controller* shuts the persona down cleanly; an agent stopped
        # by a power cut leaves everything as the cut left it.
        if reason == REASON_REQUESTED:
            self.shutdown()

    def _cut(self) -> None:
        self._stop_persona("cut")

    def shutdown(self) -> None:
        """Graceful stop asked by the controller through the agent (planned failback): log out cleanly."""
        self._stop_persona("shutdown")

    def _stop_persona(self, how: str, why: str = "") -> None:
        """The persona ends: cleanly (``shutdown``: logout), frozen mid-flight when the power goes
        (``cut``), or dead under a powered body whose boot LUN was taken away (``crash``: the
        sessions are gone already, nothing to freeze)."""
        with self._lock:
            persona = self.status.booted
            if self._agent_stop:
                self._agent_stop.set()
                self._agent_stop = None
            now = time.monotonic()
            for s in self._sessions:
                if how == "shutdown":
                    s.logout()
                elif how == "crash":
                    s.drop()
                else:
                    s.freeze()
                    self._frozen.append((now, s))
            self._sessions = []
            self.status.booted = None
            self.status.rehearsal = None
            self.status.sessions = []
        if how == "shutdown":
            self._set("halted", "persona shut down")
        elif how == "crash":
            self._set("crashed", why)
        else:
            self._set("off", "power cut" if persona else "")
        if persona:
            self._on_persona(self.server, persona, False)

    def tick(self) -> None:
        """Frozen sessions die when the lab TCP timeout passes (or earlier, if the target killed them);
        a running persona whose boot-LUN session the target killed crashes."""
        now = time.monotonic()
        boot = self._sessions[0] if self._sessions else None
        if boot is not None and self.status.booted and not boot.alive:
            self._stop_persona("crash", f"lost its boot LUN {boot.target} (the target dropped the session)")
        with self._lock:
            keep = []
            for t, s in self._frozen:
                if now - t >= self.tcp_timeout_s or not s.alive:
                    s.drop()
                else:
                    keep.append((t, s))
            self._frozen = keep

    def drop_all(self) -> None:
        with self._lock:
            for _, s in self._frozen:
                s.drop()
            self._frozen = []
            for s in self._sessions:
                s.logout()
            self._sessions = []

    def snapshot(self) -> dict[str, Any]:
        st = self.status
        return {"power": "on" if st.power else "off", "booted": st.booted, "rehearsal": st.rehearsal,
                "state": st.state, "detail": st.detail,
                "held_sessions": list(st.sessions), "frozen_sessions": len(self._frozen), "boots": st.boots}


def fetch_ipxe(url: str, timeout_s: float = 3.0) -> BootConfig | None:
    """The controller's script for this body, or None when no controller answers there. The port is
    only reserved for the controller until it starts: something else may hold it meanwhile (another
    lab's switch answering with an SSH banner), which is no answer either."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return parse_ipxe(resp.read().decode(errors="replace"))
    except (OSError, http.client.HTTPException):
        return None
