"""Small netmiko subclasses for what the stock classes get wrong on some OSes.

A row of ``switch_templates/os.yaml`` names one (``quirks:``) only when it needs one; an OS without
it runs on netmiko's own class for its device type.

Each override is a quirk seen on the lab switches (fake-switches) and is harmless on the real
OS: leaving config mode with repeated ``exit`` works everywhere, reading the prompt to check the
mode is what a human does. Keep each override covered by a test (tests/contract/test_switch.py).

* Leaving config mode: the fakes have no ``end``; one ``exit`` from ``(config-if)`` only reaches
  ``(config)``. ``ExitByExit.exit_config_mode`` sends ``exit`` until the prompt has no ``(config``.
* Checking config mode (Dell): the stock check reads by timing (2-4 s per check) and looks for
  ``(config)#``, which misses ``(config-if-Te1/0/1)#``. Read up to the prompt and look for ``(config``.
* PowerConnect login: stock netmiko uses SSH "none" auth and an in-band ``User Name:`` login;
  6200-class switches (and the lab) take ordinary password auth. Use a plain paramiko client.
* Failing session preparation: stock logs out politely, waiting a full read timeout on a switch
  that stopped answering; close the socket instead (and skip a fixed 0.1 s sleep).
* Arista session preparation: stock waits for ``Width set to`` (never printed by the lab switch)
  and sends ``terminal length 0`` before ``enable`` (refused there). Only test the channel and
  set the base prompt; paging is switched off after ``enable`` by the driver.
"""

from __future__ import annotations

import re
from typing import Any

import paramiko
from netmiko.arista.arista import AristaSSH
from netmiko.cisco.cisco_ios import CiscoIosSSH
from netmiko.dell.dell_dnos6 import DellDNOS6SSH
from netmiko.dell.dell_powerconnect import DellPowerConnectSSH

PROMPT_END = r"[>#]\s*$"
# Deepest config sub-mode we ever enter is (config-if) or (config-vlan): two levels; allow slack.
_MAX_EXITS = 4


class ExitByExit:
    """Config-mode check by reading the prompt, exit by repeated ``exit``, and a session
    preparation that fails fast."""

    CONFIG_MARK = "(config"

    # These are provided by netmiko's BaseConnection at run time.
    RETURN: str
    write_channel: Any
    read_until_pattern: Any
    normalize_cmd: Any
    session_preparation: Any
    paramiko_cleanup: Any

    def _try_session_preparation(self, force_data: bool = True) -> None:
        # Stock sleeps a fixed 0.1 s after the first RETURN (the prompt read that follows waits
        # for data anyway) and, when preparation fails, logs out politely, which on a switch that
        # stopped answering costs one more full read timeout. Close the socket instead.
        try:
            if force_data:
                self.write_channel(self.RETURN)
            self.session_preparation()
        except Exception:
            self.paramiko_cleanup()
            raise

    def _prompt_after(self, text: str) -> str:
        self.write_channel(text)
        out: str = self.read_until_pattern(pattern=PROMPT_END)
        lines = out.strip().splitlines()
        return lines[-1] if lines else ""

    def check_config_mode(self, check_string: str = "", pattern: str = "", force_regex: bool = False) -> bool:
        return (check_string or self.CONFIG_MARK) in self._prompt_after(self.RETURN)

    def exit_config_mode(self, exit_config: str = "exit", pattern: str = "") -> str:
        prompt = self._prompt_after(self.RETURN)
        for _ in range(_MAX_EXITS):
            if self.CONFIG_MARK not in prompt:
                return prompt
            prompt = self._prompt_after(self.normalize_cmd(exit_config or "exit"))
        raise ValueError(f"still in configuration mode after {_MAX_EXITS} exits: {prompt!r}")


class CiscoIosQuirks(ExitByExit, CiscoIosSSH):
    """cisco_ios: stock, except leaving config mode by ``exit`` (no ``end`` on the lab switch)."""


class DellOs6Quirks(ExitByExit, DellDNOS6SSH):
    """dell_os6: prompt-read config check and exit by ``exit``."""


class DellPowerConnectQuirks(ExitByExit, DellPowerConnectSSH):
    """dell_powerconnect: password auth through a plain paramiko client, no in-band login."""

    def _get_ssh_client_instance(self) -> paramiko.SSHClient:
        return paramiko.SSHClient()

    def special_login_handler(self, delay_factor: float = 1.0) -> None:
        return None

    def session_preparation(self) -> None:
        # Stock adds a fixed 0.3 s sleep and two paging commands; 6200-class needs only datadump.
        self.ansi_escape_codes = True
        self._test_channel_read(pattern=r"[>#]")
        self.set_base_prompt()
        self.enable()
        self.disable_paging(command="terminal datadump")
        self.clear_buffer()


class AristaQuirks(ExitByExit, AristaSSH):
    """arista_eos: session preparation only tests the channel and sets the base prompt."""

    def session_preparation(self) -> None:
        self.ansi_escape_codes = True
        self._test_channel_read(pattern=self.prompt_pattern)
        self.set_base_prompt()


QUIRK_CLASSES: dict[str, type[Any]] = {
    "CiscoIosQuirks": CiscoIosQuirks,
    "DellOs6Quirks": DellOs6Quirks,
    "DellPowerConnectQuirks": DellPowerConnectQuirks,
    "AristaQuirks": AristaQuirks,
}


def prompt_pattern(base_prompt: str) -> str:
    """The full prompt line of any mode (``sw1>``, ``sw1#``, ``sw1(config-if-1/g1)#``)."""
    return rf"{re.escape(base_prompt)}[^\r\n]*{PROMPT_END}"
