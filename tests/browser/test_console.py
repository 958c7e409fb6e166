"""The console in real Chromium against the lab: what each role sees, live timelines, reviewed actions."""

from __future__ import annotations

import time
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import World, shot, sign_in

X1_FINAL = "exchange1 on r720-3"


def csrf_of(page: Any) -> str:
    return str(page.get_attribute("input[name=csrf]", "value"))


def test_viewer_sees_the_fleet_and_no_action_and_a_forged_post_is_403(world: World, browser_page: Any) -> None:
    page = browser_page
    sign_in(page, world, "viewer")
    assert page.locator("#personas a[href='/personas/exchange1']").count() == 1
    assert page.locator("#pool-exchange .nk").inner_text() == "N+1"
    assert page.locator("a[href^='/review/']").count() == 0  # no pause/resume either
    page.click("a[href='/personas/exchange1']")
    page.wait_for_selector("h1")
    assert "iqn.1991-05.com.microsoft:exchange1" in page.content()
    assert page.locator(".actions a").count() == 0
    resp = page.goto(world.url + "/personas/nosuch")
    assert resp is not None and resp.status == 404 and "no persona nosuch" in page.inner_text("#problem")
    # The review page itself refuses a viewer, and so does a forged POST carrying the viewer's own
    # valid CSRF token: the same role check as the API, in the same place.
    page.goto(world.url + "/review/failover?persona=exchange1")
    assert "needs role operator" in page.inner_text("#problem")
    page.goto(world.url + "/personas/exchange1")
    resp = page.request.post(world.url + "/actions/failover",
                             form={"csrf": csrf_of(page), "persona": "exchange1"}, max_redirects=0)
    assert resp.status == 403 and "needs role operator" in resp.text()
    assert world.ctrl.api.get("/v1/failovers") == []
    last = world.ctrl.api.get("/v1/audit?limit=5")[-1]
    assert (last["actor"], last["detail"]["role"], last["detail"]["status"], last["detail"]["via"]) == (
        "viewer1", "viewer", 403, "console")


def test_a_request_without_the_csrf_token_is_refused(world: World, browser_page: Any) -> None:
    page = browser_page
    sign_in(page, world, "operator")
    for form in ({"pool": "web"}, {"pool": "web", "csrf": "forged-" + "x" * 40}):
        resp = page.request.post(world.url + "/actions/pause", form=form, max_redirects=0)
        assert resp.status == 403 and "CSRF" in resp.text()
    assert world.ctrl.api.get("/v1/status")["operator_paused"] == {}
    # Signed out, the same form is refused too, and the session cookie was HttpOnly and SameSite=Strict.
    cookie = next(c for c in page.context.cookies() if c["name"] == "aimctl_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_operator_watches_the_power_button_failover_live(world: World, browser_page: Any) -> None:
    page = browser_page
    sign_in(page, world, "operator")
    page.evaluate("window.__not_reloaded = true")
    world.lab.fault("power-button", "r720-1")
    # The operation appears on the open dashboard by itself (server-sent events, no reload).
    page.wait_for_selector("#running a[href^='/operations/']", timeout=30_000)
    shot(page, "dashboard")
    assert page.evaluate("window.__not_reloaded") is True
    page.click("#running a[href^='/operations/']")
    page.wait_for_selector("#timeline")
    page.evaluate("window.__not_reloaded = true")
    seen: list[int] = []
    pictured = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        n = page.locator("#timeline tr.step").count()
        if not seen or n != seen[-1]:
            seen.append(n)
        if n >= 6 and not pictured:
            shot(page, "timeline-live")
            pictured = True
        if X1_FINAL in page.inner_text("#result"):
            break
        page.wait_for_timeout(50)
    assert X1_FINAL in page.inner_text("#result"), page.inner_text("#timeline")
    assert page.evaluate("window.__not_reloaded") is True  # every step arrived without a reload
    assert len(seen) >= 4 and seen == sorted(seen), seen  # step by step, never going back
    steps = [s.get_attribute("data-step") for s in page.locator("#timeline tr.step").all()]
    assert steps == ["confirm", "approve", "choose", "fence", "storage", "bootcfg", "switch", "power_on",
                     "heartbeat", "recovery", "done"]
    assert page.get_attribute("#timeline", "data-state") == "done"
    # Times are shown in the browser's zone (Europe/Berlin here), not the server's UTC.
    assert page.locator("#timeline time[data-local]").count() >= 10
    page.goto(world.url + "/personas/exchange1")
    shot(page, "persona")


def test_manual_failover_is_approved_from_the_console(world: World, browser_page: Any) -> None:
    page = browser_page
    sign_in(page, world, "operator")
    world.lab.fault("power-button", "r620-1")  # web1: manual policy, IPMI bodies booting over iPXE
    page.wait_for_selector("#running a[href^='/operations/']", timeout=30_000)
    op_id = page.inner_text("#running a[href^='/operations/']")
    page.goto(f"{world.url}/operations/{op_id}")
    page.wait_for_selector("#timeline[data-state='waiting-approval']", timeout=30_000)
    page.click("a[href^='/review/approve']")
    assert "r620-1 → r620-4" in page.inner_text("#plan h2")
    assert page.locator("#plan .switch-line").count() > 0
    page.click("#confirm")
    page.wait_for_load_state()
    assert page.locator("#timeline").count() == 1, page.inner_text("main")
    expect(page.locator("#result")).to_contain_text("web1 on r620-4", timeout=60_000)
    op = world.ctrl.api.get(f"/v1/failovers/{op_id}")
    assert op["state"] == "done" and op["facts"]["approved_by"] == "operator1(operator)"
    assert world.lab.status()["servers"]["r620-4"]["booted"] == "web1"
    audit = world.ctrl.api.get("/v1/audit?limit=50")
    served = [e for e in audit if e["action"] == "boot.served" and e["target"] == "r620-4"]
    assert served and served[-1]["detail"]["op"] == op_id  # the script went to its body, in its window


def test_planned_move_goes_through_its_review_page(world: World, browser_page: Any) -> None:
    page = browser_page
    sign_in(page, world, "operator")
    page.goto(world.url + "/personas/exchange2")
    page.click("a[href^='/review/move']")
    page.select_option("#to", "r720-3")
    page.click("form[action='/review/move'] button")
    page.wait_for_selector("#plan")
    assert "r720-2 → r720-3" in page.inner_text("#plan h2")
    lines = page.locator("#plan .switch-line").all_inner_texts()
    assert any("switchport" in line for line in lines), lines
    assert any(line.startswith("sw1> ") for line in lines) and any(line.startswith("sw2> ") for line in lines)
    shot(page, "review", full_page=False)
    page.click("#confirm")
    page.wait_for_selector("#timeline")  # the confirmed move's own timeline
    expect(page.locator("#result")).to_contain_text("exchange2 on r720-3", timeout=60_000)
    assert world.ctrl.api.get("/v1/status")["personas"]["exchange2"]["server"] == "r720-3"
    entry = next(e for e in reversed(world.ctrl.api.get("/v1/audit?limit=50")) if e["action"] == "POST /v1/move")
    assert entry["actor"] == "operator1" and entry["detail"]["via"] == "console"
