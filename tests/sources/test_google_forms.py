"""Google Forms adapter: the body the published Apps Script sends, guarded by the route token."""

from __future__ import annotations

import copy
import json
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import Route, build_settings
from bridge.event import Event, InboundRequest
from bridge.exceptions import MalformedBody, SignatureInvalid, Unmappable
from bridge.mapping import map_event
from bridge.sources.google_forms import SOURCE

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


def make_route(**extra) -> Route:
    data = {"name": "r", "source": "google_forms", "audience_name": "Demo", "token": TOKEN}
    data.update(extra)
    data = {k: v for k, v in data.items() if v is not None}
    return build_settings({"routes": [data]}, env={}).routes["r"]


ROUTE = make_route()


def posted(
    payload=SCRIPT_BODY, *, token=TOKEN, body=None, content_type="application/json"
) -> InboundRequest:
    """The one valid builder: UrlFetchApp posting the script's JSON with the token header."""
    body = json.dumps(payload).encode() if body is None else body
    headers = {
        "content-type": content_type,
        "user-agent": "Mozilla/5.0 (compatible; Google-Apps-Script; beanserver; "
        "+https://script.google.com; id: UAEmdDd-abc)",
        "x-bridge-token": token,
    }
    headers = {k: v for k, v in headers.items() if v is not None}
    return InboundRequest(method="POST", route="r", body=body, headers=headers, query={})


def leads_of(req, route=ROUTE):
    SOURCE.verify(req, route)
    return SOURCE.normalize(req, SOURCE.parse(req), route)


def contact_of(lead, route=ROUTE):
    event = Event.from_lead(
        lead,
        route=route.name,
        source="google_forms",
        event_id=lead.event_id or "hash",
        received_at="2026-01-01T00:00:00.000Z",
    )
    return map_event(event, route)


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
    req = InboundRequest(method="POST", route="r", body=b"{}")
    try:
        leads = SOURCE.normalize(req, payload, ROUTE)
    except MalformedBody:
        return
    assert isinstance(leads, list)


# --- authentication --------------------------------------------------------------------------


def test_token_header_passes():
    SOURCE.verify(posted(), ROUTE)


def test_missing_token():
    with pytest.raises(SignatureInvalid) as exc:
        SOURCE.verify(posted(token=None), ROUTE)
    assert exc.value.reason == "missing_token"


def test_wrong_token():
    with pytest.raises(SignatureInvalid) as exc:
        SOURCE.verify(posted(token="guess"), ROUTE)
    assert exc.value.reason == "bad_token"
    assert TOKEN not in exc.value.message


# --- through the real Flask app and Redis -------------------------------------------------------


def test_through_the_app(make_client):
    route = {"name": "r", "source": "google_forms", "audience_name": "Demo", "token": TOKEN}
    client = make_client(routes=[route])
    req = posted()
    resp = client.post("/hooks/r", data=req.body, headers=dict(req.headers))
    assert resp.status_code == 202, resp.get_json()
    again = client.post("/hooks/r", data=req.body, headers=dict(req.headers))
    assert again.status_code == 200
    assert again.get_json()["duplicate"] is True
    # No phone: a 422 naming the problem, which the script's owner sees.
    nophone = posted(body_with(responseId="2_other", answers={"Your name": "Neha"}))
    refused = client.post("/hooks/r", data=nophone.body, headers=dict(nophone.headers))
    assert refused.status_code == 422
    assert "phone" in refused.get_json()["message"]
