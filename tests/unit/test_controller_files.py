"""The controller's own files (lab overlay, controller.yaml) are strict like the definitions, yet
paths and addresses are written as strings: the forms an operator actually writes must load."""

from __future__ import annotations

from pathlib import Path

import pytest

from aimctl.cluster.config import load_controller_config
from aimctl.errors import OperatorError
from aimctl.overlay import load_model, Listen


def test_controller_yaml_takes_its_key_file_as_written(tmp_path: Path) -> None:
    f = tmp_path / "controller.yaml"
    f.write_text("cluster:\n  etcd: etcd://127.0.0.1:2379\n  member: c1\n  key_file: /etc/aimctl/cluster.key\n")
    cfg = load_controller_config(f)
    assert cfg.cluster is not None and cfg.cluster.key_file == Path("/etc/aimctl/cluster.key")


@pytest.mark.parametrize("text, field", [
    ("cluster:\n  etcd: etcd://127.0.0.1:2379\n  key_file: 7\n", "cluster.key_file"),
    ("cluster:\n  etcd: etcd://127.0.0.1:2379\n  key_file: ''\n", "cluster.key_file"),
])
def test_controller_yaml_refuses_a_path_that_is_not_text(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "controller.yaml"
    f.write_text(text)
    with pytest.raises(OperatorError, match=field):
        load_controller_config(f)


def test_listen_tls_files_are_paths_written_as_strings(tmp_path: Path) -> None:
    f = tmp_path / "listen.yaml"
    f.write_text("api_tls_cert: /etc/aimctl/api.pem\napi_tls_key: /etc/aimctl/api.key\n")
    listen = load_model(f, Listen)
    assert listen.api_tls_cert == Path("/etc/aimctl/api.pem") and listen.api_tls_key == Path("/etc/aimctl/api.key")
