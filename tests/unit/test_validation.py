"""Strict patterns for values that reach a CLI, a shell or PowerShell: injection is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aimctl.netos import valid_port
from aimctl.validation import HOSTNAME_RE, IQN_RE, NAME_RE, PS_NAME_RE, valid_vlan

EVIL_SUFFIXES = ["\n", "\nreload", "; shutdown", "$(reboot)", "`id`", " ", "'", "\r\n", "\x00"]


@pytest.mark.parametrize("suffix", EVIL_SUFFIXES)
def test_suffixes_refused(suffix: str) -> None:
    assert not IQN_RE.match("iqn.2026-01.lab.storage:exchange1-boot" + suffix)
    assert not HOSTNAME_RE.match("exchmgmt.lab" + suffix)
    assert not NAME_RE.match("exchange1" + suffix)
    assert not PS_NAME_RE.match("DAG1" + suffix)
    for os_name, port in (("dell_powerconnect", "1/g1"), ("dell_os6", "Te1/0/1"),
                          ("cisco_ios", "GigabitEthernet0/1"), ("arista_eos", "Ethernet1")):
        assert valid_port(os_name, port)
        assert not valid_port(os_name, port + suffix)


def test_vlan_range() -> None:
    assert valid_vlan(1) and valid_vlan(4094)
    assert not valid_vlan(0) and not valid_vlan(4095) and not valid_vlan(True)  # type: ignore[arg-type]


@given(st.text(max_size=30))
def test_ps_names_never_carry_shell_metacharacters(s: str) -> None:
    if PS_NAME_RE.match(s):
        assert not set(s) & set("'\"`$;|&(){}<>\n\r \t")
