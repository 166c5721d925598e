"""Webflow adapter: one valid signed ``form_submission``, one broken thing per negative test."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import Route
from bridge.exceptions import MalformedBody, SignatureInvalid, StorageUnavailable, Unmappable
from bridge.sources.base import Accepted, Outcome
from bridge.sources.webflow import SOURCE
from tests.sources import harness

SECRET = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
TOKEN = "wf-dashboard-token-11aa"

SUBMISSION = {
    "triggerType": "form_submission",
    "payload": {
        "name": "Contact Us",
        "siteId": "65427cf400e02b306eaa049c",
        "formId": "65429eadebe8a9f3a30f62d0",
        "formElementId": "4e038d2c-6a1e-4953-7be9-a59a2b453177",
        "pageId": "65427cf400e02b306eaa04a0",
        "publishedPath": "/contact",
        "submittedAt": "2026-01-01T09:12:41.117Z",
        "id": "6321ca84df3949bfc6752327",
        "data": {
            "First Name": "Sara",
            "Last Name": "Khan",
            "Email": "sara@example.com",
            "Phone": 919876543210,
            "Company": "Khan & Co",
            "utm_source": "newsletter",
        },
        "schema": [
            {
                "fieldName": "First Name",
                "fieldType": "FormTextInput",
                "fieldElementId": "3e9a6ed8-6b7e-ea2a-1a4e-1d1f0e7a2b11",
            },
            {
                "fieldName": "Phone",
                "fieldType": "FormTextInput",
                "fieldElementId": "3e9a6ed8-6b7e-ea2a-1a4e-1d1f0e7a2b12",
            },
        ],
    },
}


def submission(**data_changes):
    payload = copy.deepcopy(SUBMISSION)
    payload["payload"]["data"].update(data_changes)
    return payload


ROUTE_DATA = {"name": "r", "source": "webflow", "audience_name": "Demo", "secret": SECRET}


def make_route(**extra) -> Route:
    return harness.make_route(ROUTE_DATA, **extra)


ROUTE = make_route()


def signed(payload=SUBMISSION, *, secret=SECRET, body=None, timestamp=None, **headers):
    """The one valid builder: a delivery signed as Webflow signs it (``"<ms>:<body>"``)."""
    body = json.dumps(payload).encode() if body is None else body
    timestamp = str(int(time.time() * 1000)) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    base = {
        "content-type": "application/json",
        "x-webflow-timestamp": timestamp,
        "x-webflow-signature": mac,
    }
    return harness.request(body, harness.with_headers(base, **headers))


def leads_of(req, route=ROUTE):
    return harness.leads_of(SOURCE, req, route)


def contact_of(lead, route=ROUTE):
    return harness.contact_of(SOURCE, lead, route)


def refusal(req, route=ROUTE):
    return harness.refusal(SOURCE, req, route)


def reason_of(req, route=ROUTE):
    return harness.reason_of(SOURCE, req, route)


# --- normalization and mapping -------------------------------------------------------------


def test_form_data_are_the_fields_and_the_number_phone_is_coerced():
    [lead] = leads_of(signed())
    assert lead.fields == {**SUBMISSION["payload"]["data"], "form_name": "Contact Us"}
    assert lead.event_id == "6321ca84df3949bfc6752327"
    contact = contact_of(lead)
    assert contact["name"] == "Sara Khan"
    assert contact["phoneNumber"] == "+919876543210"  # a JSON number, country code, no +
    assert contact["metadata"]["email"] == "sara@example.com"
    assert contact["metadata"]["utm_source"] == "newsletter"
    assert contact["metadata"]["form_name"] == "Contact Us"


def test_indian_number_with_spaces_and_a_full_name():
    payload = copy.deepcopy(SUBMISSION)
    payload["payload"]["data"] = {"Name": "Imran Shaikh", "Mobile Number": "+91 98765 43210"}
    [lead] = leads_of(signed(payload))
    contact = contact_of(lead)
    assert (contact["name"], contact["phoneNumber"]) == ("Imran Shaikh", "+919876543210")


def test_form_field_called_form_name_wins():
    [lead] = leads_of(signed(submission(form_name="Brochure")))
    assert lead.fields["form_name"] == "Brochure"


def test_legacy_v1_shape():
    legacy = {
        "name": "Contact Us",
        "site": "62749158efef318abc8d5a0f",
        "data": {"name": "Ali", "phone": "9876543210"},
        "d": "2022-09-14T12:35:16.117Z",
        "_id": "6321ca84df3949bfc6752327",
    }
    [lead] = leads_of(signed(legacy))
    assert lead.event_id == "6321ca84df3949bfc6752327"
    assert contact_of(lead)["phoneNumber"] == "+919876543210"


def test_missing_phone_is_unmappable_and_accepted():
    payload = copy.deepcopy(SUBMISSION)
    del payload["payload"]["data"]["Phone"]
    [lead] = leads_of(signed(payload))
    with pytest.raises(Unmappable):
        contact_of(lead)
    assert SOURCE.unmappable == "accept"


def test_other_triggers_are_not_leads():
    assert leads_of(signed({"triggerType": "site_publish", "payload": {"domains": []}})) == []


# --- replies: exactly 200 for anything accepted --------------------------------------------


@pytest.mark.parametrize(
    "accepted",
    [
        [Accepted("d1", "queued")],
        [Accepted("d1", "duplicate")],
        [Accepted("d1", "skipped", "no phone number")],
        [],
    ],
)
def test_every_accepted_outcome_is_answered_200(accepted):
    reply = SOURCE.reply(Outcome(accepted=accepted))
    assert reply.status == 200
    assert reply.content_type == "application/json"
    body = json.loads(reply.body_bytes())
    if accepted:
        assert body["deliveryId"] == "d1"
        assert body["status"] == accepted[0].status
    else:
        assert body["status"] == "ignored"


def test_duplicate_reply_says_so():
    reply = SOURCE.reply(Outcome(accepted=[Accepted("d1", "duplicate")]))
    assert json.loads(reply.body_bytes())["duplicate"] is True


def test_refusals_keep_their_status():
    assert SOURCE.reply(Outcome(error=SignatureInvalid("bad"))).status == 401
    reply = SOURCE.reply(Outcome(error=StorageUnavailable("redis down")))
    assert reply.status == 503  # nothing stored: Webflow must retry
    assert reply.headers["Retry-After"] == "30"


# --- malformed bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([SUBMISSION], "expected a Webflow webhook object"),
        ({"triggerType": "form_submission"}, "payload is missing"),
        ({"triggerType": "form_submission", "payload": {"data": []}}, "payload.data"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(payload, message):
    with pytest.raises(MalformedBody, match=message):
        leads_of(signed(payload))


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=6),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(["triggerType", "payload", "data", "name", "id", "_id"]),
                c,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
)
def test_any_json_either_normalizes_or_is_malformed(payload):
    req = harness.request(b"{}", {})
    for candidate in (payload, {"triggerType": "form_submission", "payload": payload}):
        try:
            leads = SOURCE.normalize(req, candidate, ROUTE)
        except MalformedBody:
            continue
        assert isinstance(leads, list)


# --- signature ---------------------------------------------------------------------------------


def test_valid_signature_passes():
    SOURCE.verify(signed(), ROUTE)


def test_flipped_body_byte_is_a_bad_signature():
    req = signed()
    body = bytearray(req.body)
    body[5] ^= 0x01
    tampered = harness.request(bytes(body), req.headers)
    assert reason_of(tampered) == "bad_signature"


def test_missing_signature_header():
    assert reason_of(signed(x_webflow_signature=None)) == "missing_header"


def test_missing_timestamp_header():
    assert reason_of(signed(x_webflow_timestamp=None)) == "missing_header"


def test_wrong_secret():
    error = refusal(signed(secret="0" * 32))
    assert error.reason == "bad_signature"
    assert SECRET not in error.message


def test_stale_timestamp():
    old = str(int((time.time() - 301) * 1000))
    assert reason_of(signed(timestamp=old)) == "stale_timestamp"


def test_timestamp_from_the_future():
    ahead = str(int((time.time() + 600) * 1000))
    assert reason_of(signed(timestamp=ahead)) == "stale_timestamp"


def test_unreadable_timestamp():
    assert reason_of(signed(timestamp="yesterday")) == "bad_timestamp"


def test_timestamp_swapped_after_signing():
    req = signed()
    later = str(int(req.headers["x-webflow-timestamp"]) + 1000)
    moved = harness.request(req.body, harness.with_headers(req.headers, x_webflow_timestamp=later))
    assert reason_of(moved) == "bad_signature"


def test_route_without_secret_or_token_refuses_everything():
    bare = Route(name="r", source="webflow", audience_name="Demo")
    assert reason_of(signed(), bare) == "no_secret"


def test_dashboard_webhook_with_url_token():
    route = make_route(secret=None, token=TOKEN)
    unsigned = harness.request(
        json.dumps(SUBMISSION).encode(), {"content-type": "application/json"}, {"token": TOKEN}
    )
    SOURCE.verify(unsigned, route)
    assert reason_of(harness.request(unsigned.body, {}), route) == "missing_token"


# --- through the real Flask app and Redis -------------------------------------------------------


def test_through_the_app_always_200(make_client):
    client = make_client(routes=[ROUTE_DATA])
    resp, _ = harness.post_twice(client, signed(), status=200)
    assert resp.get_json()["status"] == "queued"
    payload = copy.deepcopy(SUBMISSION)
    payload["payload"]["id"] = "6321ca84df3949bfc6750000"
    del payload["payload"]["data"]["Phone"]
    skipped = harness.post(client, signed(payload))
    assert skipped.status_code == 200
    assert skipped.get_json()["status"] == "skipped"


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload, beside the documented one, for the mutation tests to start from.
MINIMAL = {
    "triggerType": "form_submission",
    "payload": {"id": "w1", "name": "F", "data": {"Phone": 15550000000}},
}
PROPERTY_SAMPLES = [MINIMAL, SUBMISSION]
