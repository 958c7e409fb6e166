"""The ``dns-update`` hook against a real DNS server (a private bind9 with a TSIG-signed zone), from
the persona's definition (the model's class) through ``run_hooks``, as the recovery step runs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from aimctl.model import DnsUpdateHook
from aimctl.recovery import hooks as H
from lab.dns.bind import BindLab

pytestmark = pytest.mark.lab

HOSTS = ["r720-1 IN A 10.0.0.11", "r720-2 IN A 10.0.0.12", "r720-3 IN A 10.0.0.13"]


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BindLab]:
    b = BindLab(tmp_path_factory.mktemp("bind") / "named", records=[
        "mail IN A 10.99.0.1", "@ IN MX 10 r720-1.lab.test.", *HOSTS])
    b.start()
    try:
        yield b
    finally:
        b.stop()


ADDRESSES = (("mapi", "10.1.0.11"), ("scn", "10.40.4.11"))


def hook(bind: BindLab, secret_ref: str, **kw: Any) -> H.HookSpec:
    return DnsUpdateHook.model_validate({
        "hook": "dns-update", "point": "post-boot", "server": "127.0.0.1", "port": bind.port, "zone": "lab.test",
        "key_name": "aimctl-key", "credentials": secret_ref, "timeout": "5s",
        "records": kw.pop("records", [{"name": "mail", "type": "A", "ttl": "1m", "value": "{address:mapi}"},
                                      {"name": "@", "type": "MX", "ttl": "2m", "value": "10 {server}.lab.test."}]),
        **kw})


def run(spec: H.HookSpec, to: str = "r720-3") -> H.HookResult:
    ctx = H.HookContext("exchange1", "r720-1", to, "mv-20261127-0001", addresses=ADDRESSES)
    return H.run_hooks([spec], ctx, "post-boot")[0]


def test_a_move_changes_the_a_and_mx_records_and_reads_them_back(bind: BindLab) -> None:
    before = bind.read("mail.lab.test", "A"), bind.read("lab.test", "MX")
    res = run(hook(bind, f"file:{bind.secret_file}"))
    assert res.ok, res.error
    assert res.kind == "dns-update" and "read back" in res.output
    after = bind.read("mail.lab.test", "A"), bind.read("lab.test", "MX")
    assert before == ((300, ["10.99.0.1"]), (300, ["10 r720-1.lab.test."]))
    assert after == ((60, ["10.1.0.11"]), (120, ["10 r720-3.lab.test."]))
    assert bind.secret not in res.output + str(res.data)


def test_a_wrong_tsig_key_is_refused_and_reported(bind: BindLab, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("d3Jvbmcgc2VjcmV0IGZvciB0aGUgbGFiIGtleSAxMjM0NTY=")
    before = bind.read("mail.lab.test", "A")
    res = run(hook(bind, f"file:{wrong}"), to="r720-2")
    assert not res.ok and "BADSIG" in (res.error or "") and "aimctl-key" in (res.error or "")
    assert bind.read("mail.lab.test", "A") == before
    res = run(hook(bind, f"file:{bind.secret_file}", key_name="nobodys-key"))
    assert not res.ok and "BADKEY" in (res.error or "")


def test_a_value_that_is_not_dns_data_is_refused_before_sending(bind: BindLab) -> None:
    before = bind.read("lab.test", "MX")
    spec = hook(bind, f"file:{bind.secret_file}", records=[
        {"name": "@", "type": "MX", "ttl": "1m", "value": "10 {server}.lab.test."},
        {"name": "mail", "type": "A", "ttl": "1m", "value": "{address:scn}"},
        {"name": "{server}-ilo", "type": "CNAME", "ttl": "1m", "value": "bad..name"}])
    res = run(spec, to="r720-2")
    assert not res.ok and "not valid CNAME data" in (res.error or "")
    assert bind.read("lab.test", "MX") == before, "nothing was sent"


def test_an_inline_tsig_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="inline secret"):
        DnsUpdateHook.model_validate({"hook": "dns-update", "server": "ns1.lab.test", "zone": "lab.test",
                                      "key_name": "k", "credentials": "c2VjcmV0",
                                      "records": [{"name": "mail", "type": "A", "value": "10.1.0.1"}]})
