"""Standard Webhooks adapter: one valid signed message, then one broken thing per test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest

from bridge.exceptions import ConfigError, MalformedBody, SignatureInvalid
from bridge.sources import get_source
from bridge.sources.standard_webhooks import SOURCE, sign, signing_key
from tests.sources import harness

KEY = b"bridge-test-signing-key-32-bytes"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-signing-key-of-32-bytes!").decode()
MSG_ID = "msg_2rT7bJ9xq1LdVh0kS4mZ"

LEAD = {
    "type": "lead.created",
    "timestamp": "2026-01-01T00:00:00Z",
    "data": {
        "full_name": "Asha Rao",
        "phone": "098765 43210",
        "email": "asha@example.com",
        "utm": {"source": "google", "campaign": "diwali"},
        "plan": "pro",
    },
}


ROUTE_DATA = {"name": "r", "source": "standard_webhooks", "audience_id": "aud_1", "secret": SECRET}


def route_data(**extra):
    return harness.route_data(ROUTE_DATA, **extra)


def make_route(**extra):
    return harness.make_route(ROUTE_DATA, **extra)


def signed(
    payload=LEAD, *, secret=SECRET, msg_id=MSG_ID, timestamp=None, body=None, prefix="webhook-"
):
    """The one valid builder: a request signed exactly as the spec says."""
    body = json.dumps(payload).encode() if body is None else body
    ts = str(int(time.time()) if timestamp is None else int(timestamp))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    headers = {
        "content-type": "application/json",
        f"{prefix}id": msg_id,
        f"{prefix}timestamp": ts,
        f"{prefix}signature": "v1," + base64.b64encode(mac).decode(),
    }
    return harness.request(body, headers)


def with_headers(req, **changes):
    return harness.request(req.body, harness.with_headers(req.headers, **changes))


def leads_of(req, route=None):
    return harness.leads_of(SOURCE, req, route or make_route())


def contact(lead, route=None):
    return harness.contact_of(SOURCE, lead, route or make_route())


def refusal(req, route=None):
    return harness.refusal(SOURCE, req, route or make_route())


def reason_of(req, route=None):
    return harness.reason_of(SOURCE, req, route or make_route())


# --- the spec's own example --------------------------------------------------------------------


def test_sign_matches_the_spec_reference_vector():
    # From the standard-webhooks reference library's tests.
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    mac = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", b'{"test": 2432232314}')
    assert base64.b64encode(mac).decode() == "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_reference_vector_verifies_at_its_own_time():
    route = make_route(secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    req = harness.request(
        b'{"test": 2432232314}',
        {
            "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "webhook-timestamp": "1614265330",
            "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        },
    )
    SOURCE.check_signature(req, route.secret, now=1614265330 + 10)
    with pytest.raises(SignatureInvalid) as info:
        SOURCE.check_signature(req, route.secret, now=1614265330 + 301)
    assert info.value.reason == "stale_timestamp"


# --- valid requests -----------------------------------------------------------------------------


def test_valid_message_becomes_one_lead_with_the_message_id():
    (lead,) = leads_of(signed())
    assert lead.event_id == MSG_ID
    assert lead.fields == LEAD["data"]
    c = contact(lead)
    assert c["name"] == "Asha Rao"
    assert c["phoneNumber"] == "+919876543210"
    assert c["metadata"]["email"] == "asha@example.com"
    assert c["metadata"]["utm.source"] == "google"
    assert c["metadata"]["utm.campaign"] == "diwali"
    assert c["metadata"]["plan"] == "pro"


def test_secret_without_prefix_or_padding_is_accepted():
    unpadded = base64.b64encode(KEY).decode().rstrip("=")
    leads_of(signed(), make_route(secret=unpadded))


def test_any_valid_signature_in_a_rotation_list_is_enough():
    req = signed()
    good = req.headers["webhook-signature"]
    wrong = signed(secret=OTHER_SECRET).headers["webhook-signature"]
    listed = f"v1a,bm90LWFuLWVkMjU1MTk= {wrong} v2,{good[3:]} {good}"
    leads_of(with_headers(req, webhook_signature=listed))


def test_svix_branded_headers_are_accepted():
    (lead,) = leads_of(signed(prefix="svix-"))
    assert lead.event_id == MSG_ID


def test_foreign_numbers_and_first_last_names():
    payload = {
        "type": "contact.created",
        "data": {"first_name": "John", "last_name": "Smith", "mobile": "+44 7911 123456"},
    }
    (lead,) = leads_of(signed(payload))
    c = contact(lead)
    assert c["name"] == "John Smith"
    assert c["phoneNumber"] == "+447911123456"


def test_body_without_envelope_is_the_lead():
    payload = {"name": "Ravi", "phone": "+91-98200-11223"}
    (lead,) = leads_of(signed(payload))
    assert lead.fields == payload
    assert contact(lead)["phoneNumber"] == "+919820011223"


def test_data_array_gives_one_lead_per_record_with_its_own_id():
    payload = {"type": "lead.batch", "data": [{"phone": "9876543210"}, {"phone": "9820011223"}]}
    leads = leads_of(signed(payload))
    assert [lead.event_id for lead in leads] == [f"{MSG_ID}:0", f"{MSG_ID}:1"]
    assert [contact(lead)["phoneNumber"] for lead in leads] == ["+919876543210", "+919820011223"]


def test_event_types_option_ignores_other_types():
    route = make_route(event_types=["lead.created"])
    assert leads_of(signed({"type": "invoice.paid", "data": {"x": 1}}), route) == []
    assert len(leads_of(signed(), route)) == 1


def test_missing_phone_is_unmappable_and_accepted():
    from bridge.exceptions import Unmappable

    (lead,) = leads_of(signed({"type": "lead.created", "data": {"name": "No Phone"}}))
    with pytest.raises(Unmappable):
        contact(lead)
    assert SOURCE.unmappable == "accept"


def test_token_only_route_and_secret_plus_token_route():
    plain = harness.request(
        json.dumps(LEAD).encode(),
        {"content-type": "application/json", "x-bridge-token": "tok-123"},
    )
    route = make_route(secret=None, token="tok-123")
    (lead,) = leads_of(plain, route)
    assert lead.event_id is None  # body hash

    both = make_route(token="tok-123")
    leads_of(with_headers(signed(), x_bridge_token="tok-123"), both)
    assert reason_of(signed(), both) == "missing_token"


# --- one broken thing each ----------------------------------------------------------------------


def test_flipped_body_byte():
    req = signed()
    body = bytearray(req.body)
    body[10] ^= 0x01
    assert reason_of(harness.request(bytes(body), req.headers)) == "bad_signature"


def test_wrong_secret():
    assert reason_of(signed(secret=OTHER_SECRET)) == "bad_signature"


def test_changed_message_id():
    assert reason_of(with_headers(signed(), webhook_id="msg_other")) == "bad_signature"


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header(header):
    error = refusal(with_headers(signed(), **{header.replace("-", "_"): None}))
    assert error.reason == "missing_header"
    assert header in error.message


def test_no_signature_headers_at_all():
    assert reason_of(harness.request(b"{}", {})) == "missing_header"


def test_stale_timestamp():
    assert reason_of(signed(timestamp=time.time() - 301)) == "stale_timestamp"


def test_future_timestamp():
    assert reason_of(signed(timestamp=time.time() + 301)) == "stale_timestamp"


def test_unreadable_timestamp():
    assert reason_of(with_headers(signed(), webhook_timestamp="yesterday")) == "bad_timestamp"


def test_only_ed25519_signatures():
    error = refusal(with_headers(signed(), webhook_signature="v1a,bm90LWFuLWVkMjU1MTk="))
    assert error.reason == "bad_signature"
    assert "v1a" in error.message


def test_garbage_signature_value():
    assert reason_of(with_headers(signed(), webhook_signature="v1,***")) == "bad_signature"


def test_wrong_token_on_a_secret_plus_token_route():
    req = with_headers(signed(), x_bridge_token="nope")
    assert reason_of(req, make_route(token="tok-123")) == "bad_token"


def test_no_secret_in_error_messages():
    for req in (signed(secret=OTHER_SECRET), signed(timestamp=0)):
        error = refusal(req)
        assert SECRET not in error.message
        assert base64.b64encode(KEY).decode() not in error.message


# --- configuration and bodies -------------------------------------------------------------------


def test_config_requires_a_secret_or_token():
    with pytest.raises(ConfigError) as info:
        make_route(secret=None)
    assert any("secret" in p for p in info.value.problems)


def test_config_rejects_a_secret_that_is_not_base64():
    with pytest.raises(ConfigError) as info:
        make_route(secret="whsec_not base64!")
    assert any("whsec_" in p for p in info.value.problems)
    assert get_source("standard_webhooks") is SOURCE


@pytest.mark.parametrize(
    "payload",
    [[1, 2], "text", {"type": "lead.created", "data": "x"}, {"type": "t", "data": [1]}],
)
def test_malformed_body(payload):
    with pytest.raises(MalformedBody):
        leads_of(signed(payload))


def test_invalid_json():
    with pytest.raises(MalformedBody):
        leads_of(signed(body=b'{"type": '))


# --- through the real Flask app and Redis -------------------------------------------------------


def test_through_the_app_with_a_redelivery(make_client):
    client = make_client(routes=[route_data()])
    # A retry is signed afresh (new timestamp) but keeps its webhook-id.
    retry = signed(timestamp=time.time() + 1)
    resp, again = harness.post_twice(client, signed(), repeat=retry)
    assert resp.get_json()["status"] == "queued"
    assert again.get_json()["deliveryId"] == resp.get_json()["deliveryId"]


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload, beside the documented one, for the mutation tests to start from.
MINIMAL = {"type": "lead.created", "data": {"phone": "+919876543210"}}
PROPERTY_SAMPLES = [MINIMAL, LEAD]
#: The signing secret in the ``whsec_`` form this source takes.
PROPERTY_SECRET = SECRET
#: Route options that reach the adapter's other branches.
PROPERTY_OPTIONS = {"event_types": ["lead.created"]}
