"""Freshsales adapter: Basic auth / token header, JSON, XML and form bodies."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

import pytest

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody, Unmappable
from bridge.sources.freshsales import SOURCE
from tests.sources import harness

BASIC = "freshsales:hook-pass-9"
ROUTE_DATA = {"name": "fs", "source": "freshsales", "audience_id": "aud_1", "basic_auth": BASIC}


def make_route(**keys):
    return harness.make_route(ROUTE_DATA, **keys)


def delivered(contact, *, encoding: str = "json", credentials: str | None = BASIC, headers=None):
    """A "Trigger Webhook" request with the advanced body and the webhook's username/password."""
    h: dict[str, str] = {}
    if encoding == "json":
        body = json.dumps({"contact": contact}).encode()
        h["content-type"] = "application/json"
    elif encoding == "xml":
        inner = "".join(f"<{k}>{v}</{k}>" for k, v in contact.items())
        body = f"<contact>{inner}</contact>".encode()
        h["content-type"] = "application/xml"
    else:
        body = urlencode({f"contact[{k}]": v for k, v in contact.items()}).encode()
        h["content-type"] = "application/x-www-form-urlencoded"
    if credentials is not None:
        h["authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    h.update(headers or {})
    return harness.request(body, h, route="fs")


def leads_of(req: InboundRequest, route=None):
    return harness.leads_of(SOURCE, req, route or make_route())


def contact_of(lead: Lead, route=None):
    return harness.contact_of(SOURCE, lead, route or make_route())


def reason_of(req: InboundRequest, route=None):
    return harness.reason_of(SOURCE, req, route or make_route())


CONTACT = {
    "id": "16003127891",
    "first_name": "Asha",
    "last_name": "Rao",
    "mobile_number": "+91 98765 43210",
    "work_number": "022 2345 6789",
    "email": "asha@example.in",
    "lead_source": "Web Form",
    "utm_campaign": "diwali-2025",
    "language": "",
}


# --- verification --------------------------------------------------------------------------------


def test_basic_credentials_are_accepted():
    SOURCE.verify(delivered(CONTACT), make_route())


def test_missing_credentials_are_rejected():
    assert reason_of(delivered(CONTACT, credentials=None)) == "missing_header"


def test_wrong_credentials_are_rejected():
    assert reason_of(delivered(CONTACT, credentials="freshsales:guess")) == "bad_token"


def test_token_header_route():
    route = make_route(basic_auth=None, token="fs-token-3")
    SOURCE.verify(
        delivered(CONTACT, credentials=None, headers={"x-bridge-token": "fs-token-3"}), route
    )
    wrong = delivered(CONTACT, credentials=None, headers={"x-bridge-token": "x"})
    assert reason_of(wrong, route) == "bad_token"


# --- normalization -------------------------------------------------------------------------------


def test_advanced_json_body():
    [lead] = leads_of(delivered(CONTACT))
    assert lead.fields["utm_campaign"] == "diwali-2025"
    assert "language" not in lead.fields  # empty placeholders are dropped
    assert lead.event_id is None  # no event id from Freshsales: the body hash de-duplicates
    contact = contact_of(lead)
    assert contact["name"] == "Asha Rao"
    assert contact["phoneNumber"] == "+919876543210"  # mobile before work number
    meta = contact["metadata"]
    assert meta["email"] == "asha@example.in"
    assert meta["lead_source"] == "Web Form"
    assert meta["utm_campaign"] == "diwali-2025"
    assert meta["work_number"] == "022 2345 6789"


def test_xml_body_with_trunk_zero_number():
    [lead] = leads_of(
        delivered({"first_name": "Ravi", "mobile_number": "098200 11223"}, encoding="xml")
    )
    assert lead.fields == {"first_name": "Ravi", "mobile_number": "098200 11223"}
    assert contact_of(lead)["phoneNumber"] == "+919820011223"


def test_form_body_with_bracketed_keys_and_country_hint():
    fields = {"first_name": "John", "work_number": "(415) 555-0132", "country_code": "us"}
    [lead] = leads_of(delivered(fields, encoding="form"))
    assert lead.fields == fields
    assert lead.country == "US"
    assert contact_of(lead)["phoneNumber"] == "+14155550132"


def test_lead_record_and_extra_top_level_keys():
    body = json.dumps({"lead": {"mobile_number": "+65 8123 4567"}, "campaign": "expo"}).encode()
    req = harness.request(
        body,
        {
            "content-type": "application/json",
            "authorization": "Basic " + base64.b64encode(BASIC.encode()).decode(),
        },
        route="fs",
    )
    [lead] = leads_of(req)
    assert lead.fields == {"mobile_number": "+65 8123 4567", "campaign": "expo"}
    assert contact_of(lead)["phoneNumber"] == "+6581234567"


def test_contact_without_phone_is_unmappable():
    [lead] = leads_of(delivered({"first_name": "No", "email": "no@x.in"}))
    with pytest.raises(Unmappable):
        contact_of(lead)
    assert SOURCE.unmappable == "reject"


@pytest.mark.parametrize("body", [b'"x"', b"[1, 2]", b"{oops"])
def test_malformed_bodies(body):
    req = delivered(CONTACT)
    with pytest.raises(MalformedBody):
        leads_of(harness.request(body, req.headers, route="fs"))


# --- through the real Flask app and Redis ---------------------------------------------------------


def test_through_the_app_and_redelivery(make_client):
    route = {"name": "fs", "source": "freshsales", "basic_auth": BASIC, "audience_name": "FS"}
    client = make_client(routes=[route])
    resp, _ = harness.post_twice(client, delivered(CONTACT))
    assert resp.get_json()["status"] == "queued"


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload, beside the documented one, for the mutation tests to start from.
MINIMAL = {"contact": {"first_name": "A", "mobile_number": "9876543210"}}
PROPERTY_SAMPLES = [MINIMAL, CONTACT]
