"""Contract suite for ``SwitchPorts``: NetmikoSwitch against fake-switches SSH switches (SwitchLab),
one suite run for each network OS. What a port carries is checked twice: through the driver's own
read-back over SSH and through the lab's configuration objects in process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from netmiko.exceptions import NetmikoTimeoutException, ReadTimeout

from aimctl.drivers.netmiko_quirks import QUIRK_CLASSES
from aimctl.drivers.protocols import PortIntent, PortMode, PortState, SwitchPorts
from aimctl.drivers.switch import NetmikoSwitch
from aimctl.drivers.switch_os import load_profile
from aimctl.errors import AuthFailed, Rejected, StateMismatch, Timeout, Unreachable
from lab.network.switches import SwitchLab, SwitchSpec

pytestmark = pytest.mark.lab

USER, PASSWORD, ENABLE = "netops", "sw-pass-5c2e91", "sw-enable-a7f3"
PORTS = {
    "dell_powerconnect": ["1/g1", "1/g2", "1/g3", "1/g4", "1/xg1"],
    "dell_os6": ["Te1/0/1", "Te1/0/2", "Te1/0/3", "Te1/0/4", "Gi1/0/1"],
    "cisco_ios": ["GigabitEthernet0/1", "GigabitEthernet0/2", "GigabitEthernet0/3", "GigabitEthernet0/4",
                  "FastEthernet0/1"],
    "arista_eos": ["Ethernet1", "Ethernet2", "Ethernet3", "Ethernet4", "Ethernet5"],
}
# A name that is valid for the OS but not a port of the lab switch: the switch refuses it.
ABSENT = {"dell_powerconnect": "1/g40", "dell_os6": "Te1/0/40", "cisco_ios": "GigabitEthernet0/40",
          "arista_eos": "Ethernet40"}
OSES = list(PORTS)
CMD_TIMEOUT = 1.0

TRUNK = PortIntent("", PortMode.TRUNK, (4004, 100, 200), description="aimctl exchange1 ch1")
ACCESS = PortIntent("", PortMode.ACCESS, (100,), description="aimctl exchange1 ch3")
QUAR = PortIntent("", PortMode.ACCESS, (999,), description="aimctl quarantine ch1", quarantine=True)


def at(intent: PortIntent, port: str, **kw: Any) -> PortIntent:
    return PortIntent(port, kw.get("mode", intent.mode), kw.get("vlans", intent.vlans),
                      kw.get("native_vlan", intent.native_vlan), kw.get("description", intent.description),
                      kw.get("quarantine", intent.quarantine))


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[tuple[SwitchLab, dict[str, int]]]:
    sl = SwitchLab([SwitchSpec(f"sw-{os}", os, ports) for os, ports in PORTS.items()], USER, PASSWORD, ENABLE)
    ports = sl.start()
    request.addfinalizer(sl.stop)
    yield sl, ports


@pytest.fixture(params=OSES)
def rig(request: pytest.FixtureRequest, lab: tuple[SwitchLab, dict[str, int]]) -> Iterator[Any]:
    sl, ports = lab
    os_name = request.param

    class Rig:
        os = os_name
        name = f"sw-{os_name}"
        p = PORTS[os_name]

        @staticmethod
        def switch(**kw: Any) -> NetmikoSwitch:
            args: dict[str, Any] = {"password": PASSWORD, "enable_password": ENABLE, "connect_timeout_s": 5,
                                    "command_timeout_s": CMD_TIMEOUT}
            args.update(kw)
            return NetmikoSwitch(f"sw-{os_name}", os_name, "127.0.0.1", ports[f"sw-{os_name}"], USER, **args)

        @staticmethod
        def state(port: str) -> PortState:
            return sl.port_state(f"sw-{os_name}", port)

    for port in Rig.p:  # every test starts from the same known ports
        sl.reset_port(Rig.name, port, PortIntent(port, PortMode.ACCESS, (1,)))
    yield Rig
    for kind in ("hang", "reject", "hang-login", "refuse"):
        sl.set_fault(Rig.name, kind, False)


def same(a: PortState, b: PortState) -> bool:
    return a.mode is b.mode and set(a.vlans) == set(b.vlans) and a.native_vlan == b.native_vlan


def test_driver_satisfies_the_protocol(rig: Any) -> None:
    assert isinstance(rig.switch(), SwitchPorts)


def test_trunk_access_quarantine_applied_and_read_back(rig: Any, lab: Any) -> None:
    sl, _ = lab
    sw = rig.switch()
    intents = [at(TRUNK, rig.p[0]), at(ACCESS, rig.p[1]), at(QUAR, rig.p[2])]
    got = sw.apply(intents)
    assert [(s.port, s.mode, set(s.vlans)) for s in got] == [
        (rig.p[0], PortMode.TRUNK, {4004, 100, 200}), (rig.p[1], PortMode.ACCESS, {100}),
        (rig.p[2], PortMode.ACCESS, {999})]
    for intent, seen in zip(intents, got):
        assert same(rig.state(intent.port), seen)  # the switch's own objects agree with the read-back
    assert sl.carries(rig.name, rig.p[0], 4004) and not sl.carries(rig.name, rig.p[2], 4004)
    assert sl.description(rig.name, rig.p[2]) == "aimctl quarantine ch1"
    assert [same(a, b) for a, b in zip(sw.read(rig.p[:3]), got)] == [True, True, True]


def test_trunk_allowed_set_becomes_exactly_the_intent(rig: Any, lab: Any) -> None:
    sl, _ = lab
    sl.reset_port(rig.name, rig.p[0], PortIntent(rig.p[0], PortMode.TRUNK, (100, 200, 300)))
    got = rig.switch().apply([at(TRUNK, rig.p[0], vlans=(100, 4004))])
    assert set(got[0].vlans) == {100, 4004}
    assert set(rig.state(rig.p[0]).vlans) == {100, 4004}


def test_quarantine_takes_a_trunk_port_off_every_persona_vlan(rig: Any, lab: Any) -> None:
    sl, _ = lab
    sl.reset_port(rig.name, rig.p[0], PortIntent(rig.p[0], PortMode.TRUNK, (4004, 100, 200)))
    rig.switch().apply([at(QUAR, rig.p[0])])
    assert rig.state(rig.p[0]) == PortState(rig.p[0], PortMode.ACCESS, (999,))
    assert not any(sl.carries(rig.name, rig.p[0], v) for v in (4004, 100, 200))


def test_native_vlan(rig: Any) -> None:
    sw = rig.switch()
    intent = at(TRUNK, rig.p[0], vlans=(100, 200), native_vlan=100)
    if not load_profile(rig.os).native_vlan:
        with pytest.raises(Rejected, match="native VLAN"):
            sw.apply([intent])
        return
    if rig.os == "dell_os6":
        # The lab's DNOS6 switch accepts `switchport trunk native vlan` and ignores it: the
        # read-back catches the lie, and the port is put back as it was.
        with pytest.raises(StateMismatch, match=rf"port {rig.p[0]}: intended trunk .*native 100.*restored"):
            sw.apply([intent])
        assert rig.state(rig.p[0]) == PortState(rig.p[0], PortMode.ACCESS, (1,))
        return
    assert sw.apply([intent])[0].native_vlan == 100
    assert rig.state(rig.p[0]).native_vlan == 100


def test_third_party_netmiko_client_reads_running_config(rig: Any, lab: Any) -> None:
    _, ports = lab
    rig.switch().apply([at(ACCESS, rig.p[1])])
    conn = load_profile(rig.os).netmiko_class()(
        host="127.0.0.1", port=ports[rig.name], username=USER, password=PASSWORD, secret=ENABLE,
        use_keys=False, allow_agent=False, read_timeout_override=5)
    try:
        conn.enable()
        out = conn.send_command("show running-config", read_timeout=5)
    finally:
        conn.disconnect()
    assert "interface" in out and "access vlan 100" in out


def test_quirks_enter_and_leave_config_mode_fast(rig: Any, lab: Any) -> None:
    """Covers each quirk class: login (PowerConnect), session preparation (Arista), config-mode
    check by prompt (Dell: stock reads by timing for seconds) and exit by `exit` (all)."""
    _, ports = lab
    profile = load_profile(rig.os)
    t0 = time.monotonic()
    conn = profile.netmiko_class()(
        host="127.0.0.1", port=ports[rig.name], username=USER, password=PASSWORD, secret=ENABLE,
        use_keys=False, allow_agent=False, read_timeout_override=3)
    try:
        conn.enable()
        assert not conn.check_config_mode()
        conn.config_mode(config_command=profile.config_enter)
        conn.write_channel(conn.normalize_cmd(f"interface {rig.p[0]}" if rig.os != "dell_powerconnect"
                                              else f"interface ethernet {rig.p[0]}"))
        assert conn.check_config_mode()  # in (config-if...): two exits needed
        conn.exit_config_mode()
        assert not conn.check_config_mode()
        assert conn.check_enable_mode()
    finally:
        conn.disconnect()
    assert time.monotonic() - t0 < 2.0


def test_wrong_password_is_auth_failed_and_masked(rig: Any) -> None:
    with pytest.raises(AuthFailed) as err:
        rig.switch(password="wrong-pass-0b9d").read([rig.p[0]])
    assert "wrong-pass-0b9d" not in str(err.value) and rig.name in str(err.value)


def test_wrong_enable_password_is_auth_failed(rig: Any) -> None:
    if rig.os == "arista_eos":
        pytest.skip("the lab's EOS switch enters enable mode without a password")
    with pytest.raises(AuthFailed, match="enable"):
        rig.switch(enable_password="wrong-enable-33a1").read([rig.p[0]])


def test_nothing_listening_is_unreachable(rig: Any, lab: Any) -> None:
    sl, _ = lab
    sl.set_fault(rig.name, "refuse", True)
    try:
        with pytest.raises(Unreachable):
            rig.switch().read([rig.p[0]])
    finally:
        sl.set_fault(rig.name, "refuse", False)


def test_switch_that_never_prompts_times_out_at_login(rig: Any, lab: Any) -> None:
    sl, _ = lab
    sl.set_fault(rig.name, "hang-login", True)
    t0 = time.monotonic()
    try:
        with pytest.raises(Timeout):
            rig.switch().read([rig.p[0]])
    finally:
        sl.set_fault(rig.name, "hang-login", False)
    assert time.monotonic() - t0 < CMD_TIMEOUT + 1.0  # no polite logout wait on top


def test_switch_hang_mid_change_times_out_within_command_timeout(rig: Any, lab: Any) -> None:
    sl, _ = lab
    sl.set_fault(rig.name, "hang", True, after=3)  # answers 3 config commands, then nothing
    t0 = time.monotonic()
    with pytest.raises(Timeout, match=r"no answer within 1s to line .*previous config") as err:
        rig.switch().apply([at(TRUNK, rig.p[0]), at(QUAR, rig.p[1])])
    elapsed = time.monotonic() - t0
    assert elapsed < CMD_TIMEOUT + 1.5, elapsed  # connect + capture + one command timeout
    assert PASSWORD not in str(err.value)
    sl.set_fault(rig.name, "hang", False)
    assert rig.switch().read([rig.p[0]])  # the switch takes a new session once the hung one is gone


def test_refused_line_is_rejected_by_name_and_batch_rolled_back(rig: Any, lab: Any) -> None:
    sl, _ = lab
    sl.reset_port(rig.name, rig.p[0], PortIntent(rig.p[0], PortMode.ACCESS, (100,)))
    sl.reset_port(rig.name, rig.p[1], PortIntent(rig.p[1], PortMode.TRUNK, (200,)))
    before = [rig.state(p) for p in rig.p[:2]]
    sw = rig.switch()
    intents = [at(TRUNK, rig.p[0]), at(QUAR, rig.p[1])]
    lines = sw.render(intents, {s.port: s for s in before})
    # refuse the second line of the second port's block: the first port is done, the second half-done
    n = next(i for i, ln in enumerate(lines) if rig.p[1] in ln) + 1
    sl.set_fault(rig.name, "reject", True, after=n)
    with pytest.raises(Rejected) as err:
        sw.apply(intents)
    msg = str(err.value)
    assert rig.name in msg and f"port {rig.p[1]}" in msg and repr(lines[n]) in msg, msg
    assert "restored to their previous config" in msg, msg
    assert [rig.state(p) for p in rig.p[:2]] == before


def test_absent_port_is_rejected_and_the_rest_of_the_batch_rolled_back(rig: Any) -> None:
    before = rig.state(rig.p[0])
    with pytest.raises(Rejected) as err:
        rig.switch().apply([at(TRUNK, rig.p[0]), at(ACCESS, ABSENT[rig.os])])
    msg = str(err.value)
    assert f"port {ABSENT[rig.os]}" in msg and "interface" in msg and "restored" in msg, msg
    assert rig.state(rig.p[0]) == before


@pytest.mark.parametrize("bad", [
    {"port": "{p}\nreload"}, {"port": "{p}; reload"}, {"port": "{p} shutdown"}, {"port": "../{p}"},
    {"vlans": ("100; shutdown",)}, {"vlans": (0,)}, {"vlans": (4095,)}, {"vlans": (True,)}, {"vlans": ()},
    {"vlans": (100, 200)}, {"description": "x\nreload"}, {"description": "x'; reload"},
    {"description": 'a"b'}, {"native_vlan": 5000, "mode": PortMode.TRUNK},
])
def test_injection_refused_before_any_connection(rig: Any, lab: Any, bad: dict[str, Any]) -> None:
    sl, _ = lab
    fields = {"port": rig.p[0], "mode": PortMode.ACCESS, "vlans": (100,), "description": ""}
    fields.update({k: v.format(p=rig.p[0]) if isinstance(v, str) else v for k, v in bad.items()})
    sessions = sl.sessions(rig.name)
    sw = rig.switch()
    with pytest.raises(Rejected):
        sw.apply([at(ACCESS, rig.p[1]), PortIntent(**fields)])
    assert sl.sessions(rig.name) == sessions and sw.sessions_opened == 0


def test_empty_batch_opens_no_session(rig: Any, lab: Any) -> None:
    sl, _ = lab
    sessions = sl.sessions(rig.name)
    assert rig.switch().apply([]) == []
    assert sl.sessions(rig.name) == sessions


def test_concurrent_applies_are_serialized(rig: Any, lab: Any) -> None:
    sl, _ = lab
    results: dict[int, Any] = {}

    def run(k: int) -> None:
        try:  # two driver objects, one switch: the process-wide lock is per switch, not per object
            results[k] = rig.switch().apply([at(TRUNK, rig.p[k], vlans=(100 + k,))])
        except Exception as exc:  # noqa: BLE001 - reported below
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(isinstance(r, list) for r in results.values()), results
    assert sl.max_concurrent(rig.name) == 1
    assert rig.state(rig.p[2]).vlans == (102,) and rig.state(rig.p[3]).vlans == (103,)


def test_powerconnect_refuses_a_second_session(lab: Any) -> None:
    """Why the lock matters: the lab's PowerConnect, like a 62xx, takes one session at a time."""
    _, ports = lab
    name = "sw-dell_powerconnect"
    cls = QUIRK_CLASSES["DellPowerConnectQuirks"]
    first = cls(host="127.0.0.1", port=ports[name], username=USER, password=PASSWORD, secret=ENABLE,
                use_keys=False, allow_agent=False, read_timeout_override=3)
    try:
        for wait_s in (2.0, 0.3):  # refused after the switch's grace; a client that gives up first
            with pytest.raises((ReadTimeout, NetmikoTimeoutException, OSError)):
                cls(host="127.0.0.1", port=ports[name], username=USER, password=PASSWORD, secret=ENABLE,
                    use_keys=False, allow_agent=False, read_timeout_override=wait_s)
    finally:
        first.disconnect()
    # neither the refused nor the abandoned session holds the switch: the next one gets in
    assert NetmikoSwitch(name, "dell_powerconnect", "127.0.0.1", ports[name], USER, PASSWORD, ENABLE).read(["1/g1"])


def test_lab_reads_ports_in_process_and_restarts_in_one_process() -> None:
    specs = [SwitchSpec("a", "dell_powerconnect", ["1/g1", "1/g2"])]
    for _ in range(2):  # each lab has its own reactor, so a process can run one lab after another
        sl = SwitchLab(specs, USER, PASSWORD, ENABLE)
        ports = sl.start()
        try:
            sw = NetmikoSwitch("a", "dell_powerconnect", "127.0.0.1", ports["a"], USER, PASSWORD, ENABLE)
            sw.apply([PortIntent("1/g2", PortMode.TRUNK, (4004,))])
            assert sl.carries("a", "1/g2", 4004) and not sl.carries("a", "1/g1", 4004)
            sl.set_link("a", "1/g2", False)
            assert not sl.carries("a", "1/g2", 4004)
            assert (sl.ifindex("a", "1/g1"), sl.ifindex("a", "1/g2")) == (1, 2)  # PowerConnect numbering
            assert sl.vlans("a") == [1, 4004]
        finally:
            sl.stop()
        with pytest.raises(Unreachable):  # stopped means closed
            NetmikoSwitch("a", "dell_powerconnect", "127.0.0.1", ports["a"], USER, PASSWORD, ENABLE).read(["1/g1"])
