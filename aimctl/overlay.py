"""The endpoints overlay: where things really are, keyed by the names in the definitions.

``aimctl lab up`` writes one (free ports on 127.0.0.1, lab credentials); production runs without.
An overlay may only change *where* and *with which credentials* — never pools, personas' identity
or cabling — so a test lab cannot drift from the operator's definitions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import Field, ValidationError

from aimctl.errors import OperatorError
from aimctl.loader import Definitions, PersonaDef, Source, read_mapping, validation_problems
from aimctl.model import (
    MAX_ENTRIES,
    AbsPath,
    Capped,
    Credentials,
    Host,
    HostKey,
    IpAddress,
    LocalPath,
    PositiveDuration,
    SecretRef,
    SshUrl,
    Strict,
)
from aimctl.yaml_source import Problems

Port = Annotated[int, Field(ge=1, le=65535)]


class BmcPatch(Strict):
    address: Host | None = None
    port: Port | None = None
    tls: bool | None = None
    # Where the BMC's certificate is checked against, or the explicit opt-out (the lab's self-signed BMCs).
    verify_tls: bool | None = None
    ca_file: AbsPath | None = None
    system_id: str | None = None
    credentials: Credentials | None = None


class ServerPatch(Strict):
    bmc: BmcPatch = BmcPatch()
    boot_address: IpAddress | None = None


class SwitchPatch(Strict):
    address: Host | None = None
    port: Port | None = None
    credentials: Credentials | None = None


class StoragePatch(Strict):
    portal: Host | None = None
    port: Port | None = None
    management: str | None = None
    control_socket: str | None = None
    snapshot_dir: AbsPath | None = None


class HookPatch(Strict):
    server: Host | None = None  # dns-update: the zone's primary
    port: Port | None = None
    via: SshUrl | None = None
    credentials: SecretRef | None = None
    host_key: HostKey | None = None
    timeout: PositiveDuration | None = None
    retries: int | None = None
    poll: PositiveDuration | None = None


class PersonaPatch(Strict):
    heartbeat_key: SecretRef | None = None
    initial_chap: SecretRef | None = None
    recovery: Annotated[dict[int, HookPatch], *Capped(32, "hooks")] = {}


class Listen(Strict):
    heartbeat: str = "0.0.0.0:7400"
    snmp: str = "0.0.0.0:7162"
    api: str = "127.0.0.1:7480"
    # TLS for the API and console (remote operators): PEM certificate (chain) and key files.
    api_tls_cert: LocalPath | None = None
    api_tls_key: LocalPath | None = None
    snmp_community: str = "public"
    heartbeat_interval: float = 1.0
    bmc_poll_interval: float = 1.0
    power_deadline: float = 30.0  # how long a BMC may take to *read back* a power change
    boot_timer_override: float | None = None  # labs shorten every persona's boot timer
    switch_timeout: float = 10.0  # how long one switch CLI line may go unanswered
    switch_deadline: float = 60.0  # how long a step may retry its switches before restoring them
    # Where operators are told: detector alerts and pages, and the change-management system.
    alert_webhook: str | None = None
    alert_webhook_secret: SecretRef | None = None
    change_webhook: str | None = None
    change_webhook_secret: SecretRef | None = None
    # E-mail alerts through an SMTP relay (HOST:PORT), and SNMP alert traps out (HOST:PORT).
    alert_smtp: str | None = None
    alert_mail_from: str = "aimctl@localhost"
    alert_mail_to: list[str] = []
    alert_smtp_starttls: bool = False
    alert_smtp_user: str | None = None
    alert_smtp_password: SecretRef | None = None
    alert_snmp: str | None = None
    alert_snmp_community: str = "public"
    alert_snmp_enterprise: str = "1.3.6.1.4.1.32473.1"
    # The watchful parts: drift passes (jittered), BMC health/event-log polls.
    drift_interval: float = 300.0
    drift_jitter: float = 0.1
    health_interval: float = 60.0


class Overlay(Strict):
    servers: Annotated[dict[str, ServerPatch], *Capped(MAX_ENTRIES, "servers")] = {}
    switches: Annotated[dict[str, SwitchPatch], *Capped(MAX_ENTRIES, "switches")] = {}
    storage: Annotated[dict[str, StoragePatch], *Capped(MAX_ENTRIES, "storage entries")] = {}
    personas: Annotated[dict[str, PersonaPatch], *Capped(MAX_ENTRIES, "personas")] = {}
    controller: Listen = Listen()
    lab: Annotated[dict[str, Any], *Capped(1000, "lab settings")] = {}


def _patch(obj: Any, patch: Strict) -> Any:
    upd = {}
    for k in patch.model_fields_set:
        v = getattr(patch, k)
        if isinstance(v, Strict) and not isinstance(v, Credentials):
            v = _patch(getattr(obj, k), v)
        upd[k] = v
    return obj.model_copy(update=upd)


M = TypeVar("M", bound=Strict)


def load_model(path: Path, model: type[M]) -> M:
    """A YAML file as ``model``, read with the loader's limits; every problem reported as
    FILE:LINE:COL: field: message."""
    data, src = read_mapping(path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = Problems()
        validation_problems(exc, data, src, problems)
        raise problems.error() from None


def load_overlay(path: Path) -> Overlay:
    return load_model(path, Overlay)


def apply(defs: Definitions, ov: Overlay, where: str = "overlay") -> Definitions:
    """A copy of ``defs`` with the overlay's endpoints; names it does not know are errors."""
    def known(table: dict[str, Any], name: str, kind: str) -> None:
        if name not in table:
            raise OperatorError(f"{where}: {kind} {name!r} is not in the definitions")

    out = Definitions(root=defs.root, pools=dict(defs.pools), servers=dict(defs.servers),
                      switches=dict(defs.switches), storage=dict(defs.storage), personas=dict(defs.personas),
                      server_pool=dict(defs.server_pool), warnings=list(defs.warnings))
    for name, sp in ov.servers.items():
        known(out.servers, name, "server")
        out.servers[name] = _patch(out.servers[name], sp)
        why = out.servers[name].bmc.tls_problem()
        if why:
            raise OperatorError(f"{where}: server {name}: bmc: {why}")
    for name, wp in ov.switches.items():
        known(out.switches, name, "switch")
        out.switches[name] = _patch(out.switches[name], wp)
    for name, tp in ov.storage.items():
        known(out.storage, name, "storage")
        out.storage[name] = _patch(out.storage[name], tp)
    for name, pp in ov.personas.items():
        known(out.personas, name, "persona")
        pd = out.personas[name]
        spec = pd.spec
        upd: dict[str, Any] = {k: getattr(pp, k) for k in ("heartbeat_key", "initial_chap")
                               if getattr(pp, k) is not None}
        if pp.recovery:
            hooks = list(spec.recovery)
            for i, hp in pp.recovery.items():
                if not 0 <= i < len(hooks):
                    raise OperatorError(f"{where}: persona {name}: no recovery hook #{i}")
                hooks[i] = _patch(hooks[i], hp)
            upd["recovery"] = hooks
        out.personas[name] = PersonaDef(name, pd.pool, spec.model_copy(update=upd))
    # The pool models embed personas too; keep them consistent with the patched ones.
    for pname, pool in out.pools.items():
        personas = {n: out.personas[n].spec for n in pool.personas}
        out.pools[pname] = pool.model_copy(update={"personas": personas})
    return out



def api_hostport(value: str) -> tuple[str, int]:
    """A controller listen address ``HOST:PORT`` (API, heartbeats, SNMP traps)."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise OperatorError(f"listen address {value!r}: want HOST:PORT")
    return host, int(port)


__all__ = ["Overlay", "Source", "api_hostport", "apply", "load_overlay"]
