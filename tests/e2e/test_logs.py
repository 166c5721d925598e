"""The logs of a whole flow (gunicorn web, worker processes, the sandbox) with secrets
configured: one JSON object per line, each tied to its request or delivery, and not one secret
or signature anywhere in the output."""

import json
import time
from urllib.parse import quote, quote_plus

import pytest
import requests

from bridge.storage import free_port
from tests.bridge_fixtures import route_dict
from tests.sources.test_typeform import RESPONSE, signed

pytestmark = pytest.mark.e2e

TYPEFORM_SECRET = "tf-whsec-e2e-7c1d9f3a5b"
FORM_TOKEN = "form-token-3e8a1c7f9d"
ADMIN_TOKEN = "admin-token-5b2d8e4f1a"
ALERT_SECRET = "alert-path-secret-9f8e7d6c"
REQUEST_ID = "req-2f6c1a9e-7b3d-4c8e"


def test_every_line_is_json_tied_to_its_work_and_free_of_secrets(make_stack, sandbox):
    alert_url = f"http://127.0.0.1:{free_port()}/hooks/{ALERT_SECRET}"  # nothing listens
    stack = make_stack(
        {
            "oliai": {"rate_window_seconds": 2, "general_per_minute": 1000, "timeout_seconds": 3},
            "bridge": {"admin_token": ADMIN_TOKEN},
            "delivery": {
                "retry_base_seconds": 0.2,
                "retry_max_seconds": 1,
                "max_attempts": 3,
                "alert_webhook_url": alert_url,
            },
            "routes": [
                route_dict(name="typeform", source="typeform", secret=TYPEFORM_SECRET),
                route_dict(name="form", token=FORM_TOKEN, audience_name="Form leads"),
                route_dict(name="agency", api_key=sandbox.revoked_key, audience_name="Agency"),
            ],
        },
        env={"LOG_LEVEL": "DEBUG"},  # the most the bridge ever writes
    )
    good = signed(RESPONSE, secret=TYPEFORM_SECRET)
    forged = signed(RESPONSE, secret="not-the-secret-at-all")
    signatures = [good.headers["typeform-signature"], forged.headers["typeform-signature"]]

    r = requests.post(
        stack.hook("typeform"),
        data=good.body,
        headers={**good.headers, "X-Request-Id": REQUEST_ID},
        timeout=5,
    )
    assert r.status_code == 202, r.text
    assert r.headers["X-Request-Id"] == REQUEST_ID
    delivered_id = r.json()["deliveryId"]
    # Delivered before the next lead of its key arrives, so it goes out alone (leads that queue
    # up together share their OliAI calls, which then belong to no single delivery).
    stack.wait_for(delivered_id)
    refused = requests.post(stack.hook("typeform"), data=forged.body, headers=forged.headers)
    assert refused.status_code == 401
    assert refused.headers["X-Request-Id"] != REQUEST_ID
    form = requests.post(
        f"{stack.hook('form')}?token={FORM_TOKEN}",
        data={"name": "Ravi Kumar", "mobile": "0091 98765 43211"},
        timeout=5,
    )
    assert form.status_code == 202
    agency = requests.post(
        stack.hook("agency"), json={"name": "A", "phone": "9876543212"}, timeout=5
    )
    assert agency.status_code == 202
    stack.wait_for(delivered_id)
    stack.wait_for(form.json()["deliveryId"])
    failed = stack.wait_for(agency.json()["deliveryId"], statuses=("failed",))
    assert failed["reasonCode"] == "unauthorized"
    admin = requests.get(
        f"{stack.url}/admin/failed", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert admin.status_code == 200
    time.sleep(0.5)  # the failed delivery's alert attempt and the last lines

    text = stack.log_text()
    secrets = [
        sandbox.keys[0],
        sandbox.revoked_key,
        TYPEFORM_SECRET,
        FORM_TOKEN,
        ADMIN_TOKEN,
        ALERT_SECRET,
        *signatures,
    ]
    for secret in secrets:
        for form_ in {secret, quote(secret, safe=""), quote_plus(secret)}:
            assert form_ not in text, f"a secret ({secret[:4]}...) is in the logs"
    # the signature without its "sha256=" prefix, as a careless line would show it
    assert not any(s.split("=", 1)[1] in text for s in signatures)

    records = []
    for line in filter(None, text.splitlines()):  # (log_text joins files with a blank)
        record = json.loads(line)  # every line, from every process, is one JSON object
        assert {"time", "level", "event", "message"} <= set(record), line
        records.append(record)
    events = {r["event"] for r in records}
    assert {"http.request", "webhook.queued", "oliai.call", "delivery.delivered"} <= events

    [access] = [r for r in records if r.get("request_id") == REQUEST_ID and "status" in r]
    assert access["event"] == "http.request"
    assert (access["path"], access["status"], access["route"]) == (
        "/hooks/typeform",
        202,
        "typeform",
    )
    [accepted] = [r for r in records if r["event"] == "webhook.queued" and r["route"] == "typeform"]
    assert accepted["request_id"] == REQUEST_ID
    assert accepted["delivery_id"] == delivered_id

    calls = [
        r for r in records if r["event"] == "oliai.call" and r.get("delivery_id") == delivered_id
    ]
    assert calls, "no OliAI call tied to the delivery"
    for call in calls:
        assert call["route"] == "typeform"
        assert call["method"] in ("GET", "POST", "PATCH")
        assert call["path"].startswith("/") and "?" not in call["path"]
        assert isinstance(call["status"], int) and isinstance(call["duration_ms"], float)
    assert ("POST", "/contacts", 201) in {(c["method"], c["path"], c["status"]) for c in calls}
    [done] = [
        r
        for r in records
        if r["event"] == "delivery.delivered" and r.get("delivery_id") == delivered_id
    ]
    assert done["latency_seconds"] >= 0
    revoked = [r for r in records if r["event"] == "oliai.call" and r.get("route") == "agency"]
    assert revoked and all(r["status"] == 401 for r in revoked)
    assert any(r["event"] == "delivery.failed" and r["route"] == "agency" for r in records)
