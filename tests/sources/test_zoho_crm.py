"""Zoho CRM adapter: token in URL / header / body, form, JSON and XML bodies."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody, Unmappable
from bridge.sources.zoho_crm import SOURCE
from tests import strategies as S
from tests.sources import harness

TOKEN = "zoho-route-token-41d9"
ROUTE_DATA = {"name": "zoho", "source": "zoho_crm", "audience_id": "aud_1", "token": TOKEN}


def make_route(**keys):
    return harness.make_route(ROUTE_DATA, **keys)


def delivered(
    fields, *, body_type: str = "form", token_in: str = "body", token: str = TOKEN
) -> InboundRequest:
    """A workflow webhook as Zoho sends it, carrying the route token where the admin put it."""
    fields = dict(fields)
    headers: dict[str, str] = {}
    query: dict[str, str] = {}
    if token_in == "body":
        fields["token"] = token
    elif token_in == "query":
        query["token"] = token
    elif token_in == "header":
        headers["x-bridge-token"] = token
    if body_type == "form":
        body = urlencode(fields).encode()
        headers["content-type"] = "application/x-www-form-urlencoded;charset=UTF-8"
    elif body_type == "json":
        body = json.dumps(fields).encode()
        headers["content-type"] = "application/json"
    else:
        inner = "".join(f"<{k}>{v}</{k}>" for k, v in fields.items())
        body = f'<?xml version="1.0" encoding="UTF-8"?><Leads><Lead>{inner}</Lead></Leads>'.encode()
        headers["content-type"] = "application/xml"
    return harness.request(body, headers, query, route="zoho")


def leads_of(req: InboundRequest, route=None):
    return harness.leads_of(SOURCE, req, route or make_route())


def contact_of(lead: Lead, route=None):
    return harness.contact_of(SOURCE, lead, route or make_route())


def refusal(req: InboundRequest, route=None):
    return harness.refusal(SOURCE, req, route or make_route())


LEAD = {
    "id": "4150868000000471013",
    "First_Name": "Asha",
    "Last_Name": "Rao",
    "Phone": "+91 22 2345 6789",
    "Mobile": "98765 43210",
    "Email": "asha@example.in",
    "Lead_Source": "Facebook Ads",
    "UTM_Campaign": "diwali-2025",
}


# --- verification --------------------------------------------------------------------------------


@pytest.mark.parametrize("token_in", ["body", "query", "header"])
@pytest.mark.parametrize("body_type", ["form", "json"])
def test_token_is_accepted_where_zoho_can_put_it(token_in, body_type):
    SOURCE.verify(delivered(LEAD, body_type=body_type, token_in=token_in), make_route())


def test_missing_token_is_rejected():
    assert refusal(delivered(LEAD, token_in="nowhere")).reason == "missing_token"


@pytest.mark.parametrize("token_in", ["body", "query", "header"])
def test_wrong_token_is_rejected(token_in):
    error = refusal(delivered(LEAD, token_in=token_in, token="guess"))
    assert error.reason == "bad_token"
    assert TOKEN not in error.message


def test_unreadable_body_without_token_is_missing_token():
    req = harness.request(b"\xff\xfe", {"content-type": "application/json"}, route="zoho")
    assert refusal(req).reason == "missing_token"


def test_basic_auth_is_checked_with_a_body_token():
    route = make_route(basic_auth="zoho:pass-77")
    assert refusal(delivered(LEAD), route).reason == "missing_header"


# --- normalization -------------------------------------------------------------------------------


def test_form_data_lead():
    [lead] = leads_of(delivered(LEAD))
    assert "token" not in lead.fields
    assert lead.fields["UTM_Campaign"] == "diwali-2025"
    assert lead.event_id is None  # Zoho sends no event id: the body hash de-duplicates
    assert lead.phone == "98765 43210"  # Mobile before Phone
    contact = contact_of(lead)
    assert contact["name"] == "Asha Rao"
    assert contact["phoneNumber"] == "+919876543210"
    meta = contact["metadata"]
    assert meta["email"] == "asha@example.in"
    assert meta["Lead_Source"] == "Facebook Ads"
    assert meta["UTM_Campaign"] == "diwali-2025"
    assert meta["id"] == "4150868000000471013"
    assert TOKEN not in json.dumps(contact)


def test_raw_json_with_country_code_hint():
    fields = {"Full_Name": "John Smith", "Phone": "(415) 555-0132", "Country_Code": "US"}
    [lead] = leads_of(delivered(fields, body_type="json", token_in="query"))
    assert (lead.name, lead.country) == ("John Smith", "US")
    contact = contact_of(lead)
    assert contact["name"] == "John Smith"
    assert contact["phoneNumber"] == "+14155550132"


def test_raw_xml_lead():
    fields = {"First_Name": "Ravi", "Last_Name": "Kumar", "Mobile": "0091 98200 11223"}
    [lead] = leads_of(delivered(fields, body_type="xml", token_in="header"))
    assert lead.fields == fields
    assert contact_of(lead)["phoneNumber"] == "+919820011223"


def test_list_of_records_is_a_batch():
    body = {"data": [{"Mobile": "9876543210"}, {"Mobile": "+44 7911 123456"}]}
    leads = leads_of(delivered(body, body_type="json", token_in="header"))
    assert [contact_of(lead)["phoneNumber"] for lead in leads] == ["+919876543210", "+447911123456"]


def test_field_holding_the_token_is_dropped():
    [lead] = leads_of(delivered({"Mobile": "9876543210", "Auth": TOKEN}, token_in="header"))
    assert lead.fields == {"Mobile": "9876543210"}


def test_lead_without_phone_is_unmappable():
    [lead] = leads_of(delivered({"First_Name": "No", "Email": "no@x.in"}))
    with pytest.raises(Unmappable):
        contact_of(lead)
    assert SOURCE.unmappable == "reject"


@pytest.mark.parametrize(
    "body, ctype, words",
    [
        (
            b'{"module": "Leads", "ids": ["1"], "operation": "insert", "channel_id": "9"}',
            "application/json",
            "Notifications API",
        ),
        (b'"text"', "application/json", "got str"),
        (b"[1, 2]", "application/json", "list of record objects"),
        (b"{not json", "application/json", "not valid JSON"),
    ],
)
def test_malformed_bodies(body, ctype, words):
    req = harness.request(body, {"content-type": ctype, "x-bridge-token": TOKEN}, route="zoho")
    with pytest.raises(MalformedBody) as exc:
        leads_of(req)
    assert words in exc.value.message


# --- through the real Flask app and Redis ---------------------------------------------------------


def test_through_the_app_and_redelivery(make_client):
    route = {"name": "zoho", "source": "zoho_crm", "token": TOKEN, "audience_name": "Zoho"}
    client = make_client(routes=[route])
    resp, _ = harness.post_twice(client, delivered(LEAD))
    assert resp.get_json()["status"] == "queued"
    refused = harness.post(client, delivered({"First_Name": "No"}))
    assert refused.status_code == 422
    assert refused.get_json()["field"] == "phoneNumber"


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload (its token the property routes' own), beside the documented one.
MINIMAL = {"First_Name": "A", "Mobile": "9876543210", "token": S.TOKEN}
PROPERTY_SAMPLES = [MINIMAL, LEAD]
