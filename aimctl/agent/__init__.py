"""The persona agent: signed heartbeats, service checks, restart-then-failover.

It runs on every persona's OS image, installed as ``aimctl[agent]``: it imports only itself,
``aimctl.core``, the standard library and PyYAML (the ``agent-slim`` import contract).
"""
