"""Jotform adapter: multipart deliveries with ``rawRequest``; the URL token is the only guard."""

from __future__ import annotations

import copy
import json
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import Route
from bridge.event import InboundRequest
from bridge.exceptions import MalformedBody, Unmappable
from bridge.sources.jotform import SOURCE
from tests import strategies as S
from tests.sources import harness

TOKEN = "jf-url-token-5d4c3b2a"
BOUNDARY = "----JotformBoundary7MA4YWxkTrZu0gW"

RAW = {
    "slug": "submit/221144600480140/",
    "jsExecutionTracker": "build-date-1650897326645",
    "submitSource": "form",
    "q3_name": {"first": "Asha", "middle": "", "last": "Rao"},
    "q4_email": "asha@example.com",
    "q5_phoneNumber": {"full": "(987) 654-3210"},
    "q6_address": {
        "addr_line1": "12 MG Road",
        "city": "Bengaluru",
        "state": "KA",
        "postal": "560001",
        "country": "India",
    },
    "q7_utmSource": "google",
    "q8_interests": ["Calls", "CRM"],
    "q9_preferredLanguage": "Hindi",
    "event_id": "1650897326645_221144600480140_aGu8qm7",
    "path": "/submit/221144600480140",
}
SUBMISSION_ID = "5650897326641893456"


def multipart(parts: dict[str, str]) -> bytes:
    out = []
    for name, value in parts.items():
        out.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        )
    out.append(f"--{BOUNDARY}--\r\n")
    return "".join(out).encode()


ROUTE_DATA = {"name": "r", "source": "jotform", "audience_name": "Demo", "token": TOKEN}


def make_route(**extra) -> Route:
    return harness.make_route(ROUTE_DATA, **extra)


ROUTE = make_route()


def delivery(raw=RAW, *, token=TOKEN, body=None, **parts) -> InboundRequest:
    """The one valid builder: Jotform's multipart post to a URL carrying the route's token."""
    form = {
        "formID": "221144600480140",
        "submissionID": SUBMISSION_ID,
        "webhookURL": f"https://bridge.example/hooks/r?token={token}",
        "ip": "203.0.113.7",
        "formTitle": "Callback request",
        "pretty": "Name:Asha Rao, E-mail:asha@example.com, Phone Number:(987) 654-3210",
        "username": "acme",
        "type": "WEB",
        "rawRequest": json.dumps(raw),
    }
    form.update(parts)
    form = {k: v for k, v in form.items() if v is not None}
    query = {"token": token} if token is not None else {}
    headers = {
        "content-type": f"multipart/form-data; boundary={BOUNDARY}",
        "user-agent": "JotForm Servers",
    }
    return harness.request(multipart(form) if body is None else body, headers, query)


def leads_of(req, route=ROUTE):
    return harness.leads_of(SOURCE, req, route)


def contact_of(lead, route=ROUTE):
    return harness.contact_of(SOURCE, lead, route)


def refusal(req, route=ROUTE):
    return harness.refusal(SOURCE, req, route)


def raw(**changes):
    data = copy.deepcopy(RAW)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


# --- normalization and mapping -------------------------------------------------------------


def test_answers_are_keyed_by_unique_name_and_typed_parts_become_hints():
    [lead] = leads_of(delivery())
    assert lead.fields == {
        "name": {"first": "Asha", "middle": "", "last": "Rao"},
        "email": "asha@example.com",
        "phoneNumber": "(987) 654-3210",
        "address": {
            "addr_line1": "12 MG Road",
            "city": "Bengaluru",
            "state": "KA",
            "postal": "560001",
            "country": "India",
        },
        "utmSource": "google",
        "interests": ["Calls", "CRM"],
        "preferredLanguage": "Hindi",
    }
    assert (lead.first_name, lead.last_name, lead.phone) == ("Asha", "Rao", "(987) 654-3210")
    assert lead.event_id == SUBMISSION_ID

    contact = contact_of(lead)
    # The default US-style input mask around an Indian mobile number.
    assert contact["name"] == "Asha Rao"
    assert contact["phoneNumber"] == "+919876543210"
    assert contact["metadata"]["email"] == "asha@example.com"
    assert contact["metadata"]["utmSource"] == "google"
    assert contact["metadata"]["address.city"] == "Bengaluru"
    assert contact["metadata"]["interests"] == "Calls, CRM"


def test_older_area_and_phone_parts_are_joined():
    [lead] = leads_of(delivery(raw(q5_phoneNumber={"area": "98765", "phone": "43210"})))
    assert lead.fields["phoneNumber"] == "98765 43210"
    assert contact_of(lead)["phoneNumber"] == "+919876543210"


def test_foreign_number_with_country_code():
    [lead] = leads_of(delivery(raw(q5_phoneNumber={"full": "+44 7911 123456"})))
    assert contact_of(lead)["phoneNumber"] == "+447911123456"


def test_two_letter_country_in_an_address_is_the_phone_hint():
    changed = raw(
        q5_phoneNumber={"full": "(415) 555-0132"},
        q6_address={"city": "San Francisco", "postal": "94105", "country": "US"},
    )
    [lead] = leads_of(delivery(changed))
    assert lead.country == "US"
    assert contact_of(lead)["phoneNumber"] == "+14155550132"


def test_missing_phone_is_unmappable_and_accepted():
    [lead] = leads_of(delivery(raw(q5_phoneNumber=None)))
    with pytest.raises(Unmappable):
        contact_of(lead)
    assert SOURCE.unmappable == "accept"


def test_answers_posted_as_plain_form_fields():
    body = urlencode(
        {"submissionID": "77", "q3_fullName": "Ravi Kumar", "q4_mobile": "+91-9876543210"}
    ).encode()
    req = InboundRequest(
        method="POST",
        route="r",
        body=body,
        query={"token": TOKEN},
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    [lead] = leads_of(req)
    assert lead.fields == {"fullName": "Ravi Kumar", "mobile": "+91-9876543210"}
    contact = contact_of(lead)
    assert (contact["name"], contact["phoneNumber"]) == ("Ravi Kumar", "+919876543210")
    assert lead.event_id == "77"


# --- malformed bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ({"rawRequest": "{not json"}, "rawRequest is not valid JSON"),
        ({"rawRequest": "[1, 2]"}, "rawRequest is not a JSON object"),
        ({"rawRequest": None}, "rawRequest is missing"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(parts, message):
    with pytest.raises(MalformedBody, match=message):
        leads_of(delivery(**parts))


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["q1_name", "q2_phone", "q3_x", "rawRequest", "submissionID", "slug"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=6),
            lambda c: (
                st.lists(c, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["first", "last", "full", "area", "phone", "country"]),
                    c,
                    max_size=3,
                )
            ),
            max_leaves=8,
        ),
        max_size=4,
    )
)
def test_any_form_either_normalizes_or_is_malformed(form):
    req = harness.request(b"", {})
    for payload in (form, {"rawRequest": json.dumps(form)}):
        try:
            leads = SOURCE.normalize(req, payload, ROUTE)
        except MalformedBody:
            continue
        assert isinstance(leads, list)


# --- authentication --------------------------------------------------------------------------


def test_url_token_passes():
    SOURCE.verify(delivery(), ROUTE)


def test_missing_token():
    assert refusal(delivery(token=None)).reason == "missing_token"


def test_wrong_token():
    error = refusal(delivery(token="guessed"))
    assert error.reason == "bad_token"
    assert TOKEN not in error.message


# --- through the real Flask app and Redis -------------------------------------------------------


def test_through_the_app(make_client):
    client = make_client(routes=[ROUTE_DATA])
    req = delivery()  # posted to /hooks/r?token=...
    harness.post_twice(client, req)
    assert harness.post(client, req, url="/hooks/r").status_code == 401


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload, beside the documented one, for the mutation tests to start from.
MINIMAL = {"q3_name": {"first": "A", "last": "R"}, "q4_phone": {"full": "9876543210"}}
PROPERTY_SAMPLES = [MINIMAL, RAW]


def property_bodies(value):
    """Jotform posts the answers as JSON inside the multipart part ``rawRequest``."""
    if not isinstance(value, dict):
        return S.sender_bodies(value)
    ctype = f"multipart/form-data; boundary={S.BOUNDARY}"
    return S.ODD_TEXT.map(
        lambda submission_id: (
            S.multipart([("rawRequest", json.dumps(value)), ("submissionID", submission_id)]),
            ctype,
        )
    )
