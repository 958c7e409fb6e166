"""No lab module reaches into another's private names.

import-linter checks the lab's layers and that it has no import cycles (``pyproject.toml``); this
checks what it cannot see: ``from lab.x import _name``, ``module._name``, and ``obj._name`` where
``_name`` is defined by a different lab module (a BMC handler calling its lab's ``_request_power``).
What one part needs from another is a public name, or a Protocol the needing module declares.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

LAB = Path(__file__).resolve().parents[2] / "lab"
# sushy-tools' FakeDriver keeps its records behind _get/_update: the Redfish lab calls them on the
# emulator's driver (a third-party object), and its driver subclass overrides them.
THIRD_PARTY = {("lab.bmc.redfish", "_get"), ("lab.bmc.redfish", "_update")}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _modules() -> dict[str, ast.Module]:
    root = LAB.parent
    return {".".join(p.relative_to(root).with_suffix("").parts): ast.parse(p.read_text()) for p in LAB.rglob("*.py")}


def _defined(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Private name -> the lab modules that define it (functions, classes, globals, self./cls. attributes)."""
    where: dict[str, set[str]] = defaultdict(set)
    for mod, tree in trees.items():
        for n in ast.walk(tree):
            names: list[str] = []
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names = [n.name]
            elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and isinstance(n.value, ast.Name) \
                    and n.value.id in ("self", "cls"):
                names = [n.attr]
            elif isinstance(n, ast.Assign | ast.AnnAssign):
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
            for name in filter(_private, names):
                where[name].add(mod)
    return where


def reaches(trees: dict[str, ast.Module]) -> list[str]:
    defined = _defined(trees)
    found = []
    for mod, tree in sorted(trees.items()):
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "lab":
                found += [f"{mod}:{n.lineno}: from {n.module} import {a.name}" for a in n.names if _private(a.name)]
            elif isinstance(n, ast.Attribute) and _private(n.attr):
                base = n.value
                if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                    continue
                if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
                    continue
                owners = defined.get(n.attr, set())
                if owners and mod not in owners and (mod, n.attr) not in THIRD_PARTY:
                    found.append(f"{mod}:{n.lineno}: .{n.attr} (private to {', '.join(sorted(owners))})")
    return found


def test_no_lab_module_uses_another_ones_private_names() -> None:
    assert reaches(_modules()) == []


def test_the_check_sees_each_kind_of_reach() -> None:
    owner = ast.parse("class Lab:\n    def _request_power(self): ...\n_table = {}\n")
    user = ast.parse("from lab.a import _table\nimport lab.a as a\ndef f(lab):\n"
                     "    lab._request_power()\n    return a._table\n")
    assert set(reaches({"lab.a": owner, "lab.b": user})) == {
        "lab.b:1: from lab.a import _table",
        "lab.b:4: ._request_power (private to lab.a)",
        "lab.b:5: ._table (private to lab.a)",
    }
