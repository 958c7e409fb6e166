"""The CLI's way to the running controller: reads CTRLDIR/api.json (address) and CTRLDIR/api-token."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from aimctl.errors import OperatorError
from aimctl.secrets import mask, register


class ControllerNotRunning(OperatorError):
    """No controller answers for this state directory."""


class ApiCallError(OperatorError):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        self.location = location
        super().__init__(location)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are followed by ``ApiClient`` itself, with the method, body and token kept."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


class ApiClient:
    def __init__(self, state_dir: Path | str, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.state_dir = Path(state_dir)
        self.timeout_s = timeout_s
        info_path = self.state_dir / "api.json"
        try:
            info = json.loads(info_path.read_text())
            self.url = str(info["url"]).rstrip("/")
        except FileNotFoundError:
            raise ControllerNotRunning(
                f"the controller is not running for state directory {self.state_dir} (no {info_path}); start it"
                f" with: aimctl controller run --definitions DIR --state {self.state_dir}"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ControllerNotRunning(f"cannot read {info_path}: {exc}") from None
        if token is None:
            token = os.environ.get("AIMCTL_TOKEN")
        if token is None:
            try:
                token = (self.state_dir / "api-token").read_text().strip()
            except OSError as exc:
                raise OperatorError(
                    f"cannot read the API token {self.state_dir / 'api-token'}: {exc.strerror}"
                    " (run as the controller's user, or set AIMCTL_TOKEN)"
                ) from None
        register(token)
        self._token = token

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any = None) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def raw(self, method: str, path: str, body: Any = None) -> tuple[int, str, bytes]:
        """(status, content type, body bytes) without interpreting them; errors raise as in ``request``.

        A cluster follower answers writes with 307 and the leader's address: the same request goes
        there (with the same token: members of a cluster share their tokens files)."""
        url = self.url + path
        for _ in range(3):
            try:
                return self._raw_once(method, url, body, path)
            except _Redirect as r:
                url = r.location
        raise ApiCallError(508, f"{method} {path}: redirected too often (is a leader elected?)")

    def _raw_once(self, method: str, url: str, body: Any, path: str) -> tuple[int, str, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _opener.open(req, timeout=self.timeout_s) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as exc:
            location = exc.headers.get("Location") if exc.code in (307, 308) else None
            if location and location.startswith(("http://", "https://")):
                raise _Redirect(location) from None
            raw = exc.read()
            try:
                message = str(json.loads(raw)["error"])
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace")[:200] or exc.reason
            hint = " (the token in api-token does not match this controller)" if exc.code == 401 else ""
            raise ApiCallError(exc.code, mask(f"{method} {path}: HTTP {exc.code}: {message}{hint}")) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ControllerNotRunning(
                f"the controller at {url.split('/v1')[0]} does not answer ({reason}); is it running for state directory"
                f" {self.state_dir}? (a stale api.json stays behind after a crash)"
            ) from None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        _, ctype, data = self.raw(method, path, body)
        if ctype.startswith("application/json"):
            return json.loads(data) if data else None
        return data.decode(errors="replace")
