"""The ``dns-update`` hook: a persona's records moved with it, for site moves (Exchange CCR's way).

One RFC 2136 UPDATE over TCP to the zone's primary, signed with TSIG (the key's secret is a
reference, resolved here and never logged), replacing each (name, type) RRset with the values the
persona's definition gives. Values may say ``{persona}``, ``{server}`` (the body it now runs on) and
``{address:NETWORK}`` (its address on a pool network). Every value is parsed as DNS data before
anything is sent. Success is what a query reads back afterwards, not the server's NOERROR alone.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from aimctl import secrets
from aimctl.errors import OperatorError

_PLACEHOLDER = re.compile(r"\{(persona|server|address:[a-z][a-z0-9-]{0,62})\}")
# What the server's TSIG answer means, in words an operator can act on.
_TSIG_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (dns.tsig.PeerBadKey, "the server does not know TSIG key {key} (BADKEY)"),
    (dns.tsig.PeerBadSignature, "the server refused the TSIG signature of key {key} (BADSIG): wrong secret?"),
    (dns.tsig.PeerBadTime, "the server refused the TSIG time (BADTIME): is the controller's clock right?"),
    (dns.tsig.PeerBadTruncation, "the server refused the TSIG MAC length (BADTRUNC)"),
)

Record = tuple[str, str, int, str]  # name, type, ttl, value (placeholders not yet filled)


def fill(text: str, facts: Mapping[str, str], addresses: Mapping[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        key = m.group(1)
        if key.startswith("address:"):
            if key[8:] not in addresses:
                raise OperatorError(f"{{{key}}}: the persona has no address on network {key[8:]}")
            return addresses[key[8:]]
        if not facts.get(key):
            raise OperatorError(f"{{{key}}} is not known at this hook point")
        return facts[key]

    return _PLACEHOLDER.sub(one, text)


def rrsets(zone: str, records: Sequence[Record], facts: Mapping[str, str],
           addresses: Mapping[str, str]) -> dict[tuple[dns.name.Name, str], tuple[int, list[Any]]]:
    """Filled, parsed and grouped: (owner name, type) -> (ttl, [rdata]); a bad value is refused here."""
    origin = dns.name.from_text(zone)
    out: dict[tuple[dns.name.Name, str], tuple[int, list[Any]]] = {}
    for name, rtype, ttl, value in records:
        owner_text = fill(name, facts, addresses)
        owner = origin if owner_text == "@" else dns.name.from_text(owner_text, origin)
        if not owner.is_subdomain(origin):
            raise OperatorError(f"record {owner_text}: not inside zone {zone}")
        text = fill(value, facts, addresses)
        try:
            rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), text, origin=origin,
                                        relativize=False)
        except (dns.exception.DNSException, ValueError) as exc:
            raise OperatorError(f"record {owner_text} {rtype} {text!r}: not valid {rtype} data ({exc})") from None
        key = (owner, rtype)
        if key in out and out[key][0] != ttl:
            raise OperatorError(f"record {owner_text} {rtype}: one RRset, two TTLs ({out[key][0]} and {ttl})")
        out.setdefault(key, (ttl, []))[1].append(rdata)
    return out


def _address(server: str, port: int) -> str:
    try:
        return str(socket.getaddrinfo(server, port, type=socket.SOCK_STREAM)[0][4][0])
    except OSError as exc:
        raise OperatorError(f"DNS server {server}: cannot resolve it ({exc})") from None


def update(server: str, port: int, zone: str, key_name: str, algorithm: str, secret_ref: str,
           records: Sequence[Record], facts: Mapping[str, str], addresses: Mapping[str, str],
           timeout_s: float) -> tuple[bool, str, str | None, dict[str, Any]]:
    """(ok, output, error, data) for the hook result; every failure is a sentence, never a traceback."""
    want = rrsets(zone, records, facts, addresses)
    secret = secrets.resolve(secret_ref)
    try:
        keyring = dns.tsigkeyring.from_text({key_name: (algorithm, secret)})
    except (ValueError, dns.exception.DNSException):
        return False, "", f"TSIG secret of key {key_name} is not base64 (see its reference {secret_ref})", {}
    where = _address(server, port)
    msg = dns.update.Update(zone, keyring=keyring, keyname=dns.name.from_text(key_name),
                            keyalgorithm=algorithm)
    for (owner, _), (ttl, rdatas) in want.items():
        msg.replace(owner, ttl, *rdatas)
    lines = [f"update {owner} {ttl} {rtype} {' '.join(r.to_text() for r in rdatas)}"
             for (owner, rtype), (ttl, rdatas) in want.items()]
    data: dict[str, Any] = {"server": f"{server}:{port}", "zone": zone,
                            "records": {f"{o} {t}": [r.to_text() for r in rd] for (o, t), (_, rd) in want.items()}}
    try:
        answer = dns.query.tcp(msg, where, port=port, timeout=timeout_s)
    except tuple(e for e, _ in _TSIG_ERRORS) as exc:
        why = next(text for e, text in _TSIG_ERRORS if isinstance(exc, e)).format(key=key_name)
        return False, "\n".join(lines), why, data
    except (dns.exception.DNSException, OSError) as exc:
        return False, "\n".join(lines), f"DNS server {server}:{port}: {type(exc).__name__}: {exc}", data
    rcode = answer.rcode()
    if rcode != dns.rcode.NOERROR:
        return False, "\n".join(lines), (f"the server refused the update of zone {zone}: "
                                         f"{dns.rcode.to_text(rcode)}"), data
    # Read back: what the zone answers now, record set by record set.
    wrong = []
    for (owner, rtype), (ttl, rdatas) in want.items():
        q = dns.message.make_query(owner, rtype)
        try:
            r = dns.query.tcp(q, where, port=port, timeout=timeout_s)
        except (dns.exception.DNSException, OSError) as exc:
            return False, "\n".join(lines), f"read-back of {owner} {rtype} failed: {exc}", data
        got = r.find_rrset(r.answer, owner, dns.rdataclass.IN, dns.rdatatype.from_text(rtype)) if r.answer else None
        seen = sorted(x.to_text() for x in got) if got is not None else []
        if got is None or set(got) != set(rdatas) or got.ttl != ttl:
            wrong.append(f"{owner} {rtype} reads {seen or 'nothing'}"
                         + (f" ttl {got.ttl}" if got is not None else ""))
        lines.append(f"read back {owner} {rtype}: {' '.join(seen) or 'nothing'}")
    if wrong:
        return False, "\n".join(lines), "read-back differs: " + "; ".join(wrong), data
    return True, "\n".join(lines), None, data
