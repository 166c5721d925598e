"""The sandbox behaves as the OliAI docs say, and as oliai-api.md section 12 decides where they
are silent. Driven over real HTTP with ``OliAIClient``; raw requests only where the client
hides what a user of the API would see (headers, exact bodies). The last tests exercise the
IO-free store and rate limiter directly with a fake clock.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from bridge.exceptions import (
    ApiForbidden,
    Conflict,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unreachable,
    ValidationFailed,
)
from sandbox import DEMO_KEY
from sandbox.options import Options
from sandbox.ratelimit import SlidingWindowLimiter, retry_after_header
from sandbox.state import ApiFailure, Store
from tests.sandbox_fixtures import REPO_ROOT

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PHONE_MESSAGE = "phoneNumber must be a valid E.164 phone number"


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05):
    """Poll until ``predicate()`` is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def contacts(n: int, prefix: str = "+1555000", name: str = "Person") -> list[dict]:
    return [{"name": f"{name} {i}", "phoneNumber": f"{prefix}{i:04d}"} for i in range(n)]


def in_future(seconds: float) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@pytest.fixture
def campaign_setup(sandbox):
    """A client, a flow id and an audience with two members."""
    client = sandbox.client()
    flow_id = client.list_flows()["data"][0]["id"]
    people = client.bulk_upsert_contacts(contacts(2))["contacts"]
    audience = client.create_audience("Campaign audience")
    client.add_audience_contacts(audience["id"], [c["id"] for c in people])
    return client, flow_id, audience["id"]


# --- starting ----------------------------------------------------------------------------------


def test_start_line_names_url_and_never_a_configured_key(sandbox_server, sandbox):
    assert re.search(r"http://\S+/v1", sandbox_server.start_line)
    for key in sandbox.keys:
        assert key not in sandbox_server.start_line


def test_default_start_serves_the_demo_key():
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0", "--quiet"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert DEMO_KEY in line
        base_url = re.search(r"http://\S+/v1", line).group(0)
        answer = requests.get(f"{base_url}/flows", headers={"x-api-key": DEMO_KEY}, timeout=5)
        assert answer.status_code == 200
        assert answer.json()["total"] == 3
    finally:
        process.terminate()
        process.wait(timeout=5)


# --- authentication and the error shape ----------------------------------------------------


def test_the_four_documented_401_messages(sandbox):
    cases = {
        None: "API key is required",
        "sk_live_" + "x" * 32: "Invalid API key",
        sandbox.revoked_key: "API key has been revoked",
        sandbox.expired_key: "API key has expired",
    }
    for key, message in cases.items():
        headers = {"x-api-key": key} if key else {"x-api-key": ""}
        answer = sandbox.raw("GET", "/contacts", headers=headers)
        assert answer.status_code == 401
        assert answer.json() == {"statusCode": 401, "message": message, "error": "Unauthorized"}
        if key:
            with pytest.raises(Unauthorized) as caught:
                sandbox.client(key).list_contacts()
            assert caught.value.message == message and caught.value.status == 401


def test_unknown_routes_ids_and_methods_use_the_error_shape(sandbox):
    answer = sandbox.raw("GET", "/nothing-here")
    assert answer.status_code == 404
    assert answer.json() == {
        "statusCode": 404,
        "message": "Cannot GET /v1/nothing-here",
        "error": "Not Found",
    }
    answer = sandbox.raw("PUT", "/contacts", json={})
    assert answer.status_code == 405
    assert answer.json()["error"] == "Method Not Allowed" and answer.json()["statusCode"] == 405
    answer = sandbox.raw("GET", "/contacts/ct_missing")
    assert answer.status_code == 404
    assert set(answer.json()) == {"statusCode", "message", "error"}
    answer = sandbox.raw(
        "POST", "/contacts", data="{not json", headers={"x-api-key": sandbox.keys[0]}
    )
    assert answer.status_code == 400 and answer.json()["error"] == "Bad Request"


def test_ids_timestamps_and_last_used(sandbox):
    client = sandbox.client()
    contact = client.create_contact("Priya Sharma", "+919876543210")
    audience = client.create_audience("A")
    assert contact["id"].startswith("ct_") and audience["id"].startswith("aud_")
    assert contact["organizationId"] == "org_1"
    assert client.list_flows()["data"][0]["id"].startswith("flow_")
    assert ISO_MS.match(contact["createdAt"]) and ISO_MS.match(contact["updatedAt"])
    assert ISO_MS.match(sandbox.org_state()["lastUsedAt"])


# --- contacts ------------------------------------------------------------------------------


def test_contact_crud(sandbox):
    client = sandbox.client()
    created = client.create_contact(
        "Priya Sharma", "+919876543210", "hi-IN", {"city": "Mumbai", "tier": "premium"}
    )
    assert created["language"] == "hi-IN" and created["metadata"]["city"] == "Mumbai"
    assert client.get_contact(created["id"]) == created

    bare = client.create_contact("Ravi Kumar", "+919123456789")
    assert bare["language"] is None and bare["metadata"] == {}

    patched = client.update_contact(created["id"], language="en-IN", metadata={"city": "Delhi"})
    # PATCH replaces metadata as a whole (#13): "tier" is gone.
    assert patched["metadata"] == {"city": "Delhi"}
    assert patched["language"] == "en-IN" and patched["name"] == "Priya Sharma"

    assert client.delete_contact(created["id"]) == {"success": True}
    with pytest.raises(NotFound):
        client.get_contact(created["id"])
    assert [c["id"] for c in sandbox.org_state()["contacts"]] == [bare["id"]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "A", "phoneNumber": "919876543210"}, PHONE_MESSAGE),
        ({"name": "A", "phoneNumber": "+0123"}, PHONE_MESSAGE),
        ({"name": "A", "phoneNumber": "+91 98765 43210"}, PHONE_MESSAGE),
        ({"name": "A"}, PHONE_MESSAGE),
        ({"name": "  ", "phoneNumber": "+919876543210"}, "name should not be empty"),
        ({"phoneNumber": "+919876543210"}, "name should not be empty"),
        ({"name": "A", "phoneNumber": "+919876543210", "language": "hindi"}, "language"),
        ({"name": "A", "phoneNumber": "+919876543210", "metadata": ["x"]}, "metadata"),
    ],
)
def test_contact_validation(sandbox, body, message):
    answer = sandbox.raw("POST", "/contacts", json=body)
    assert answer.status_code == 400
    assert message in answer.json()["message"]
    assert sandbox.org_state()["counts"]["contacts"] == 0


def test_duplicate_phone_is_409_without_the_existing_id(sandbox):
    client = sandbox.client()
    first = client.create_contact("Priya", "+919876543210")
    answer = sandbox.raw("POST", "/contacts", json={"name": "P2", "phoneNumber": "+919876543210"})
    assert answer.status_code == 409
    body = answer.json()
    assert set(body) == {"statusCode", "message", "error"}
    assert body["statusCode"] == 409 and body["error"] == "Conflict"
    assert first["id"] not in answer.text
    with pytest.raises(Conflict):
        client.create_contact("P3", "+919876543210")

    other = client.create_contact("Ravi", "+919123456789")
    with pytest.raises(Conflict):
        client.update_contact(other["id"], phoneNumber="+919876543210")
    assert client.update_contact(other["id"], phoneNumber="+919000000001")["phoneNumber"] == (
        "+919000000001"
    )
    assert sandbox.org_state()["counts"]["contacts"] == 2


def test_concurrent_creates_of_one_phone_make_exactly_one_contact(sandbox):
    outcomes = []

    def create(n: int) -> None:
        client = sandbox.client()
        try:
            client.create_contact(f"Racer {n}", "+919876543210")
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=create, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 9 + ["created"]
    assert sandbox.org_state()["counts"]["contacts"] == 1


def test_pagination_defaults_bounds_and_order(sandbox):
    client = sandbox.client()
    client.bulk_upsert_contacts(contacts(25))
    first = client.list_contacts()
    assert (first["page"], first["limit"], first["total"], first["totalPages"]) == (1, 20, 25, 2)
    assert len(first["data"]) == 20
    # Newest first: the last item of the batch was created last.
    assert first["data"][0]["name"] == "Person 24"
    assert len(client.list_contacts(page=2)["data"]) == 5
    assert client.list_contacts(page=3)["data"] == []
    assert len(client.list_contacts(limit=100)["data"]) == 25
    for limit in (101, 0):
        with pytest.raises(ValidationFailed) as caught:
            client.list_contacts(limit=limit)
        assert caught.value.status == 400 and "limit" in caught.value.message


def test_search_is_case_insensitive_substring_on_name_or_phone(sandbox):
    client = sandbox.client()
    client.create_contact("Priya Sharma", "+919876543210")
    client.create_contact("Ravi Kumar", "+919123456789")
    client.create_contact("Anita", "+14155550100")
    assert [c["name"] for c in client.list_contacts(search="PRIYA")["data"]] == ["Priya Sharma"]
    assert {c["name"] for c in client.list_contacts(search="+91")["data"]} == {
        "Priya Sharma",
        "Ravi Kumar",
    }
    assert client.list_contacts(search="+919876543210")["total"] == 1
    # The client sends "+" as %2B; sent bare it arrives as a space and matches nothing (#9).
    assert any("search=%2B919876543210" in r["query"] for r in sandbox.requests())
    answer = sandbox.raw("GET", "/contacts?search=+919876543210")
    assert answer.json()["total"] == 0


def test_bulk_upsert_counts_created_updated_failed(sandbox):
    client = sandbox.client()
    existing = client.create_contact("Old Name", "+919876543210", metadata={"keep": "no"})
    result = client.bulk_upsert_contacts(
        [
            {"name": "New Name", "phoneNumber": "+919876543210", "metadata": {"tier": "gold"}},
            {"name": "Ravi", "phoneNumber": "+919123456789", "language": "en-IN"},
            {"name": "Bad Phone", "phoneNumber": "12345"},
            {"name": "", "phoneNumber": "+919000000000"},
        ]
    )
    assert (result["created"], result["updated"], result["failed"]) == (1, 1, 2)
    by_phone = {c["phoneNumber"]: c for c in result["contacts"]}
    assert set(by_phone) == {"+919876543210", "+919123456789"}
    assert by_phone["+919876543210"]["id"] == existing["id"]
    stored = {c["phoneNumber"]: c for c in sandbox.org_state()["contacts"]}
    assert len(stored) == 2
    assert stored["+919876543210"]["name"] == "New Name"
    assert stored["+919876543210"]["metadata"] == {"tier": "gold"}


def test_bulk_upsert_limits(sandbox):
    client = sandbox.client()
    with pytest.raises(ValidationFailed) as caught:
        client.bulk_upsert_contacts(contacts(101))
    assert "100" in caught.value.message
    assert sandbox.raw("POST", "/contacts/bulk", json=[{"name": "x"}]).status_code == 400
    assert sandbox.org_state()["counts"]["contacts"] == 0
    sandbox.configure(bulk_max_items=5)
    with pytest.raises(ValidationFailed):
        client.bulk_upsert_contacts(contacts(6))


def test_body_too_large_is_413_and_changes_nothing(sandbox):
    client = sandbox.client()
    huge = {"name": "Big", "phoneNumber": "+919876543210", "metadata": {"blob": "x" * 1_100_000}}
    with pytest.raises(ValidationFailed) as caught:
        client.bulk_upsert_contacts([huge])
    assert caught.value.status == 413
    assert sandbox.org_state()["counts"]["contacts"] == 0


# --- audiences -----------------------------------------------------------------------------


def test_audience_crud(sandbox):
    client = sandbox.client()
    audience = client.create_audience("Mumbai Premium", "Hindi speakers")
    assert audience["contactCount"] == 0 and audience["description"] == "Hindi speakers"
    assert client.get_audience(audience["id"]) == audience
    renamed = client.update_audience(audience["id"], name="Mumbai Premium - March")
    assert renamed["name"] == "Mumbai Premium - March"
    assert renamed["description"] == "Hindi speakers"
    # Duplicate names are allowed and an unknown `search` is ignored (#16).
    client.create_audience("Mumbai Premium - March")
    listing = sandbox.raw("GET", "/audiences?search=nothing").json()
    assert listing["total"] == 2 and listing["totalPages"] == 1
    with pytest.raises(ValidationFailed):
        client.create_audience("   ")
    assert client.delete_audience(audience["id"]) == {"success": True}
    with pytest.raises(NotFound):
        client.get_audience(audience["id"])


def test_audience_membership(sandbox):
    client = sandbox.client()
    a, b, c = client.bulk_upsert_contacts(contacts(3))["contacts"]
    audience = client.create_audience("Members")

    added = client.add_audience_contacts(audience["id"], [a["id"], b["id"]])
    assert added["id"] == audience["id"] and added["contactCount"] == 2
    # Adding a member twice is a no-op, not an error.
    assert client.add_audience_contacts(audience["id"], [a["id"]])["contactCount"] == 2
    with pytest.raises(NotFound):
        client.add_audience_contacts(audience["id"], [c["id"], "ct_unknown"])
    assert client.get_audience(audience["id"])["contactCount"] == 2  # nothing half-applied

    members = client.list_audience_contacts(audience["id"])
    assert {m["id"] for m in members["data"]} == {a["id"], b["id"]}
    assert client.list_audience_contacts(audience["id"], search="Person 1")["total"] == 1
    available = client.list_available_contacts(audience["id"])
    assert [m["id"] for m in available["data"]] == [c["id"]]

    # Removing a non-member is a no-op; both remove forms work.
    removed = client.remove_audience_contacts(audience["id"], [a["id"], c["id"]])
    assert removed["contactCount"] == 1
    answer = sandbox.raw("DELETE", f"/audiences/{audience['id']}/contacts", json={"contactIds": []})
    assert answer.status_code == 200 and answer.json()["contactCount"] == 1

    # Deleting a contact removes it from every audience.
    client.delete_contact(b["id"])
    assert client.get_audience(audience["id"])["contactCount"] == 0
    with pytest.raises(NotFound):
        client.list_audience_contacts("aud_unknown")


def test_audience_delete_refused_while_a_campaign_uses_it(campaign_setup, sandbox):
    client, flow_id, audience_id = campaign_setup
    campaign = client.create_campaign("Uses audience", flow_id, audience_id)
    with pytest.raises(Conflict) as caught:
        client.delete_audience(audience_id)
    assert caught.value.status == 409
    client.start_campaign(campaign["id"])
    with pytest.raises(Conflict):
        client.delete_audience(audience_id)
    client.cancel_campaign(campaign["id"])
    assert client.delete_audience(audience_id) == {"success": True}


# --- flows ---------------------------------------------------------------------------------


def test_flows_are_seeded_and_read_only(sandbox):
    client = sandbox.client()
    listing = client.list_flows()
    assert listing["total"] == 3 and "totalPages" not in listing
    flow = client.get_flow(listing["data"][0]["id"])
    assert flow["type"] in {"SURVEY", "MASS_COMMUNICATION", "NUDGE", "HYBRID"}
    assert flow["ttsProvider"] in {"GOOGLE", "GEMINI", "ELEVENLABS"}
    assert flow["llmProvider"] in {"GEMINI_API", "OLIAI_INFERENCE"}
    assert isinstance(flow["allowInterrupts"], bool)
    for name in ("language", "voiceGender", "systemInstruction", "initialPrompt"):
        assert flow[name]
    with pytest.raises(NotFound):
        client.get_flow("flow_unknown")
    assert sandbox.raw("POST", "/flows", json={"name": "x"}).status_code == 405


# --- campaigns -----------------------------------------------------------------------------


def test_campaign_create_defaults_and_validation(campaign_setup):
    client, flow_id, audience_id = campaign_setup
    campaign = client.create_campaign("Defaults", flow_id, audience_id)
    assert campaign["status"] == "DRAFT" and campaign["id"].startswith("camp_")
    assert [campaign[k] for k in ("callsPerMinute", "maxConcurrentCalls", "maxRetries")] == [
        10,
        5,
        3,
    ]
    assert campaign["retryDelayMinutes"] == 5 and campaign["callTimeoutMinutes"] == 5
    assert campaign["scheduledAt"] is None and campaign["startedAt"] is None
    assert (
        client.create_campaign("No retries", flow_id, audience_id, maxRetries=0)["maxRetries"] == 0
    )
    bad = [
        {"callsPerMinute": 0},
        {"maxConcurrentCalls": "5"},
        {"maxRetries": -1},
        {"callTimeoutMinutes": 1.5},
        {"scheduledAt": in_future(600)},  # without timezone
        {"scheduledAt": "2020-01-01T00:00:00Z", "timezone": "Asia/Kolkata"},
        {"scheduledAt": "tomorrow", "timezone": "Asia/Kolkata"},
        {"scheduledAt": in_future(600), "timezone": "Mars/Olympus"},
    ]
    for settings in bad:
        with pytest.raises(ValidationFailed):
            client.create_campaign("Bad", flow_id, audience_id, **settings)
    with pytest.raises(NotFound):
        client.create_campaign("No flow", "flow_unknown", audience_id)
    with pytest.raises(NotFound):
        client.create_campaign("No audience", flow_id, "aud_unknown")
    with pytest.raises(ValidationFailed):
        client.create_campaign("", flow_id, audience_id)
    assert client.list_campaigns()["total"] == 2


def test_campaign_state_machine(campaign_setup):
    client, flow_id, audience_id = campaign_setup
    campaign = client.create_campaign("Machine", flow_id, audience_id)
    cid = campaign["id"]
    with pytest.raises(ValidationFailed, match="DRAFT"):
        client.pause_campaign(cid)
    started = client.start_campaign(cid)
    assert started["status"] == "IN_PROGRESS" and ISO_MS.match(started["startedAt"])
    with pytest.raises(ValidationFailed, match="IN_PROGRESS") as caught:
        client.start_campaign(cid)
    assert caught.value.status == 400
    assert client.pause_campaign(cid)["status"] == "PAUSED"
    with pytest.raises(ValidationFailed, match="PAUSED"):
        client.pause_campaign(cid)
    assert client.resume_campaign(cid)["status"] == "IN_PROGRESS"
    assert client.cancel_campaign(cid)["status"] == "CANCELLED"
    for action in (client.resume_campaign, client.start_campaign, client.cancel_campaign):
        with pytest.raises(ValidationFailed, match="CANCELLED"):
            action(cid)
    assert client.get_campaign(cid)["status"] == "CANCELLED"
    with pytest.raises(NotFound):
        client.start_campaign("camp_unknown")


def test_campaign_completes_and_calls_the_audience_as_it_was_at_start(campaign_setup, sandbox):
    client, flow_id, audience_id = campaign_setup
    sandbox.configure(campaign_seconds_per_contact=0.2)
    campaign = client.create_campaign("Runs", flow_id, audience_id)
    client.start_campaign(campaign["id"])
    late = client.create_contact("Late Joiner", "+919999999999")
    client.add_audience_contacts(audience_id, [late["id"]])

    done = wait_for(lambda: client.get_campaign(campaign["id"])["status"] == "COMPLETED", 3)
    assert done
    final = client.get_campaign(campaign["id"])
    assert ISO_MS.match(final["completedAt"]) and final["completedAt"] >= final["startedAt"]
    snapshot = sandbox.org_state()["campaigns"][0]["snapshotContactIds"]
    assert len(snapshot) == 2 and late["id"] not in snapshot
    with pytest.raises(ValidationFailed, match="COMPLETED"):
        client.pause_campaign(campaign["id"])
    # A finished campaign no longer holds its audience.
    assert client.delete_audience(audience_id) == {"success": True}


def test_scheduled_campaign_starts_when_its_time_comes(campaign_setup):
    client, flow_id, audience_id = campaign_setup
    when = in_future(1.0)
    campaign = client.create_campaign(
        "Later", flow_id, audience_id, scheduledAt=when, timezone="Asia/Kolkata"
    )
    assert campaign["status"] == "DRAFT" and campaign["scheduledAt"] == when
    assert client.start_campaign(campaign["id"])["status"] == "SCHEDULED"
    assert client.list_campaigns(status="SCHEDULED")["total"] == 1
    started = wait_for(
        lambda: client.get_campaign(campaign["id"])["status"] == "IN_PROGRESS", timeout=3
    )
    assert started
    assert client.get_campaign(campaign["id"])["startedAt"] == when


def test_start_with_exhausted_quota_is_403(campaign_setup, sandbox):
    client, flow_id, audience_id = campaign_setup
    campaign = client.create_campaign("No minutes", flow_id, audience_id)
    sandbox.configure(quota_exhausted=True)
    with pytest.raises(ApiForbidden, match="call minutes") as caught:
        client.start_campaign(campaign["id"])
    assert caught.value.status == 403
    assert client.get_campaign(campaign["id"])["status"] == "DRAFT"
    sandbox.configure(quota_exhausted=False)
    assert client.start_campaign(campaign["id"])["status"] == "IN_PROGRESS"


def test_campaign_list_filters(campaign_setup):
    client, flow_id, audience_id = campaign_setup
    spring = client.create_campaign("Spring Outreach", flow_id, audience_id)
    client.create_campaign("Autumn outreach", flow_id, audience_id)
    client.create_campaign("Reminder", flow_id, audience_id)
    client.start_campaign(spring["id"])
    assert [c["id"] for c in client.list_campaigns(status="IN_PROGRESS")["data"]] == [spring["id"]]
    assert client.list_campaigns(status="DRAFT")["total"] == 2
    names = [c["name"] for c in client.list_campaigns(search="OUTREACH")["data"]]
    assert names == ["Autumn outreach", "Spring Outreach"]  # newest first
    assert client.list_campaigns(status="DRAFT", search="outreach")["total"] == 1
    with pytest.raises(ValidationFailed):
        client.list_campaigns(status="in_progress")


# --- imports -------------------------------------------------------------------------------


class WebhookReceiver:
    """A tiny HTTP server that records the JSON bodies POSTed to it."""

    def __init__(self):
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/import-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    hook = WebhookReceiver()
    yield hook
    hook.close()


def test_import_runs_in_background_and_posts_the_webhook_once(sandbox, receiver):
    sandbox.configure(import_delay_ms=300)  # long enough to see PROCESSING reliably
    client = sandbox.client()
    existing = client.create_contact("Old", "+919876543210")
    audience = client.create_audience("Imported")
    rows = [
        {"name": "Priya", "phoneNumber": "+919876543210", "language": "hi-IN", "tier": "gold"},
        {"name": "Ravi", "phoneNumber": "+919123456789", "city": "Pune", "tier": "silver"},
        {"name": "Broken", "phoneNumber": "not a phone"},
    ]
    accepted = client.bulk_import(rows, audience_id=audience["id"], webhook_url=receiver.url)
    assert accepted["status"] == "PROCESSING" and accepted["total"] == 3
    assert accepted["importId"].startswith("imp_")
    import_id = accepted["importId"]
    assert client.import_status(import_id)["status"] == "PROCESSING"

    final = wait_for(lambda: (s := client.import_status(import_id))["status"] != "PROCESSING" and s)
    assert final["status"] == "COMPLETED_WITH_ERRORS"
    assert (final["created"], final["updated"], final["failed"], final["errorCount"]) == (
        1,
        1,
        1,
        1,
    )
    assert ISO_MS.match(final["completedAt"])

    assert wait_for(lambda: receiver.bodies, timeout=3)
    time.sleep(0.2)  # a second POST, if the sandbox wrongly sent one, would have arrived
    assert len(receiver.bodies) == 1
    hook = receiver.bodies[0]
    assert hook["importId"] == import_id and hook["status"] == "COMPLETED_WITH_ERRORS"

    stored = {c["phoneNumber"]: c for c in sandbox.org_state()["contacts"]}
    assert stored["+919876543210"]["id"] == existing["id"]
    assert stored["+919876543210"]["metadata"] == {"tier": "gold"}
    assert stored["+919123456789"]["metadata"] == {"city": "Pune", "tier": "silver"}
    assert client.get_audience(audience["id"])["contactCount"] == 2
    assert [i["id"] for i in client.list_imports()["data"]] == [import_id]


def test_import_outcomes_and_limits(sandbox, receiver):
    client = sandbox.client()
    ok = client.bulk_import(contacts(2))
    bad = client.bulk_import([{"name": "x", "phoneNumber": "x"}], webhook_url=receiver.url)
    assert wait_for(lambda: client.import_status(ok["importId"])["status"] == "COMPLETED")
    assert wait_for(lambda: client.import_status(bad["importId"])["status"] == "FAILED")
    assert wait_for(lambda: receiver.bodies, timeout=3)[0]["status"] == "FAILED"
    with pytest.raises(ValidationFailed, match="10000"):
        client.bulk_import(contacts(10_001, prefix="+1666"))
    with pytest.raises(NotFound):
        client.bulk_import(contacts(1), audience_id="aud_unknown")
    with pytest.raises(NotFound):
        client.import_status("imp_unknown")
    classes = {r["path"]: r["rate_class"] for r in sandbox.requests()}
    assert classes["/v1/imports/api/bulk"] == "bulk"


def test_webhook_failure_is_swallowed(sandbox):
    client = sandbox.client()
    accepted = client.bulk_import(contacts(1), webhook_url="http://127.0.0.1:9/unreachable")
    status = wait_for(lambda: client.import_status(accepted["importId"])["status"] == "COMPLETED")
    assert status
    assert client.list_flows()["total"] == 3  # the server is still fine


# --- rate limits ---------------------------------------------------------------------------


def test_429_with_retry_after_then_success_after_waiting(sandbox):
    sandbox.configure(general_limit=3)
    client = sandbox.client()
    for _ in range(3):
        client.list_flows()
    answer = sandbox.raw("GET", "/flows")
    assert answer.status_code == 429
    assert answer.json() == {
        "statusCode": 429,
        "message": "Too Many Requests",
        "error": "Too Many Requests",
    }
    assert re.fullmatch(r"[1-9]\d*", answer.headers["Retry-After"])
    assert not [h for h in answer.headers if h.lower().startswith("x-ratelimit")]
    with pytest.raises(RateLimited) as caught:
        client.list_flows()
    assert 1 <= caught.value.retry_after <= 2
    time.sleep(caught.value.retry_after)
    assert client.list_flows()["total"] == 3


def test_every_request_counts_including_rejected_ones(sandbox):
    sandbox.configure(general_limit=2)
    client = sandbox.client()
    for _ in range(2):
        with pytest.raises(ValidationFailed):
            client.create_contact("", "+1")
    with pytest.raises(RateLimited):
        client.list_flows()
    # The other organization has its own budget.
    assert sandbox.client(sandbox.keys[1]).list_flows()["total"] == 3


def test_bulk_endpoints_count_against_both_classes(sandbox):
    client = sandbox.client()
    sandbox.configure(bulk_limit=2, general_limit=50)
    client.bulk_upsert_contacts(contacts(1))
    client.bulk_import(contacts(1, prefix="+1777"))
    with pytest.raises(RateLimited):
        client.bulk_upsert_contacts(contacts(1))
    assert client.list_flows()["total"] == 3  # general budget still open

    sandbox.configure(general_limit=4, bulk_limit=50)
    with pytest.raises(RateLimited):
        client.list_flows()  # 3 bulk + 1 general already used the general budget of 4
    logged = [r["rate_class"] for r in sandbox.requests() if r["org"]]
    assert logged.count("bulk") == 3


# --- injected faults -----------------------------------------------------------------------


def test_fail_rate_answers_500_and_changes_nothing(sandbox):
    sandbox.configure(fail_rate=1.0)
    client = sandbox.client()
    with pytest.raises(ServerError) as caught:
        client.create_contact("Priya", "+919876543210")
    assert caught.value.status == 500
    with pytest.raises(ServerError):
        client.list_contacts()
    assert sandbox.org_state()["counts"]["contacts"] == 0
    sandbox.configure(fail_rate=0.0)
    assert client.create_contact("Priya", "+919876543210")["name"] == "Priya"


@pytest.mark.parametrize(("mode", "error"), [("500", ServerError), ("drop", Unreachable)])
def test_fail_after_commit_keeps_the_write(sandbox, mode, error):
    sandbox.configure(fail_after_commit_rate=1.0, fail_after_commit_mode=mode)
    client = sandbox.client()
    with pytest.raises(error):
        client.create_contact("Priya", "+919876543210")
    # Reads are never failed after commit; the write is there, so a blind retry gets a 409.
    found = client.find_contact_by_phone("+919876543210")
    assert found and found["name"] == "Priya"
    sandbox.configure(fail_after_commit_rate=0.0)
    with pytest.raises(Conflict):
        client.create_contact("Priya", "+919876543210")
    faults = [r["fault"] for r in sandbox.requests() if r["method"] == "POST"]
    assert faults[0] == f"commit-{mode}"


def test_mixed_mode_uses_both_faults(sandbox):
    sandbox.configure(fail_after_commit_rate=1.0, fail_after_commit_mode="mixed")
    client = sandbox.client()
    seen = set()
    for i in range(12):
        try:
            client.create_audience(f"A{i}")
        except (ServerError, Unreachable) as exc:
            seen.add(type(exc))
    assert seen == {ServerError, Unreachable}
    assert sandbox.org_state()["counts"]["audiences"] == 12


def test_latency_is_added(sandbox):
    sandbox.configure(latency_ms=300)
    started = time.monotonic()
    sandbox.client().list_flows()
    assert time.monotonic() - started >= 0.3


# --- organizations and control -----------------------------------------------------------


def test_other_organizations_ids_are_404(campaign_setup, sandbox):
    client, flow_id, audience_id = campaign_setup
    contact = client.list_contacts()["data"][0]
    campaign = client.create_campaign("Mine", flow_id, audience_id)
    imported = client.bulk_import(contacts(1, prefix="+1888"))
    other = sandbox.client(sandbox.keys[1])
    for call in (
        lambda: other.get_contact(contact["id"]),
        lambda: other.update_contact(contact["id"], name="Hijack"),
        lambda: other.delete_contact(contact["id"]),
        lambda: other.get_audience(audience_id),
        lambda: other.delete_audience(audience_id),
        lambda: other.get_flow(flow_id),
        lambda: other.get_campaign(campaign["id"]),
        lambda: other.start_campaign(campaign["id"]),
        lambda: other.import_status(imported["importId"]),
    ):
        with pytest.raises(NotFound):
            call()
    own_audience = other.create_audience("Theirs")
    with pytest.raises(NotFound):
        other.add_audience_contacts(own_audience["id"], [contact["id"]])
    # The same phone may exist once per organization.
    assert other.create_contact("Same phone", contact["phoneNumber"])["organizationId"] == "org_2"
    assert other.list_contacts()["total"] == 1
    assert client.get_contact(contact["id"])["name"] == contact["name"]


def test_request_log_and_state(sandbox):
    started = time.time()
    client = sandbox.client()
    client.create_contact("Priya", "+919876543210")
    client.list_contacts(search="+9198")
    log = sandbox.requests(since=started)
    assert [(r["method"], r["path"], r["status"]) for r in log] == [
        ("POST", "/v1/contacts", 201),
        ("GET", "/v1/contacts", 200),
    ]
    assert all(r["org"] == "org_1" and r["rate_class"] == "general" for r in log)
    assert sandbox.requests(since=time.time() + 60) == []
    dumped = json.dumps(log) + json.dumps(sandbox.state())
    for key in sandbox.keys:
        assert key not in dumped
    assert sandbox.state()["orgs"]["org_2"]["counts"] == {
        "contacts": 0,
        "audiences": 0,
        "flows": 3,
        "campaigns": 0,
        "imports": 0,
    }


def test_reset_clears_everything_but_keys(sandbox):
    client = sandbox.client()
    client.create_contact("Priya", "+919876543210")
    flows_before = client.list_flows()["data"]
    requests.post(f"{sandbox.root}/_sandbox/reset", timeout=5).raise_for_status()
    assert sandbox.requests() == []
    assert client.list_contacts()["total"] == 0
    assert client.list_flows()["total"] == 3  # re-seeded
    assert client.list_flows()["data"] != flows_before


def test_config_endpoint_validates(sandbox):
    answer = requests.post(
        f"{sandbox.root}/_sandbox/config",
        json={"fail_rate": 2, "fail_after_commit_mode": "sometimes", "nope": 1},
        timeout=5,
    )
    assert answer.status_code == 400
    for word in ("fail_rate", "fail_after_commit_mode", "nope"):
        assert word in answer.json()["message"]
    assert sandbox.configure()["fail_rate"] == 0.0  # nothing was applied


def test_config_endpoint_refuses_nan_and_infinity_naming_each_option(sandbox):
    # JSON as Python writes it by default: NaN and Infinity are literals its parser accepts.
    body = b'{"general_limit": NaN, "bulk_max_items": Infinity, "latency_ms": -Infinity}'
    before = sandbox.configure()
    answer = requests.post(
        f"{sandbox.root}/_sandbox/config",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert answer.status_code == 400, answer.text
    message = answer.json()["message"]
    for name in ("general_limit", "bulk_max_items", "latency_ms"):
        assert f"{name} must be a finite number" in message
    assert sandbox.configure() == before  # nothing was applied


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_integer_options_refuse_nan_and_infinity_when_the_sandbox_starts(value):
    with pytest.raises(ValueError, match="^bulk_limit must be a finite number$"):
        Options(bulk_limit=value)


# --- the IO-free parts, with a fake clock ----------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_sliding_window_admits_refuses_and_slides():
    clock = FakeClock(100.0)
    limiter = SlidingWindowLimiter(clock)
    assert limiter.hit("k", {"general": 2}, 10) is None
    clock.now = 104.0
    assert limiter.hit("k", {"general": 2}, 10) is None
    clock.now = 105.0
    assert limiter.hit("k", {"general": 2}, 10) == pytest.approx(9.0)  # until 100 leaves
    clock.now = 110.5
    # 100 has left, but the refused 105 counts too: 104 and 105 must both leave (at 115).
    assert limiter.hit("k", {"general": 2}, 10) == pytest.approx(4.5)
    clock.now = 115.5
    assert limiter.hit("k", {"general": 2}, 10) is None
    assert limiter.hit("other", {"general": 2}, 10) is None


def test_retry_after_header_rounds_up_with_minimum_one():
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.0) == "1"
    assert retry_after_header(1.2) == "2"


def test_store_pause_stops_the_campaign_clock():
    clock = FakeClock()
    store = Store(Options(campaign_seconds_per_contact=10), clock=clock)
    contact = store.create_contact("org_1", {"name": "A", "phoneNumber": "+15550001"})
    audience = store.create_audience("org_1", {"name": "Aud"})
    store.add_members("org_1", audience["id"], {"contactIds": [contact["id"]]})
    flow_id = store.list_flows("org_1", 1, 20)["data"][0]["id"]
    campaign = store.create_campaign(
        "org_1", {"name": "C", "flowId": flow_id, "audienceId": audience["id"]}
    )
    store.campaign_action("org_1", campaign["id"], "start")
    clock.now += 6
    store.campaign_action("org_1", campaign["id"], "pause")
    clock.now += 100
    assert store.get_campaign("org_1", campaign["id"])["status"] == "PAUSED"
    store.campaign_action("org_1", campaign["id"], "resume")
    clock.now += 3.9
    assert store.get_campaign("org_1", campaign["id"])["status"] == "IN_PROGRESS"
    clock.now += 0.2
    assert store.get_campaign("org_1", campaign["id"])["status"] == "COMPLETED"


def test_store_failure_carries_the_standard_body():
    store = Store(Options())
    with pytest.raises(ApiFailure) as caught:
        store.get_contact("org_1", "ct_nope")
    assert caught.value.body() == {
        "statusCode": 404,
        "message": "Contact ct_nope not found",
        "error": "Not Found",
    }
