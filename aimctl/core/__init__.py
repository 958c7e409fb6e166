"""What the persona agent and the controller both need, with the standard library only.

The agent runs on every persona's OS image; it must not pay for the controller's dependencies
(pydantic, paramiko, netmiko, sushy...). So this package imports nothing but the standard library
and ``aimctl.core`` itself (an import-linter contract in ``pyproject.toml`` holds it to that):

- ``errors``: ``OperatorError``, the base of every error an operator can act on, and ``SecretError``;
- ``secrets``: secret references (``env:NAME``, ``file:PATH``) and the process-wide masker;
- ``names``: the name and host-name patterns both sides check;
- ``durations``: ``"20m"`` -> 1200.0.

The controller's modules keep importing ``aimctl.errors``, ``aimctl.secrets`` and
``aimctl.validation``, which build on these.
"""
