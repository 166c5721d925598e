"""Google Forms adapter: the body the published Apps Script sends, guarded by the route token."""

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
from bridge.sources.google_forms import SOURCE
from tests.sources import harness

TOKEN = "gf-script-token-8e7d6c"

# What the script in docs/sources/google_forms.md posts.
SCRIPT_BODY = {
    "source": "google_forms",
    "formId": "1FAIpQLSd3kq2v9x8Yd8Vb0c",
    "formTitle": "Free consultation",
    "responseId": "2_ABaOnudz6n3Xq9P0m4R8sTqk1vYw",
    "submittedAt": "2026-01-01T09:00:00.000Z",
    "respondentEmail": "neha@example.com",
    "answers": {
        "Your name": "Neha Gupta",
        "WhatsApp number": "0091 98765 43210",
        "Preferred language": "Hindi",
        "Which services?": ["Calls", "WhatsApp"],
        "utm_source": "facebook",
    },
}


ROUTE_DATA = {"name": "r", "source": "google_forms", "audience_name": "Demo", "token": TOKEN}


def make_route(**extra) -> Route:
    return harness.make_route(ROUTE_DATA, **extra)


ROUTE = make_route()


def posted(
    payload=SCRIPT_BODY, *, token=TOKEN, body=None, content_type="application/json"
) -> InboundRequest:
    """The one valid builder: UrlFetchApp posting the script's JSON with the token header."""
    body = json.dumps(payload).encode() if body is None else body
    base = {
        "content-type": content_type,
        "user-agent": "Mozilla/5.0 (compatible; Google-Apps-Script; beanserver; "
        "+https://script.google.com; id: UAEmdDd-abc)",
    }
    return harness.request(body, harness.with_headers(base, x_bridge_token=token))


def leads_of(req, route=ROUTE):
    return harness.leads_of(SOURCE, req, route)


def contact_of(lead, route=ROUTE):
    return harness.contact_of(SOURCE, lead, route)


def refusal(req, route=ROUTE):
    return harness.refusal(SOURCE, req, route)


def body_with(**changes):
    data = copy.deepcopy(SCRIPT_BODY)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


# --- normalization and mapping -------------------------------------------------------------


def test_script_body_answers_keyed_by_question_title():
    [lead] = leads_of(posted())
    assert lead.fields == SCRIPT_BODY["answers"]
    assert lead.email == "neha@example.com"
    assert lead.event_id == "2_ABaOnudz6n3Xq9P0m4R8sTqk1vYw"

    contact = contact_of(lead)
    assert contact["name"] == "Neha Gupta"
    assert contact["phoneNumber"] == "+919876543210"  # IDD prefix 00 91
    assert contact["metadata"]["email"] == "neha@example.com"
    assert contact["metadata"]["utm_source"] == "facebook"
    assert contact["metadata"]["Which services?"] == "Calls, WhatsApp"


def test_json_sent_without_content_type_arrives_labelled_as_a_form():
    req = posted(content_type="application/x-www-form-urlencoded")
    [lead] = leads_of(req)
    assert lead.fields["Your name"] == "Neha Gupta"


def test_spreadsheet_named_values_are_unwrapped():
    payload = {
        "namedValues": {
            "Timestamp": ["1/1/2026 9:00:00"],
            "First name": ["Arjun"],
            "Last name": ["Singh"],
            "Phone": ["+1 415 555 0132"],
            "Interests": ["A", "B"],
        },
    }
    [lead] = leads_of(posted(payload))
    assert lead.fields == {
        "First name": "Arjun",
        "Last name": "Singh",
        "Phone": "+1 415 555 0132",
        "Interests": ["A", "B"],
    }
    assert lead.event_id is None
    contact = contact_of(lead)
    assert (contact["name"], contact["phoneNumber"]) == ("Arjun Singh", "+14155550132")


def test_script_posting_a_plain_form():
    body = urlencode({"Name": "Kavya", "Mobile": "98765 43210", "token": TOKEN}).encode()
    req = posted(body=body, content_type="application/x-www-form-urlencoded")
    [lead] = leads_of(req)
    assert lead.fields == {"Name": "Kavya", "Mobile": "98765 43210"}  # the token is not a field
    assert contact_of(lead)["phoneNumber"] == "+919876543210"


def test_extra_top_level_keys_are_kept():
    [lead] = leads_of(posted(body_with(pageUrl="https://example.com/?utm_source=x")))
    assert lead.fields["pageUrl"] == "https://example.com/?utm_source=x"


def test_no_phone_is_unmappable_and_refused():
    answers = {"Your name": "Neha Gupta"}
    [lead] = leads_of(posted(body_with(answers=answers, respondentEmail="")))
    assert lead.email is None
    with pytest.raises(Unmappable):
        contact_of(lead)
    assert SOURCE.unmappable == "reject"


# --- malformed bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([SCRIPT_BODY], "expected a JSON object"),
        (body_with(answers=["a"]), "answers must be an object"),
        ({"namedValues": "x"}, "namedValues must be an object"),
        ({"answers": {}, "formId": "f"}, "no answers in the body"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(payload, message):
    with pytest.raises(MalformedBody, match=message):
        leads_of(posted(payload))


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=6),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(["answers", "namedValues", "responseId", "respondentEmail", "Q"]),
                c,
                max_size=4,
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


def test_token_header_passes():
    SOURCE.verify(posted(), ROUTE)


def test_missing_token():
    assert refusal(posted(token=None)).reason == "missing_token"


def test_wrong_token():
    error = refusal(posted(token="guess"))
    assert error.reason == "bad_token"
    assert TOKEN not in error.message


# --- through the real Flask app and Redis -------------------------------------------------------


def test_through_the_app(make_client):
    client = make_client(routes=[ROUTE_DATA])
    harness.post_twice(client, posted())
    # No phone: a 422 naming the problem, which the script's owner sees.
    nophone = posted(body_with(responseId="2_other", answers={"Your name": "Neha"}))
    refused = harness.post(client, nophone)
    assert refused.status_code == 422
    assert "phone" in refused.get_json()["message"]


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload, beside the documented one, for the mutation tests to start from.
MINIMAL = {"responseId": "g1", "answers": {"Phone": "9876543210", "Name": "A"}}
PROPERTY_SAMPLES = [MINIMAL, SCRIPT_BODY]
