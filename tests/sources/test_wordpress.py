"""WordPress adapter: Gravity Forms, Contact Form 7 and WPForms bodies, told apart by shape."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import Route
from bridge.event import InboundRequest
from bridge.exceptions import MalformedBody, Unmappable
from bridge.sources.wordpress import SOURCE, is_gravity_entry
from tests.sources import harness

TOKEN = "wp-header-token-77c1"

# Gravity Forms Webhooks Add-On, Request Body "All Fields": the raw entry.
GRAVITY_ENTRY = {
    "id": "1042",
    "form_id": "3",
    "post_id": None,
    "date_created": "2026-01-01 09:00:00",
    "is_starred": 0,
    "is_read": 0,
    "ip": "203.0.113.9",
    "source_url": "https://example.in/contact/?utm_source=google&utm_medium=cpc&ref=x",
    "user_agent": "Mozilla/5.0",
    "currency": "INR",
    "created_by": "1",
    "status": "active",
    "1.2": "",
    "1.3": "Deepa",
    "1.4": "",
    "1.6": "Menon",
    "1.8": "",
    "2": "deepa@example.com",
    "3": "(987) 654-3210",
    "4.1": "Calls",
    "4.2": "",
    "4.3": "WhatsApp",
    "5.1": "14 Park Street",
    "5.2": "",
    "5.3": "Kolkata",
    "5.4": "West Bengal",
    "5.5": "700016",
    "5.6": "India",
    "6": "2026-01-15",
    "7": "I'd like a callback after 6 pm",
}

CF7_POSTED = {
    "_wpcf7": "42",
    "_wpcf7_version": "5.9.3",
    "_wpcf7_locale": "en_US",
    "_wpcf7_unit_tag": "wpcf7-f42-p7-o1",
    "your-name": "Farhan Ali",
    "your-email": "farhan@example.com",
    "your-tel": "+91 98765-43210",
    "your-subject": "Pricing",
    "menu-language": ["Urdu"],
    "checkbox-services": ["Calls", "Email"],
}

WPFORMS_MAPPED = {
    "full_name": "Lakshmi Pillai",
    "mobile_number": "9876543210",
    "email": "lakshmi@example.com",
    "country": "IN",
    "entry_id": "88",
}


ROUTE_DATA = {"name": "r", "source": "wordpress", "audience_name": "Demo", "token": TOKEN}


def make_route(**extra) -> Route:
    return harness.make_route(ROUTE_DATA, **extra)


ROUTE = make_route()


def posted(payload, *, kind="json", token=TOKEN, body=None) -> InboundRequest:
    """The one valid builder: a plugin's POST carrying the route token as a request header."""
    if body is None:
        body = json.dumps(payload).encode() if kind == "json" else urlencode(payload, True).encode()
    headers = {
        "content-type": "application/json"
        if kind == "json"
        else "application/x-www-form-urlencoded",
        "user-agent": "WordPress/6.5; https://example.in",
    }
    if token is not None:
        headers["x-bridge-token"] = token
    return harness.request(body, headers)


def leads_of(req, route=ROUTE):
    return harness.leads_of(SOURCE, req, route)


def contact_of(lead, route=ROUTE):
    return harness.contact_of(SOURCE, lead, route)


def refusal(req, route=ROUTE):
    return harness.refusal(SOURCE, req, route)


def reason_of(req, route=ROUTE):
    return harness.reason_of(SOURCE, req, route)


# --- Gravity Forms -----------------------------------------------------------------------------


def test_gravity_all_fields_entry():
    [lead] = leads_of(posted(GRAVITY_ENTRY))
    assert lead.fields == {
        "1.3": "Deepa",
        "1.6": "Menon",
        "2": "deepa@example.com",
        "3": "(987) 654-3210",
        "4.1": "Calls",
        "4.3": "WhatsApp",
        "5.1": "14 Park Street",
        "5.3": "Kolkata",
        "5.4": "West Bengal",
        "5.5": "700016",
        "5.6": "India",
        "6": "2026-01-15",
        "7": "I'd like a callback after 6 pm",
        "source_url": GRAVITY_ENTRY["source_url"],
        "utm_source": "google",
        "utm_medium": "cpc",
    }
    assert (lead.first_name, lead.last_name) == ("Deepa", "Menon")
    assert (lead.email, lead.phone) == ("deepa@example.com", "(987) 654-3210")
    assert lead.event_id == "1042"

    contact = contact_of(lead)
    assert contact["name"] == "Deepa Menon"
    assert contact["phoneNumber"] == "+919876543210"
    assert contact["metadata"]["email"] == "deepa@example.com"
    assert contact["metadata"]["utm_source"] == "google"
    assert contact["metadata"]["5.3"] == "Kolkata"


def test_gravity_form_format_and_an_international_number():
    entry = {**GRAVITY_ENTRY, "3": "+44 7911 123456"}
    [lead] = leads_of(posted(entry, kind="form"))
    assert contact_of(lead)["phoneNumber"] == "+447911123456"


def test_gravity_phone_field_chosen_by_id_in_the_route():
    route = make_route(fields={"phoneNumber": 'fields."3"'})
    entry = {**GRAVITY_ENTRY, "8": "98123 45678"}  # a second phone-looking answer
    [lead] = leads_of(posted(entry), route)
    assert contact_of(lead, route)["phoneNumber"] == "+919876543210"


def test_gravity_without_a_phone_is_unmappable_and_accepted():
    entry = {k: v for k, v in GRAVITY_ENTRY.items() if k != "3"}
    [lead] = leads_of(posted(entry))
    assert lead.phone is None  # the date and the postcode are not mistaken for phones
    with pytest.raises(Unmappable):
        contact_of(lead)
    assert SOURCE.unmappable == "accept"


def test_gravity_shape_detection():
    assert is_gravity_entry(GRAVITY_ENTRY)
    assert not is_gravity_entry(CF7_POSTED)
    assert not is_gravity_entry({"id": "1", "form_id": "2", "name": "x"})


# --- Contact Form 7 ----------------------------------------------------------------------------


def test_contact_form_7_posted_data():
    [lead] = leads_of(posted(CF7_POSTED))
    assert lead.fields == {
        "your-name": "Farhan Ali",
        "your-email": "farhan@example.com",
        "your-tel": "+91 98765-43210",
        "your-subject": "Pricing",
        "menu-language": "Urdu",
        "checkbox-services": ["Calls", "Email"],
    }
    assert lead.event_id is None
    contact = contact_of(lead)
    assert contact["name"] == "Farhan Ali"
    assert contact["phoneNumber"] == "+919876543210"
    assert contact["metadata"]["email"] == "farhan@example.com"
    assert contact["metadata"]["checkbox-services"] == "Calls, Email"


def test_contact_form_7_as_a_form_post():
    [lead] = leads_of(posted(CF7_POSTED, kind="form"))
    assert lead.fields["checkbox-services"] == ["Calls", "Email"]
    assert contact_of(lead)["phoneNumber"] == "+919876543210"


# --- WPForms and other mapped bodies --------------------------------------------------------


def test_wpforms_mapped_keys_follow_the_flat_contract():
    [lead] = leads_of(posted(WPFORMS_MAPPED))
    assert lead.country == "IN"
    contact = contact_of(lead)
    assert contact["name"] == "Lakshmi Pillai"
    assert contact["phoneNumber"] == "+919876543210"
    assert contact["metadata"]["entry_id"] == "88"


def test_wpforms_us_number_with_country_hint():
    payload = {
        **WPFORMS_MAPPED,
        "mobile_number": "(415) 555-0132",
        "country": "US",
        "event_id": "wpf-88",
    }
    [lead] = leads_of(posted(payload))
    assert lead.event_id == "wpf-88"
    assert contact_of(lead)["phoneNumber"] == "+14155550132"


# --- malformed bodies ------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"[]"])
def test_malformed_bodies_are_refused(body):
    with pytest.raises(MalformedBody, match="expected an object"):
        leads_of(posted(None, body=body))


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            "id form_id 1.3 1.6 2 3 5.1 5.5 5.6 source_url your-name _wpcf7 country".split()
        ),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=12),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=2),
            max_leaves=6,
        ),
        max_size=8,
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


def test_token_header_passes():
    SOURCE.verify(posted(CF7_POSTED), ROUTE)


def test_missing_token():
    assert reason_of(posted(CF7_POSTED, token=None)) == "missing_token"


def test_wrong_token():
    error = refusal(posted(CF7_POSTED, token="wp-guess"))
    assert error.reason == "bad_token"
    assert TOKEN not in error.message


# --- through the real Flask app and Redis -------------------------------------------------------


def test_through_the_app(make_client):
    client = make_client(routes=[ROUTE_DATA])
    harness.post_twice(client, posted(GRAVITY_ENTRY))


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload, beside the documented ones, for the mutation tests to start from.
MINIMAL = {"id": "1", "form_id": "2", "1.3": "A", "1.6": "R", "2": "9876543210"}
PROPERTY_SAMPLES = [MINIMAL, GRAVITY_ENTRY, CF7_POSTED, WPFORMS_MAPPED]
