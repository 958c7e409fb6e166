"""Cluster settings: ``controller run --cluster etcd://HOST:PORT[,...]`` or a controller config file.

The config file (``controller run --config FILE``) is YAML; flags given on the command line win::

    cluster:
      etcd: etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379
      name: prod                # key prefix /aimctl/prod/: several clusters may share one etcd
      member: ctl-a             # stable per controller host (default: the host name)
      key_file: /etc/aimctl/cluster.key   # AES-GCM key for secrets in etcd (0600, same on every member)
      advertise_api: http://10.0.0.1:7480 # where the CLI and other members reach this one's API
      ttl: 6s                   # leader lease; renew + 2 x retry <= ttl (checked)
      renew: 2s
      retry: 1500ms
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from pydantic import field_validator

from aimctl.cluster.leadership import Timing
from aimctl.errors import OperatorError
from aimctl.model import Duration, LocalPath, Strict

HOSTPORT_RE = re.compile(r"^(?P<host>[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})\Z")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")


def parse_cluster_url(value: str) -> list[tuple[str, int]]:
    """``etcd://HOST:PORT[,HOST:PORT...]`` -> endpoints; one clear error for anything else."""
    if not value.startswith("etcd://"):
        raise OperatorError(f"--cluster {value!r}: want etcd://HOST:PORT[,HOST:PORT...]")
    out = []
    for part in value[len("etcd://"):].split(","):
        m = HOSTPORT_RE.match(part.strip())
        if not m or not 0 < int(m["port"]) < 65536:
            raise OperatorError(f"--cluster: {part!r} is not HOST:PORT")
        out.append((m["host"].strip("[]"), int(m["port"])))
    return out


class ClusterConfig(Strict):
    etcd: str
    name: str = "aimctl"
    member: str | None = None
    key_file: LocalPath | None = None
    advertise_api: str | None = None
    ttl: Duration = 6.0
    renew: Duration = 2.0
    retry: Duration = 1.5

    @field_validator("etcd")
    @classmethod
    def _etcd(cls, v: str) -> str:
        parse_cluster_url(v)
        return v

    @field_validator("name", "member")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not NAME_RE.match(v):
            raise ValueError("lower-case letters, digits and '-' (at most 63)")
        return v

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return parse_cluster_url(self.etcd)

    @property
    def prefix(self) -> str:
        return f"/aimctl/{self.name}/"

    @property
    def timing(self) -> Timing:
        try:
            return Timing(self.ttl, self.renew, self.retry)
        except ValueError as exc:
            raise OperatorError(str(exc)) from None

    def member_name(self) -> str:
        if self.member:
            return self.member
        host = socket.gethostname().split(".")[0].lower()
        return re.sub(r"[^a-z0-9-]", "-", host)[:63] or "controller"


class ControllerConfig(Strict):
    cluster: ClusterConfig | None = None


def load_controller_config(path: Path) -> ControllerConfig:
    from aimctl.overlay import load_model

    return load_model(path, ControllerConfig)
