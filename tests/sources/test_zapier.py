"""Zapier adapter: "Webhooks by Zapier" POSTs (form, JSON, XML, array), Basic auth or a token."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import Route
from bridge.exceptions import MalformedBody, Unmappable
from bridge.sources.zapier import SOURCE
from tests.sources import harness

BASIC = "zapier:s3cret-pass"
TOKEN = "zap-token-1f2e3d"

RECORD = {
    "first_name": "Priya",
    "last_name": "Nair",
    "phone_number": "+91-98765 43210",
    "email_address": "priya@example.com",
    "language": "hi-IN",
    "utm_source": "linkedin",
    "event_id": "lead-8812",
}


ROUTE_DATA = {"name": "r", "source": "zapier", "audience_name": "Demo", "basic_auth": BASIC}


def make_route(**extra) -> Route:
    return harness.make_route(ROUTE_DATA, **extra)


ROUTE = make_route()


def posted(record=RECORD, *, kind="form", credentials=BASIC, body=None, **headers):
    """The one valid builder: Zapier's POST action (Payload Type form/json/xml) with Basic auth."""
    if body is None:
        if kind == "form":
            body = urlencode(record).encode()
        elif kind == "json":
            body = json.dumps(record).encode()
        else:
            body = record.encode()
    content_type = {
        "form": "application/x-www-form-urlencoded",
        "json": "application/json",
        "xml": "application/xml",
    }[kind]
    base = {"content-type": content_type, "user-agent": "Zapier"}
    if credentials is not None:
        base["authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
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


def test_form_post_of_mapped_fields():
    [lead] = leads_of(posted())
    assert lead.event_id == "lead-8812"
    assert "event_id" not in lead.fields
    assert lead.fields["utm_source"] == "linkedin"
    contact = contact_of(lead)
    assert contact["name"] == "Priya Nair"
    assert contact["phoneNumber"] == "+919876543210"
    assert contact["metadata"] == {
        "language": "hi-IN",
        "utm_source": "linkedin",
        "email": "priya@example.com",
    }


def test_language_from_the_record_needs_a_route_expression():
    route = make_route(fields={"language": "fields.language"})
    [lead] = leads_of(posted(), route)
    assert contact_of(lead, route)["language"] == "hi-IN"


def test_unflattened_json_with_country_hint():
    record = {
        "contact": {"fullName": "John Smith", "mobile": "(415) 555-0132", "country": "us"},
        "deal": {"stage": "new"},
    }
    [lead] = leads_of(posted(record, kind="json"))
    assert lead.country == "US"
    contact = contact_of(lead)
    assert contact["name"] == "John Smith"
    assert contact["phoneNumber"] == "+14155550132"  # not the Indian landline +914155550132
    assert contact["metadata"]["deal.stage"] == "new"


def test_array_wrapped_single_record():
    [lead] = leads_of(posted([{"name": "Ravi", "whatsapp": "919876543210"}], kind="json"))
    assert contact_of(lead)["phoneNumber"] == "+919876543210"


def test_array_of_records_is_a_batch_with_ids_from_the_idempotency_key():
    records = [{"name": "A", "phone": "9876543210"}, {"name": "B", "phone": "9812345678"}]
    leads = leads_of(posted(records, kind="json", idempotency_key="zap-run-77"))
    assert [lead.event_id for lead in leads] == ["zap-run-77:0", "zap-run-77:1"]
    assert [contact_of(lead)["phoneNumber"] for lead in leads] == ["+919876543210", "+919812345678"]


def test_xml_payload():
    xml = (
        "<?xml version='1.0' encoding='utf-8'?><root><name>Anil</name>"
        "<mobile>098765 43210</mobile><eventId>x-1</eventId></root>"
    )
    [lead] = leads_of(posted(xml, kind="xml"))
    assert lead.fields == {"name": "Anil", "mobile": "098765 43210"}
    assert lead.event_id == "x-1"
    assert contact_of(lead)["phoneNumber"] == "+919876543210"


def test_missing_phone_is_unmappable_and_refused():
    [lead] = leads_of(posted({"name": "Priya", "email": "p@example.com"}))
    with pytest.raises(Unmappable):
        contact_of(lead)
    assert SOURCE.unmappable == "reject"


def test_idempotency_header_is_kept_for_replay():
    assert SOURCE.kept_headers == ("idempotency-key",)
    [lead] = leads_of(posted({"name": "A", "phone": "9876543210"}, idempotency_key="k1"))
    assert lead.event_id == "k1"


# --- malformed bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "holds no record"),
        (b"[1, 2]", "every item of the JSON array must be an object"),
        (b'"just text"', "expected an object"),
        (json.dumps([{}] * 101).encode(), "more than 100"),
        (b"{broken", "not valid JSON"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(body, message):
    with pytest.raises(MalformedBody, match=message):
        leads_of(posted(kind="json", body=body))


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=6),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(["event_id", "country", "contact", "phone", "x"]), c, max_size=4
            )
        ),
        max_leaves=12,
    )
)
def test_any_json_either_normalizes_or_is_malformed(payload):
    req = harness.request(b"{}", {})
    try:
        leads = SOURCE.normalize(req, payload, ROUTE)
    except MalformedBody:
        return
    assert isinstance(leads, list)


# --- authentication --------------------------------------------------------------------------


def test_basic_auth_passes():
    SOURCE.verify(posted(), ROUTE)


def test_missing_basic_auth():
    assert reason_of(posted(credentials=None)) == "missing_header"


def test_wrong_basic_auth():
    error = refusal(posted(credentials="zapier:guess"))
    assert error.reason == "bad_token"
    assert "s3cret-pass" not in error.message


def test_token_header_instead_of_basic_auth():
    route = make_route(basic_auth=None, token=TOKEN)
    SOURCE.verify(posted(credentials=None, x_bridge_token=TOKEN), route)
    assert reason_of(posted(credentials=None, x_bridge_token="nope"), route) == "bad_token"


# --- through the real Flask app and Redis -------------------------------------------------------


def test_through_the_app(make_client):
    client = make_client(routes=[ROUTE_DATA])
    harness.post_twice(client, posted())
    refused = harness.post(client, posted({"name": "Priya", "event_id": "lead-9000"}))
    assert refused.status_code == 422


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload, beside the documented one, for the mutation tests to start from.
MINIMAL = {"name": "A", "phone": "+919876543210", "event_id": "z1", "country": "IN"}
PROPERTY_SAMPLES = [MINIMAL, RECORD]
