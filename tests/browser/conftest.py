"""Browser stories: Debian's Chromium driven by playwright against a real controller on the session lab.

The browser is the system's (``/usr/bin/chromium``; never ``playwright install``). Each story gets
a fresh controller with three named tokens (viewer, operator, admin) and a fresh browser context
(no cookies). ``AIMCTL_SCREENSHOTS=DIR`` makes the stories save the pictures the README shows.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.controller_proc import ControllerProcess
from lab.fixtures import LabHandle, lab  # noqa: F401 - the session lab fixture

CHROMIUM = "/usr/bin/chromium"
TOKENS = {"viewer": "viewer-token-browser-0123456789", "operator": "operator-token-browser-0123456789"}

pytestmark = pytest.mark.lab


@dataclass
class World:
    lab: LabHandle
    ctrl: ControllerProcess
    url: str
    admin: str

    def token(self, role: str) -> str:
        return self.admin if role == "admin" else TOKENS[role]


def overlay_for(labh: LabHandle, tmp: Path) -> Path:
    doc = labh.overlay()
    doc["controller"].update({"power_deadline": 4.0, "boot_timer_override": 8.0})
    path = tmp / "endpoints.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def world(lab: LabHandle, tmp_path: Path) -> Iterator[World]:  # noqa: F811
    lab.reset()
    state = tmp_path / "ctrl"
    state.mkdir(mode=0o700)
    (state / "tokens.yaml").write_text("tokens:\n" + "".join(
        f"  - {{name: {role}1, role: {role}, sha256: {hashlib.sha256(tok.encode()).hexdigest()}}}\n"
        for role, tok in TOKENS.items()))
    ctrl = ControllerProcess(lab.definitions, overlay_for(lab, tmp_path), state)
    ctrl.start()
    try:
        ctrl.wait(ctrl.all_alive, 20, "every persona heartbeating")
        yield World(lab, ctrl, ctrl.api.url, (state / "api-token").read_text().strip())
    finally:
        ctrl.stop()
        verdict = lab.status()["observer"]
        assert verdict["double_access"] == 0, verdict["evidence"][:5]


# Module scope, not session: playwright's sync API keeps an event loop running in this thread while it
# is open, and later tests that call asyncio.run() (the SNMP sender, for one) must not find it there.
@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (make setup installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1360, "height": 900}, timezone_id="Europe/Berlin")
    page = context.new_page()
    problems: list[str] = []
    # A Content-Security-Policy violation or a script error fails the story: the console must work
    # without inline script.
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    try:
        yield page
        # Refusals the stories provoke on purpose show up as failed loads; anything else fails the story.
        real = [p for p in problems if not any(f"status of {code}" in p for code in (401, 403, 404))]
        assert not real, real
    finally:
        context.close()


def sign_in(page: Any, world: World, role: str) -> None:
    page.goto(world.url + "/")
    assert "/signin" in page.url
    page.fill("#token", world.token(role))
    page.click("button[type=submit]")
    page.wait_for_selector("#dashboard")


def shot(page: Any, name: str, full_page: bool = True) -> None:
    where = os.environ.get("AIMCTL_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / f"{name}.png"), full_page=full_page)

