"""IndiaMART Push API adapter: one valid push (token in the URL), one broken thing per test."""

from __future__ import annotations

import copy
import json

import pytest

from bridge.exceptions import ConfigError, MalformedBody, Unmappable
from bridge.sources.base import Accepted, Outcome
from bridge.sources.indiamart import SOURCE
from tests.sources import harness

TOKEN = "im-7d2f9c1a0b8e4f6a"

RECORD = {
    "UNIQUE_QUERY_ID": "2594361786",
    "QUERY_TYPE": "W",
    "QUERY_TIME": "2026-01-01 14:35:09",
    "SENDER_NAME": "Rakesh Sharma",
    "SENDER_MOBILE": "+91-9876543210",
    "SENDER_EMAIL": "Rakesh.Sharma@Example.COM",
    "SUBJECT": "Requirement for Cotton Bags",
    "SENDER_COMPANY": "Sharma Traders",
    "SENDER_ADDRESS": "12, Industrial Area, Jaipur",
    "SENDER_CITY": "Jaipur",
    "SENDER_STATE": "Rajasthan",
    "SENDER_PINCODE": "302001",
    "SENDER_COUNTRY_ISO": "IN",
    "SENDER_MOBILE_ALT": "",
    "SENDER_PHONE": "",
    "SENDER_PHONE_ALT": "",
    "SENDER_EMAIL_ALT": "",
    "QUERY_PRODUCT_NAME": "Cotton Bags",
    "QUERY_MESSAGE": (
        "I want to buy cotton bags.<br>Quantity: 500 pieces<br />Usage: Retail &amp; gifting"
    ),
    "QUERY_MCAT_NAME": "Cotton Bags",
    "CALL_DURATION": "",
    "RECEIVER_MOBILE": "",
}


def record(**changes):
    data = copy.deepcopy(RECORD)
    data.update(changes)
    return data


ROUTE_DATA = {"name": "r", "source": "indiamart", "audience_name": "IndiaMART", "token": TOKEN}


def route_data(**extra):
    return harness.route_data(ROUTE_DATA, **extra)


def make_route(**extra):
    return harness.make_route(ROUTE_DATA, **extra)


def pushed(response=None, *, token=TOKEN, body=None, envelope=True):
    """The one valid builder: IndiaMART's push, with the route token in the URL as configured."""
    response = RECORD if response is None else response
    payload = {"CODE": 200, "STATUS": "SUCCESS", "RESPONSE": response} if envelope else response
    body = json.dumps(payload).encode() if body is None else body
    query = {"token": token} if token is not None else {}
    return harness.request(body, {"content-type": "application/json"}, query)


def leads_of(req, route=None):
    return harness.leads_of(SOURCE, req, route or make_route())


def contact(lead, route=None):
    return harness.contact_of(SOURCE, lead, route or make_route())


def refusal(req, route=None):
    return harness.refusal(SOURCE, req, route or make_route())


# --- valid pushes -------------------------------------------------------------------------------


def test_push_becomes_a_lead_keyed_by_the_query_id():
    (lead,) = leads_of(pushed())
    assert lead.event_id == "2594361786"
    assert lead.name == "Rakesh Sharma"
    assert lead.phone == "+91-9876543210"
    assert lead.email == "rakesh.sharma@example.com"
    assert lead.country == "IN"
    assert lead.fields["QUERY_MESSAGE"] == (
        "I want to buy cotton bags.\nQuantity: 500 pieces\nUsage: Retail & gifting"
    )
    assert "SENDER_PHONE" not in lead.fields  # empty values are dropped

    c = contact(lead)
    assert c["name"] == "Rakesh Sharma"
    assert c["phoneNumber"] == "+919876543210"
    assert c["metadata"]["email"] == "rakesh.sharma@example.com"
    assert c["metadata"]["SENDER_CITY"] == "Jaipur"
    assert c["metadata"]["QUERY_PRODUCT_NAME"] == "Cotton Bags"


def test_foreign_buyer_uses_the_country_hint():
    data = record(SENDER_MOBILE="(415) 555-0132", SENDER_COUNTRY_ISO="us")
    (lead,) = leads_of(pushed(data))
    assert lead.country == "US"
    assert contact(lead)["phoneNumber"] == "+14155550132"


def test_alternate_number_when_the_mobile_is_unusable():
    data = record(SENDER_MOBILE="+91-12", SENDER_MOBILE_ALT="", SENDER_PHONE="0141-2345678")
    (lead,) = leads_of(pushed(data))
    assert lead.phone == "0141-2345678"
    assert contact(lead)["phoneNumber"] == "+911412345678"


def test_pns_call_never_takes_the_sellers_number():
    data = record(
        QUERY_TYPE="P",
        SENDER_NAME="",
        SENDER_EMAIL="",
        SENDER_MOBILE="",
        CALL_DURATION="45",
        RECEIVER_MOBILE="+91-9820011223",
    )
    (lead,) = leads_of(pushed(data))
    assert "RECEIVER_MOBILE" not in lead.fields
    with pytest.raises(Unmappable):
        contact(lead)
    assert SOURCE.unmappable == "accept"


def test_pull_api_array_gives_one_lead_per_record():
    second = record(UNIQUE_QUERY_ID=2594361787, SENDER_MOBILE="+91-9820011223")
    leads = leads_of(pushed([RECORD, second]))
    assert [lead.event_id for lead in leads] == ["2594361786", "2594361787"]
    assert [contact(lead)["phoneNumber"] for lead in leads] == ["+919876543210", "+919820011223"]


def test_bare_record_without_envelope():
    (lead,) = leads_of(pushed(envelope=False))
    assert lead.event_id == "2594361786"


def test_empty_response_is_ignored():
    assert leads_of(pushed([])) == []


def test_replies_are_200():
    ok = SOURCE.reply(Outcome(accepted=[Accepted("d1", "queued")]))
    dup = SOURCE.reply(Outcome(accepted=[Accepted("d1", "duplicate")]))
    assert (ok.status, dup.status) == (200, 200)
    assert ok.body["deliveryId"] == "d1"
    assert dup.body["duplicate"] is True
    assert ok.content_type == "application/json"


def test_storage_outage_stays_non_2xx():
    from bridge.exceptions import StorageUnavailable

    answer = SOURCE.reply(Outcome(error=StorageUnavailable("redis down")))
    assert answer.status == 503


# --- authentication (the token in the URL is all IndiaMART can carry) -----------------------------


def test_missing_token():
    assert refusal(pushed(token=None)).reason == "missing_token"


def test_wrong_token():
    error = refusal(pushed(token="guess"))
    assert error.reason == "bad_token"
    assert TOKEN not in error.message


def test_config_requires_a_token():
    with pytest.raises(ConfigError) as info:
        make_route(token=None)
    assert any("token: required for indiamart" in p for p in info.value.problems)


# --- bodies -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"[1]", b'{"CODE": 200}', b'{"RESPONSE": "x"}', b'{"RESPONSE": [1]}', b"{broken"],
)
def test_malformed_body(body):
    with pytest.raises(MalformedBody):
        leads_of(pushed(body=body))


def test_odd_values_never_raise_other_errors():
    data = record(
        UNIQUE_QUERY_ID=True, SENDER_COUNTRY_ISO=91, SENDER_NAME=["x"], SENDER_MOBILE=9876543210
    )
    (lead,) = leads_of(pushed(data))
    assert lead.event_id is None
    assert contact(lead)["phoneNumber"] == "+919876543210"


# --- through the real Flask app and Redis -------------------------------------------------------


def test_through_the_app_with_a_repeat(make_client):
    client = make_client(routes=[route_data()])
    req = pushed()  # posted to /hooks/r?token=...
    resp, _ = harness.post_twice(client, req, status=200)
    assert resp.get_json()["status"] == "queued"
    assert harness.post(client, req, url="/hooks/r").status_code == 401


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid push, beside the documented record in its envelope, for the mutation tests.
MINIMAL = {"CODE": 200, "RESPONSE": {"UNIQUE_QUERY_ID": "1", "SENDER_MOBILE": "+91-9876543210"}}
PROPERTY_SAMPLES = [MINIMAL, {"CODE": 200, "STATUS": "SUCCESS", "RESPONSE": RECORD}]
