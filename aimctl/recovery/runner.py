"""The workflow's ``recovery`` step: the persona's hooks from its definition, run by ``hooks.run_hooks``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aimctl.journal import Operation
from aimctl.loader import Definitions
from aimctl.model import DnsUpdateHook, ExchangeDagHook, ScriptHook, SshCommandHook
from aimctl.recovery import hooks as H


def to_spec(h: Any, addresses: dict[str, str] | None = None) -> H.HookSpec:
    """Definitions model -> runnable hook spec (validated again there, before anything runs);
    ``addresses`` are the persona's, by network (what a dns-update's {address:NET} means)."""
    common = {"point": h.point, "timeout_s": h.timeout, "retries": h.retries}
    if isinstance(h, DnsUpdateHook):
        return H.DnsUpdateHook(server=h.server, port=h.port, zone=h.zone, key_name=h.key_name,
                               key_algorithm=h.key_algorithm, credentials=h.credentials,
                               records=tuple((r.name, r.type, int(r.ttl), r.value) for r in h.records),
                               addresses=tuple(sorted((addresses or {}).items())), **common)
    if isinstance(h, ExchangeDagHook):
        return H.ExchangeDagHook(dag=h.dag, server=h.server, via=h.via, credentials=h.credentials,
                                 host_key=h.host_key, poll_s=h.poll, **common)
    if isinstance(h, SshCommandHook):
        return H.SshCommandHook(via=h.via, command=h.command, credentials=h.credentials, host_key=h.host_key,
                                **common)
    if isinstance(h, ScriptHook):
        return H.ScriptHook(path=h.path, args=tuple(h.args), **common)
    raise TypeError(f"unknown hook {type(h).__name__}")


def hook_runner(defs: Definitions, note: Callable[[Operation, str], None]) -> Callable[[Operation, str], list[dict[str, Any]]]:
    def run(op: Operation, point: str) -> list[dict[str, Any]]:
        spec = defs.personas[op.persona].spec
        addresses = {net: str(a) for net, a in spec.addresses.items()}
        specs = [to_spec(h, addresses) for h in spec.recovery if h.point == point]
        if not specs:
            return []
        ctx = H.HookContext(op.persona, op.from_server or "", str(op.facts.get("to", "")), op.id)
        results = H.run_hooks(specs, ctx, point, on_event=lambda msg: note(op, msg))
        return [r.to_record() for r in results]

    return run
