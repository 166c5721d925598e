"""The admin page in headless Chromium, against the whole bridge (gunicorn, an RQ worker, Redis
and the OliAI sandbox over real sockets): a person signs in, finds a failed lead by the phone
number as they would type it, replays it and sees it delivered; another site's forged form is
refused."""

from __future__ import annotations

import html
import re
import time

import pytest
import requests

from tests.bridge_fixtures import route_dict

pytestmark = pytest.mark.e2e

TOKEN = "browser-admin-token-0123"
PHONE_TYPED = "098765 43210"
PHONE = "+919876543210"


def admin_config() -> dict:
    return {
        "oliai": {"rate_window_seconds": 2, "general_per_minute": 1000, "timeout_seconds": 3},
        "bridge": {"admin_token": TOKEN},
        "delivery": {"max_attempts": 1},
        "routes": [route_dict()],
    }


def failed_lead(stack, sandbox) -> str:
    """A lead whose only delivery attempt met an API answering 500: failed, replayable."""
    sandbox.configure(fail_rate=1.0)
    r = requests.post(stack.hook("leads"), json={"name": "Priya Sharma", "phone": PHONE_TYPED})
    assert r.status_code == 202
    delivery_id = r.json()["deliveryId"]
    stack.wait_for(delivery_id, statuses=("failed",))
    sandbox.configure(fail_rate=0.0)
    return delivery_id


def test_sign_in_find_by_phone_replay_and_see_it_delivered(make_stack, sandbox, browser):
    from playwright.sync_api import expect

    stack = make_stack(admin_config())
    delivery_id = failed_lead(stack, sandbox)
    context = browser.new_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.url)
    page = context.new_page()
    problems: list[str] = []  # a CSP violation or a script error shows up here
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(r.url) if r.status == 404 else None)

    page.goto(f"{stack.url}/admin/")
    expect(page).to_have_url(re.compile(r"/admin/sign-in\?next="))
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == stack.hook("leads")

    page.get_by_role("link", name="Deliveries").click()
    page.get_by_label("Phone number or delivery id").fill(PHONE_TYPED)
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text(f"Searching for phone {PHONE}")).to_be_visible()
    page.get_by_role("link", name=delivery_id).click()
    expect(page.locator("h1 .badge")).to_have_text("failed")
    assert sandbox.org_state()["contacts"] == []

    page.get_by_role("button", name="Replay", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Replayed")
    # the page follows the delivery by itself until it is done
    expect(page.locator("h1 .badge")).to_have_text("delivered", timeout=20_000)
    [contact] = sandbox.org_state()["contacts"]
    assert contact["phoneNumber"] == PHONE and contact["name"] == "Priya Sharma"
    created = [
        e for e in sandbox.requests() if e["method"] == "POST" and e["path"] == "/v1/contacts"
    ]
    assert [e["status"] for e in created] == [500, 201]
    page.get_by_role("link", name="Failed").click()
    expect(page.get_by_text("0 failed or skipped")).to_be_visible()
    assert problems == []
    context.close()


def test_a_forged_cross_site_form_with_basic_credentials_is_refused(
    make_stack, sandbox, browser, other_site
):
    from playwright.sync_api import expect

    stack = make_stack(admin_config())
    delivery_id = failed_lead(stack, sandbox)
    history = stack.store.history(delivery_id)
    context = browser.new_context(
        http_credentials={"username": "admin", "password": TOKEN, "origin": stack.url}
    )
    page = context.new_page()
    page.goto(f"{stack.url}/admin/sign-in-basic")  # the browser now holds Basic credentials
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    target = html.escape(f"{stack.url}/admin/deliveries/{delivery_id}/replay")
    forged = other_site(
        f"""<!doctype html><title>You won a prize</title>
        <form method="post" action="{target}">
          <input type="hidden" name="remap" value="0">
          <input type="hidden" name="csrf_token" value="guessed">
        </form>
        <script>document.forms[0].submit()</script>"""
    )
    assert not forged.startswith(stack.url)  # another origin: another port
    with page.expect_response(lambda r: r.url.endswith("/replay")) as answer:
        page.goto(forged)
    # 403, not 401: the browser did attach the credentials, and the bridge still refused
    assert answer.value.status == 403
    expect(page.get_by_role("alert")).to_contain_text("cross-site")

    time.sleep(1.0)  # a worker would have delivered a replay by now
    assert stack.store.get(delivery_id).status == "failed"
    assert stack.store.history(delivery_id) == history
    assert sandbox.org_state()["contacts"] == []
    context.close()
