"""Calendly adapter: one valid signed ``invitee.created``, one broken thing per test."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time

import pytest

from bridge.exceptions import ConfigError, MalformedBody, Unmappable
from bridge.sources.base import Accepted, Outcome
from bridge.sources.calendly import SOURCE
from tests.sources import harness

SECRET = "calendly-signing-key-9b1f0c7e"
INVITEE_URI = "https://api.calendly.com/scheduled_events/EVT123/invitees/INV456"

BOOKING = {
    "event": "invitee.created",
    "created_at": "2026-01-01T09:12:41.000000Z",
    "created_by": "https://api.calendly.com/users/AAAA",
    "payload": {
        "uri": INVITEE_URI,
        "email": "asha@example.com",
        "name": "Asha Rao",
        "first_name": None,
        "last_name": None,
        "status": "active",
        "timezone": "Asia/Kolkata",
        "rescheduled": False,
        "old_invitee": None,
        "new_invitee": None,
        "text_reminder_number": None,
        "questions_and_answers": [
            {"question": "Company", "answer": "Rao Exports", "position": 0},
            {"question": "Your WhatsApp number", "answer": "98765 43210", "position": 1},
        ],
        "tracking": {
            "utm_campaign": "diwali",
            "utm_source": "instagram",
            "utm_medium": None,
            "utm_content": None,
            "utm_term": None,
            "salesforce_uuid": None,
        },
        "scheduled_event": {
            "uri": "https://api.calendly.com/scheduled_events/EVT123",
            "name": "Product demo",
            "start_time": "2026-01-05T10:00:00.000000Z",
            "end_time": "2026-01-05T10:30:00.000000Z",
            "location": {"type": "zoom", "join_url": "https://zoom.us/j/1"},
        },
        "cancel_url": "https://calendly.com/cancellations/INV456",
        "reschedule_url": "https://calendly.com/reschedulings/INV456",
        "routing_form_submission": None,
        "payment": None,
        "no_show": None,
        "reconfirmation": None,
        "created_at": "2026-01-01T09:12:41.000000Z",
        "updated_at": "2026-01-01T09:12:41.000000Z",
    },
}


def booking(**changes):
    data = copy.deepcopy(BOOKING)
    data["payload"].update(changes)
    return data


ROUTE_DATA = {"name": "r", "source": "calendly", "audience_id": "aud_1", "secret": SECRET}


def route_data(**extra):
    return harness.route_data(ROUTE_DATA, **extra)


def make_route(**extra):
    return harness.make_route(ROUTE_DATA, **extra)


def signed(payload=BOOKING, *, secret=SECRET, timestamp=None, body=None, **headers):
    """The one valid builder: ``t=<ts>,v1=<hex HMAC-SHA256("<ts>.<body>")>``."""
    body = json.dumps(payload).encode() if body is None else body
    ts = str(int(time.time()) if timestamp is None else int(timestamp))
    mac = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    base = {
        "content-type": "application/json; charset=utf-8",
        "calendly-webhook-signature": f"t={ts},v1={mac}",
    }
    return harness.request(body, harness.with_headers(base, **headers))


def leads_of(req, route=None):
    return harness.leads_of(SOURCE, req, route or make_route())


def contact(lead, route=None):
    return harness.contact_of(SOURCE, lead, route or make_route())


def reason_of(req, route=None):
    return harness.reason_of(SOURCE, req, route or make_route())


# --- valid deliveries ---------------------------------------------------------------------------


def test_booking_becomes_a_lead_keyed_by_the_invitee_uri():
    (lead,) = leads_of(signed())
    assert lead.event_id == INVITEE_URI
    assert lead.name == "Asha Rao"
    assert lead.email == "asha@example.com"
    assert lead.phone == "98765 43210"  # from the custom question
    assert lead.fields["Company"] == "Rao Exports"
    assert lead.fields["Your WhatsApp number"] == "98765 43210"
    assert lead.fields["utm_source"] == "instagram"
    assert "utm_medium" not in lead.fields
    assert lead.fields["event"] == "Product demo"
    assert lead.fields["start_time"] == "2026-01-05T10:00:00.000000Z"

    c = contact(lead)
    assert c["name"] == "Asha Rao"
    assert c["phoneNumber"] == "+919876543210"
    assert c["metadata"]["email"] == "asha@example.com"
    assert c["metadata"]["utm_campaign"] == "diwali"
    assert c["metadata"]["Company"] == "Rao Exports"
    assert c["metadata"]["event"] == "Product demo"


def test_outbound_call_location_wins_and_is_a_foreign_number():
    data = booking(text_reminder_number="+91 98200 11223")
    data["payload"]["scheduled_event"]["location"] = {
        "type": "outbound_call",
        "location": "+1 650-253-0000",
    }
    (lead,) = leads_of(signed(data))
    assert lead.phone == "+1 650-253-0000"
    assert lead.fields["location_type"] == "outbound_call"
    assert contact(lead)["phoneNumber"] == "+16502530000"


def test_inbound_call_location_is_the_hosts_number_not_the_invitees():
    data = booking(questions_and_answers=[], text_reminder_number="+44 7911 123456")
    data["payload"]["scheduled_event"]["location"] = {
        "type": "inbound_call",
        "location": "+91 80 4040 4040",
    }
    (lead,) = leads_of(signed(data))
    assert contact(lead)["phoneNumber"] == "+447911123456"


def test_first_and_last_name_when_asked_separately():
    (lead,) = leads_of(signed(booking(name=None, first_name="Ravi", last_name="Kumar")))
    assert contact(lead)["name"] == "Ravi Kumar"


def test_question_colliding_with_a_builtin_field_keeps_both():
    answers = [{"question": "email", "answer": "other@example.com", "position": 0}]
    (lead,) = leads_of(signed(booking(questions_and_answers=answers)))
    assert lead.fields["email"] == "asha@example.com"
    assert lead.fields["question: email"] == "other@example.com"


def test_booking_without_phone_is_unmappable_and_accepted():
    (lead,) = leads_of(signed(booking(questions_and_answers=[])))
    assert lead.phone is None
    with pytest.raises(Unmappable):
        contact(lead)
    assert SOURCE.unmappable == "accept"


def test_reschedule_keeps_the_old_invitee():
    old = "https://api.calendly.com/scheduled_events/EVT0/invitees/INV0"
    (lead,) = leads_of(signed(booking(old_invitee=old)))
    assert lead.fields["rescheduled_from"] == old


@pytest.mark.parametrize(
    "event", ["invitee.canceled", "invitee_no_show.created", "routing_form_submission.created"]
)
def test_other_events_are_ignored(event):
    assert leads_of(signed(dict(BOOKING, event=event))) == []


def test_replies_are_never_410():
    ok = SOURCE.reply(Outcome(accepted=[Accepted("d1", "queued")]))
    dup = SOURCE.reply(Outcome(accepted=[Accepted("d1", "duplicate")]))
    skipped = SOURCE.reply(Outcome(accepted=[Accepted("d1", "skipped", "no phone number")]))
    assert (ok.status, dup.status, skipped.status) == (202, 200, 202)
    assert dup.body["duplicate"] is True


def test_token_only_route():
    route = make_route(secret=None, token="tok-1")
    req = signed(calendly_webhook_signature=None, x_bridge_token="tok-1")
    assert len(leads_of(req, route)) == 1


# --- one broken thing each ----------------------------------------------------------------------


def test_flipped_body_byte():
    req = signed()
    body = bytearray(req.body)
    body[20] ^= 0x01
    assert reason_of(harness.request(bytes(body), req.headers)) == "bad_signature"


def test_wrong_secret():
    assert reason_of(signed(secret="another-key")) == "bad_signature"


def test_missing_header():
    assert reason_of(signed(calendly_webhook_signature=None)) == "missing_header"


def test_stale_timestamp():
    assert reason_of(signed(timestamp=time.time() - 181)) == "stale_timestamp"


def test_timestamp_changed_after_signing():
    req = signed()
    header = req.headers["calendly-webhook-signature"]
    ts = header.split(",")[0][2:]
    moved = header.replace(f"t={ts}", f"t={int(ts) + 1}")
    assert reason_of(signed(calendly_webhook_signature=moved)) == "bad_signature"


def test_header_without_timestamp():
    v1 = signed().headers["calendly-webhook-signature"].split(",")[1]
    assert reason_of(signed(calendly_webhook_signature=v1)) == "bad_timestamp"


def test_header_without_v1():
    ts = signed().headers["calendly-webhook-signature"].split(",")[0]
    assert reason_of(signed(calendly_webhook_signature=ts)) == "bad_signature"


def test_wrong_token_on_a_secret_plus_token_route():
    assert reason_of(signed(x_bridge_token="nope"), make_route(token="tok-1")) == "bad_token"


def test_config_needs_a_secret():
    with pytest.raises(ConfigError):
        make_route(secret=None)


@pytest.mark.parametrize(
    "payload", [[BOOKING], {"payload": {}}, {"event": "invitee.created", "payload": []}]
)
def test_malformed_body(payload):
    with pytest.raises(MalformedBody):
        leads_of(signed(payload))


def test_odd_shapes_never_raise_other_errors():
    data = booking(
        questions_and_answers=[None, {"question": 3}, {"question": "Phone", "answer": None}],
        tracking="x",
        scheduled_event=[],
        uri=None,
    )
    (lead,) = leads_of(signed(data))
    assert lead.event_id is None


# --- through the real Flask app and Redis -------------------------------------------------------


def test_through_the_app_with_a_retry(make_client):
    client = make_client(routes=[route_data()])
    retry = signed(timestamp=time.time() + 1)  # Calendly signs each attempt afresh
    harness.post_twice(client, signed(), repeat=retry)
    assert harness.post(client, signed(secret="another-key")).status_code == 401


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload, beside the documented one, for the mutation tests to start from.
MINIMAL = {
    "event": "invitee.created",
    "payload": {
        "uri": "u1",
        "name": "A",
        "text_reminder_number": "+919876543210",
        "questions_and_answers": [{"question": "Phone", "answer": "9876543210"}],
        "scheduled_event": {"location": {"type": "outbound_call", "location": "+9198"}},
    },
}
PROPERTY_SAMPLES = [MINIMAL, BOOKING]
