"""Application recovery hooks: per persona, ordered, run at fixed points of a failover.

Kinds: ``exchange-dag`` (DAG recovery over SSH), ``ssh-command`` (one command over SSH),
``script`` (a local executable given the failover's facts as ``AIMCTL_*`` variables) and
``dns-update`` (the persona's DNS records, RFC 2136 with TSIG, read back; ``recovery/dns.py``). The hooks
are the definitions' own classes (``aimctl.model``: fields, limits and defaults are said there
once, checked when the definitions load); this module runs them. Each hook has a timeout and a
number of retries; its output (masked, clipped) and result are returned as a ``HookResult`` for the
timeline and the change record. Passwords travel only inside the SSH protocol
(``aimctl.drivers.ssh``), never on a command line or in a script's environment.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, get_args

from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, wait_fixed

from aimctl import secrets
from aimctl.drivers.ssh import SshSession, SshTarget
from aimctl.errors import OperatorError
from aimctl.model import DnsUpdateHook, ExchangeDagHook, HookPoint, ScriptHook, SshCommandHook
from aimctl.recovery import dns as dns_hook
from aimctl.recovery.exchange_dag import Thresholds, run_exchange_dag

POINTS: tuple[str, ...] = get_args(HookPoint)
OUTPUT_LIMIT = 8000  # characters kept per hook result; the head and the tail say the most
_FACT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_PLACEHOLDER_RE = re.compile(r"\{(persona|old_server|new_server|failover_id|point)\}")
# A script sees these from the controller's environment and nothing else: the controller's own
# environment may hold secret values (env: references) that a hook has no business reading.
_SCRIPT_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")

HookSpec = ExchangeDagHook | SshCommandHook | ScriptHook | DnsUpdateHook


class HookSpecError(OperatorError):
    """A hook cannot run as asked (an unknown point, failover facts that are not plain names)."""


def label(spec: HookSpec) -> str:
    """How results and events name a hook."""
    if isinstance(spec, ExchangeDagHook):
        return f"exchange-dag {spec.dag}/{spec.server}"
    if isinstance(spec, ScriptHook):
        return f"script {Path(spec.path).name}"
    if isinstance(spec, DnsUpdateHook):
        return f"dns-update {spec.zone}"
    return spec.hook


@dataclass(frozen=True)
class HookContext:
    """The failover's facts, as scripts and ssh-command placeholders see them."""

    persona: str
    old_server: str
    new_server: str
    failover_id: str
    point: str = ""
    # The persona's (network, address) pairs: what a dns-update's {address:NETWORK} means.
    addresses: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for key, value in self.facts().items():
            if value and not _FACT_RE.fullmatch(value):
                raise HookSpecError(f"hook context {key}={value!r} refused: not a plain name")

    def facts(self) -> dict[str, str]:
        return {
            "persona": self.persona,
            "old_server": self.old_server,
            "new_server": self.new_server,
            "failover_id": self.failover_id,
            "point": self.point,
        }

    def env(self) -> dict[str, str]:
        return {f"AIMCTL_{k.upper()}": v for k, v in self.facts().items()}


@dataclass(frozen=True)
class HookResult:
    name: str
    ok: bool
    started: float  # time.time()
    ended: float
    output: str  # masked and clipped
    error: str | None = None
    kind: str = ""
    point: str = ""
    attempts: int = 1
    data: dict[str, Any] = field(default_factory=dict)  # e.g. exchange-dag: before/after/actions

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict for the timeline and the change record."""
        return asdict(self) | {"duration_s": round(self.ended - self.started, 3)}


def clip(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """Mask first (a secret cut in half by clipping would escape the masker), then keep head and tail."""
    text = secrets.mask(text)
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters cut] ...\n{text[-half:]}"


Emit = Callable[[str], None]


def run_hooks(
    specs: Sequence[HookSpec], ctx: HookContext, point: str, on_event: Emit | None = None
) -> list[HookResult]:
    """Run the hooks of ``point`` in order; stop at the first that fails after its retries."""
    if point not in POINTS:
        raise HookSpecError(f"hook point {point!r} unknown (known: {', '.join(POINTS)})")
    ctx = replace(ctx, point=point)
    emit: Emit = (lambda m: on_event(secrets.mask(m))) if on_event else (lambda m: None)
    results: list[HookResult] = []
    for spec in (h for h in specs if h.point == point):
        result = _run_with_retries(spec, ctx, emit)
        results.append(result)
        emit(f"hook {result.name}: {'ok' if result.ok else 'failed: ' + (result.error or '')}")
        if not result.ok:
            emit(f"hook {result.name} failed; later {point} hooks are not run")
            break
    return results


def _run_with_retries(spec: HookSpec, ctx: HookContext, emit: Emit) -> HookResult:
    tries: list[HookResult] = []

    def attempt() -> HookResult:
        emit(f"hook {label(spec)}: attempt {len(tries) + 1}/{spec.retries + 1}")
        tries.append(_attempt(spec, ctx, emit))
        return tries[-1]

    def before_sleep(state: RetryCallState) -> None:
        emit(f"hook {label(spec)}: {tries[-1].error}; retrying in {spec.retry_wait:g}s")

    Retrying(
        stop=stop_after_attempt(spec.retries + 1),
        wait=wait_fixed(spec.retry_wait),
        retry=retry_if_result(lambda r: not r.ok),
        before_sleep=before_sleep,
        retry_error_callback=lambda state: tries[-1],
    )(attempt)
    last = tries[-1]
    output = (
        last.output
        if len(tries) == 1
        else "\n".join(
            f"--- attempt {i}: {'ok' if r.ok else r.error}\n{r.output}" for i, r in enumerate(tries, 1)
        )
    )
    return replace(last, started=tries[0].started, output=clip(output), attempts=len(tries))


def _attempt(spec: HookSpec, ctx: HookContext, emit: Emit) -> HookResult:
    started = time.time()
    data: dict[str, Any] = {}
    try:
        if isinstance(spec, ScriptHook):
            ok, output, error = _run_script(spec, ctx)
        elif isinstance(spec, SshCommandHook):
            ok, output, error = _run_ssh_command(spec, ctx)
        elif isinstance(spec, DnsUpdateHook):
            ok, output, error = _run_dns_update(spec, ctx, data)
        else:
            ok, output, error = _run_dag(spec, emit, data)
    except OperatorError as exc:
        ok, output, error = False, "", str(exc)
    except Exception as exc:  # noqa: BLE001 - a hook must end in a result, whatever a library throws
        ok, output, error = False, "", f"{type(exc).__name__}: {exc}"
    error = clip(error) if error else None
    return HookResult(label(spec), ok, started, time.time(), clip(output), error, spec.hook, spec.point, 1, data)


def _run_script(spec: ScriptHook, ctx: HookContext) -> tuple[bool, str, str | None]:
    path = Path(spec.path)
    if not path.is_file() or not os.access(path, os.X_OK):
        return False, "", f"script {path} does not exist or is not executable"
    env = {k: os.environ[k] for k in _SCRIPT_ENV_KEEP if k in os.environ} | ctx.env()
    # Own session, so a timeout kills the script's children too, not just the script.
    proc = subprocess.Popen(
        [str(path), *spec.args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        raw, _ = proc.communicate(timeout=spec.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        try:
            raw, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a child that left the session still holds the pipe
            raw = b""
        return False, raw.decode(errors="replace"), f"timed out after {spec.timeout:g}s (killed)"
    output = raw.decode(errors="replace")
    if proc.returncode != 0:
        return False, output, f"exited {proc.returncode}"
    return True, output, None


def _fill(command: str, ctx: HookContext) -> str:
    facts = ctx.facts()  # validated plain names: safe to paste into a remote command
    return _PLACEHOLDER_RE.sub(lambda m: facts[m.group(1)], command)


def _session(spec: ExchangeDagHook | SshCommandHook) -> SshSession:
    password = secrets.resolve(spec.credentials)  # in memory only; resolve() registers it for masking
    return SshSession(SshTarget.parse(spec.via), password, host_key=spec.host_key,
                      connect_timeout_s=min(30.0, spec.timeout))


def _run_ssh_command(spec: SshCommandHook, ctx: HookContext) -> tuple[bool, str, str | None]:
    started = time.monotonic()
    with _session(spec) as shell:
        r = shell.run(_fill(spec.command, ctx), max(0.1, spec.timeout - (time.monotonic() - started)))
    output = r.stdout + (f"\n[stderr]\n{r.stderr}" if r.stderr.strip() else "")
    return r.exit_status == 0, output, None if r.exit_status == 0 else f"exited {r.exit_status}"


def _run_dag(spec: ExchangeDagHook, emit: Emit, data: dict[str, Any]) -> tuple[bool, str, str | None]:
    started = time.monotonic()
    lines: list[str] = []

    def log(msg: str) -> None:
        lines.append(msg)
        emit(f"hook {label(spec)}: {msg}")

    with _session(spec) as shell:
        left = max(0.0, spec.timeout - (time.monotonic() - started))
        # Copy-queue thresholds are not part of the definitions: Exchange's own healthy limits.
        outcome = run_exchange_dag(shell, spec.dag, spec.server, left, spec.poll, Thresholds(), log)
    data.update(before=outcome.before, after=outcome.after, actions=outcome.actions)
    return outcome.ok, "\n".join(lines), outcome.error


def _run_dns_update(spec: DnsUpdateHook, ctx: HookContext, data: dict[str, Any]) -> tuple[bool, str, str | None]:
    records = [(r.name, r.type, int(r.ttl), r.value) for r in spec.records]
    ok, output, error, found = dns_hook.update(
        spec.server, spec.port, spec.zone, spec.key_name, spec.key_algorithm, spec.credentials, records,
        {"persona": ctx.persona, "server": ctx.new_server or ctx.old_server}, dict(ctx.addresses), spec.timeout)
    data.update(found)
    return ok, output, error
