"""Application recovery hooks: per persona, ordered, run at fixed points of a failover.

Kinds: ``exchange-dag`` (DAG recovery over SSH), ``ssh-command`` (one command over SSH),
``script`` (a local executable given the failover's facts as ``AIMCTL_*`` variables) and
``dns-update`` (the persona's DNS records, RFC 2136 with TSIG, read back; ``recovery/dns.py``). Each hook
has a timeout and a number of retries; its output (masked, clipped) and result are returned as a
``HookResult`` for the timeline and the change record. Passwords travel only inside the SSH
protocol, never on a command line or in a script's environment.
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
from typing import Any, ClassVar, Literal, get_args

from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, wait_fixed

from aimctl import secrets
from aimctl.errors import OperatorError
from aimctl.recovery import dns as dns_hook
from aimctl.recovery.exchange_dag import Thresholds, UnsafeName, ps_name, run_exchange_dag
from aimctl.recovery.sshshell import SshShell, check_host_key, parse_via

HookPoint = Literal["pre-fence", "post-boot", "post-recovery", "pre-failback"]
POINTS: tuple[str, ...] = get_args(HookPoint)
OUTPUT_LIMIT = 8000  # characters kept per hook result; the head and the tail say the most
_FACT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_PLACEHOLDER_RE = re.compile(r"\{(persona|old_server|new_server|failover_id|point)\}")
# A script sees these from the controller's environment and nothing else: the controller's own
# environment may hold secret values (env: references) that a hook has no business reading.
_SCRIPT_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


class HookSpecError(OperatorError):
    """A hook definition that cannot run; refused before anything is started."""


@dataclass(frozen=True, kw_only=True)
class _Spec:
    kind: ClassVar[str] = ""
    point: HookPoint = "post-boot"
    timeout_s: float = 600.0
    retries: int = 0
    retry_wait_s: float = 10.0
    name: str = ""

    def __post_init__(self) -> None:
        if self.point not in POINTS:
            raise HookSpecError(f"hook point {self.point!r} unknown (known: {', '.join(POINTS)})")
        if not self.timeout_s > 0 or not 0 <= self.retries <= 10 or self.retry_wait_s < 0:
            raise HookSpecError(f"{self.label}: timeout must be > 0, retries 0..10, retry wait >= 0")

    @property
    def label(self) -> str:
        return self.name or self.kind


@dataclass(frozen=True, kw_only=True)
class ExchangeDagHook(_Spec):
    kind: ClassVar[str] = "exchange-dag"
    dag: str
    server: str  # the Exchange server name (EXCH1), not the persona name (exchange1)
    via: str  # ssh://user@host:port of the Exchange management host
    credentials: str  # secret reference, resolved when the hook runs
    host_key: str = "known-hosts"  # "SHA256:<fp>" pinned, "known-hosts", or "auto" (lab only)
    poll_s: float = 15.0
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            ps_name(self.dag, "DAG"), ps_name(self.server, "server")
        except UnsafeName as exc:
            raise HookSpecError(str(exc)) from None
        _check_ssh(self.via, self.credentials, self.host_key)

    @property
    def label(self) -> str:
        return self.name or f"exchange-dag {self.dag}/{self.server}"


@dataclass(frozen=True, kw_only=True)
class SshCommandHook(_Spec):
    kind: ClassVar[str] = "ssh-command"
    via: str
    command: str  # may use {persona} {old_server} {new_server} {failover_id} {point}
    credentials: str
    host_key: str = "known-hosts"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.command.strip() or "\x00" in self.command or len(self.command) > 4096:
            raise HookSpecError(f"{self.label}: command must be 1..4096 characters without NUL")
        _check_ssh(self.via, self.credentials, self.host_key)


@dataclass(frozen=True, kw_only=True)
class ScriptHook(_Spec):
    kind: ClassVar[str] = "script"
    path: str
    args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.path or "\x00" in self.path or any("\x00" in a for a in self.args):
            raise HookSpecError(f"{self.label}: bad script path or argument")

    @property
    def label(self) -> str:
        return self.name or f"script {Path(self.path).name}"


@dataclass(frozen=True, kw_only=True)
class DnsUpdateHook(_Spec):
    kind: ClassVar[str] = "dns-update"
    server: str
    zone: str
    key_name: str
    credentials: str  # the TSIG secret's reference
    records: tuple[dns_hook.Record, ...]
    port: int = 53
    key_algorithm: str = "hmac-sha256"
    addresses: tuple[tuple[str, str], ...] = ()  # the persona's (network, address), for {address:NET}

    def __post_init__(self) -> None:
        super().__post_init__()
        if not secrets.is_reference(self.credentials):
            raise HookSpecError(f"{self.label}: the TSIG secret must be a reference (env:NAME or file:PATH), never a value")
        if not self.records or self.key_algorithm not in ("hmac-sha256", "hmac-sha384", "hmac-sha512"):
            raise HookSpecError(f"{self.label}: needs records and an hmac-sha256/384/512 key")

    @property
    def label(self) -> str:
        return self.name or f"dns-update {self.zone}"


HookSpec = ExchangeDagHook | SshCommandHook | ScriptHook | DnsUpdateHook


def _check_ssh(via: str, credentials: str, host_key: str) -> None:
    try:
        parse_via(via)
        check_host_key(host_key)
    except OperatorError as exc:
        raise HookSpecError(str(exc)) from None
    if not secrets.is_reference(credentials):
        raise HookSpecError("credentials must be a secret reference (env:NAME or file:PATH), never a value")


@dataclass(frozen=True)
class HookContext:
    """The failover's facts, as scripts and ssh-command placeholders see them."""

    persona: str
    old_server: str
    new_server: str
    failover_id: str
    point: str = ""

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
    for spec in (s for s in specs if s.point == point):
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
        emit(f"hook {spec.label}: attempt {len(tries) + 1}/{spec.retries + 1}")
        tries.append(_attempt(spec, ctx, emit))
        return tries[-1]

    def before_sleep(state: RetryCallState) -> None:
        emit(f"hook {spec.label}: {tries[-1].error}; retrying in {spec.retry_wait_s:g}s")

    Retrying(
        stop=stop_after_attempt(spec.retries + 1),
        wait=wait_fixed(spec.retry_wait_s),
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
            ok, output, error, found = dns_hook.update(
                spec.server, spec.port, spec.zone, spec.key_name, spec.key_algorithm, spec.credentials, spec.records,
                {"persona": ctx.persona, "server": ctx.new_server or ctx.old_server}, dict(spec.addresses),
                spec.timeout_s)
            data.update(found)
        else:
            ok, output, error = _run_dag(spec, emit, data)
    except OperatorError as exc:
        ok, output, error = False, "", str(exc)
    except Exception as exc:  # noqa: BLE001 - a hook must end in a result, whatever a library throws
        ok, output, error = False, "", f"{type(exc).__name__}: {exc}"
    error = clip(error) if error else None
    return HookResult(
        spec.label, ok, started, time.time(), clip(output), error, spec.kind, spec.point, 1, data
    )


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
        raw, _ = proc.communicate(timeout=spec.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        try:
            raw, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a child that left the session still holds the pipe
            raw = b""
        return False, raw.decode(errors="replace"), f"timed out after {spec.timeout_s:g}s (killed)"
    output = raw.decode(errors="replace")
    if proc.returncode != 0:
        return False, output, f"exited {proc.returncode}"
    return True, output, None


def _fill(command: str, ctx: HookContext) -> str:
    facts = ctx.facts()  # validated plain names: safe to paste into a remote command
    return _PLACEHOLDER_RE.sub(lambda m: facts[m.group(1)], command)


def _shell(spec: ExchangeDagHook | SshCommandHook) -> SshShell:
    password = secrets.resolve(spec.credentials)  # in memory only; resolve() registers it for masking
    return SshShell(parse_via(spec.via), password, spec.host_key, connect_timeout_s=min(30.0, spec.timeout_s))


def _run_ssh_command(spec: SshCommandHook, ctx: HookContext) -> tuple[bool, str, str | None]:
    started = time.monotonic()
    with _shell(spec) as shell:
        r = shell.run(_fill(spec.command, ctx), max(0.1, spec.timeout_s - (time.monotonic() - started)))
    output = r.stdout + (f"\n[stderr]\n{r.stderr}" if r.stderr.strip() else "")
    return r.exit_status == 0, output, None if r.exit_status == 0 else f"exited {r.exit_status}"


def _run_dag(spec: ExchangeDagHook, emit: Emit, data: dict[str, Any]) -> tuple[bool, str, str | None]:
    started = time.monotonic()
    lines: list[str] = []

    def log(msg: str) -> None:
        lines.append(msg)
        emit(f"hook {spec.label}: {msg}")

    with _shell(spec) as shell:
        left = max(0.0, spec.timeout_s - (time.monotonic() - started))
        outcome = run_exchange_dag(shell, spec.dag, spec.server, left, spec.poll_s, spec.thresholds, log)
    data.update(before=outcome.before, after=outcome.after, actions=outcome.actions)
    return outcome.ok, "\n".join(lines), outcome.error
