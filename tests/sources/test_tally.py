"""Tally adapter: one valid signed delivery, one broken thing per negative test."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import Route
from bridge.event import InboundRequest
from bridge.exceptions import MalformedBody, Unmappable
from bridge.sources.tally import SOURCE
from tests.sources import harness

SECRET = "tally-signing-secret-7c1e"
TOKEN = "route-token-3b2a1c"

SUBMISSION = {
    "eventId": "a4cb511e-d513-4fa5-baee-b815d718dfd1",
    "eventType": "FORM_RESPONSE",
    "createdAt": "2026-01-01T09:00:21.889Z",
    "data": {
        "responseId": "2wgx4n",
        "submissionId": "2wgx4n",
        "respondentId": "dwQKYm",
        "formId": "VwbNEw",
        "formName": "Callback request",
        "createdAt": "2026-01-01T09:00:21.000Z",
        "fields": [
            {
                "key": "question_mVGEg3",
                "label": "First name",
                "type": "INPUT_TEXT",
                "value": "Ravi",
            },
            {
                "key": "question_nPpjVn",
                "label": "Last name",
                "type": "INPUT_TEXT",
                "value": "Kumar",
            },
            {
                "key": "question_3E7k6B",
                "label": "Where can we reach you?",
                "type": "INPUT_PHONE_NUMBER",
                "value": "+91 98765 43210",
            },
            {
                "key": "question_w4Q8xE",
                "label": "Email",
                "type": "INPUT_EMAIL",
                "value": "ravi@example.in",
            },
            {
                "key": "question_w7rRE0",
                "label": "Language",
                "type": "MULTIPLE_CHOICE",
                "value": ["opt-hi"],
                "options": [{"id": "opt-en", "text": "English"}, {"id": "opt-hi", "text": "Hindi"}],
            },
            {
                "key": "question_3xLqGd",
                "label": "Topics",
                "type": "CHECKBOXES",
                "value": ["opt-a", "opt-c"],
                "options": [
                    {"id": "opt-a", "text": "Pricing"},
                    {"id": "opt-b", "text": "Demo"},
                    {"id": "opt-c", "text": "Support"},
                ],
            },
            {
                "key": "question_3xLqGd_opt-a",
                "label": "Topics (Pricing)",
                "type": "CHECKBOXES",
                "value": True,
            },
            {
                "key": "question_3xLqGd_opt-b",
                "label": "Topics (Demo)",
                "type": "CHECKBOXES",
                "value": False,
            },
            {
                "key": "question_xY_2a1f",
                "label": "utm_source",
                "type": "HIDDEN_FIELDS",
                "value": "google",
            },
            {
                "key": "question_xY_9c3d",
                "label": "utm_medium",
                "type": "HIDDEN_FIELDS",
                "value": None,
            },
            {"key": "question_kd3jL0", "label": "Score", "type": "CALCULATED_FIELDS", "value": 20},
            {
                "key": "question_f1Le0p",
                "label": "Brochure",
                "type": "FILE_UPLOAD",
                "value": [
                    {
                        "id": "5Q4wT2",
                        "name": "plan.pdf",
                        "url": "https://storage.tally.so/private/plan.pdf",
                        "mimeType": "application/pdf",
                        "size": 120934,
                    }
                ],
            },
        ],
    },
}


def submission(**changes):
    data = copy.deepcopy(SUBMISSION)
    data.update(changes)
    return data


def with_fields(*fields):
    data = copy.deepcopy(SUBMISSION)
    data["data"]["fields"] = list(fields)
    return data


ROUTE_DATA = {"name": "r", "source": "tally", "audience_name": "Demo", "secret": SECRET}


def make_route(**extra) -> Route:
    return harness.make_route(ROUTE_DATA, **extra)


ROUTE = make_route()


def signed(payload=SUBMISSION, *, secret=SECRET, body=None, **headers) -> InboundRequest:
    """The one valid builder: a delivery signed as Tally signs it."""
    body = json.dumps(payload, separators=(",", ":")).encode() if body is None else body
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    base = {"content-type": "application/json", "tally-signature": base64.b64encode(mac).decode()}
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


def test_labels_key_the_fields_and_choices_become_option_text():
    [lead] = leads_of(signed())
    assert lead.fields == {
        "First name": "Ravi",
        "Last name": "Kumar",
        "Where can we reach you?": "+91 98765 43210",
        "Email": "ravi@example.in",
        "Language": "Hindi",
        "Topics": ["Pricing", "Support"],
        "utm_source": "google",
        "Score": 20,
        "Brochure": ["https://storage.tally.so/private/plan.pdf"],
    }
    assert (lead.phone, lead.email) == ("+91 98765 43210", "ravi@example.in")
    assert lead.event_id == "2wgx4n"

    contact = contact_of(lead)
    assert contact["name"] == "Ravi Kumar"
    assert contact["phoneNumber"] == "+919876543210"
    assert contact["metadata"]["email"] == "ravi@example.in"
    assert contact["metadata"]["utm_source"] == "google"
    assert contact["metadata"]["Topics"] == "Pricing, Support"
    assert "utm_medium" not in contact["metadata"]


def test_free_text_phone_with_trunk_zero_and_a_full_name():
    payload = with_fields(
        {"key": "q1", "label": "Full name", "type": "INPUT_TEXT", "value": "Meera  Iyer"},
        {"key": "q2", "label": "Mobile", "type": "INPUT_TEXT", "value": "098765 43210"},
    )
    [lead] = leads_of(signed(payload))
    assert lead.phone is None
    contact = contact_of(lead)
    assert contact["name"] == "Meera Iyer"
    assert contact["phoneNumber"] == "+919876543210"


def test_foreign_number():
    payload = with_fields(
        {"key": "q1", "label": "Name", "type": "INPUT_TEXT", "value": "Tom"},
        {"key": "q2", "label": "Phone", "type": "INPUT_PHONE_NUMBER", "value": "+447911123456"},
    )
    [lead] = leads_of(signed(payload))
    assert contact_of(lead)["phoneNumber"] == "+447911123456"


def test_older_single_string_choice_value_and_unknown_option_id():
    payload = with_fields(
        {
            "key": "q1",
            "label": "Plan",
            "type": "DROPDOWN",
            "value": "o2",
            "options": [{"id": "o1", "text": "Basic"}, {"id": "o2", "text": "Pro"}],
        },
        {
            "key": "q2",
            "label": "Extras",
            "type": "MULTI_SELECT",
            "value": ["o9"],
            "options": [{"id": "o1", "text": "Basic"}],
        },
    )
    [lead] = leads_of(signed(payload))
    assert lead.fields == {"Plan": "Pro", "Extras": ["o9"]}


def test_repeated_labels_are_kept_apart():
    payload = with_fields(
        {"key": "q1", "label": "Phone", "type": "INPUT_PHONE_NUMBER", "value": "+919876543210"},
        {"key": "q2", "label": "Phone", "type": "INPUT_PHONE_NUMBER", "value": "+919812345678"},
    )
    [lead] = leads_of(signed(payload))
    assert lead.fields == {"Phone": "+919876543210", "Phone (2)": "+919812345678"}
    assert lead.phone == "+919876543210"


def test_matrix_answers_use_row_and_column_text():
    payload = with_fields(
        {
            "key": "q1",
            "label": "Rate us",
            "type": "MATRIX",
            "value": {"r1": ["c2"]},
            "rows": [{"id": "r1", "text": "Speed"}],
            "columns": [{"id": "c2", "text": "Good"}],
        },
    )
    [lead] = leads_of(signed(payload))
    assert lead.fields == {"Rate us": {"Speed": ["Good"]}}


def test_no_phone_is_unmappable_and_accepted():
    payload = with_fields({"key": "q1", "label": "Name", "type": "INPUT_TEXT", "value": "Ravi"})
    [lead] = leads_of(signed(payload))
    with pytest.raises(Unmappable):
        contact_of(lead)
    assert SOURCE.unmappable == "accept"


def test_event_id_falls_back_to_the_event_id():
    payload = copy.deepcopy(SUBMISSION)
    del payload["data"]["responseId"], payload["data"]["submissionId"]
    [lead] = leads_of(signed(payload))
    assert lead.event_id == SUBMISSION["eventId"]


def test_other_event_types_are_not_leads():
    assert leads_of(signed(submission(eventType="FORM_DELETED"))) == []


# --- malformed bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([SUBMISSION], "expected a Tally webhook object"),
        (submission(data=None), "data is missing"),
        (submission(data={"fields": {"a": 1}}), "data.fields is missing or not a list"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(payload, message):
    with pytest.raises(MalformedBody, match=message):
        leads_of(signed(payload))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from("eventType data fields key label type value options id text".split()),
            children,
            max_size=4,
        )
    ),
    max_leaves=10,
)
field_types = st.sampled_from(
    "INPUT_TEXT MULTIPLE_CHOICE CHECKBOXES MATRIX FILE_UPLOAD INPUT_PHONE_NUMBER RANKING".split()
)
items = st.lists(
    st.fixed_dictionaries(
        {"label": json_values, "type": field_types, "value": json_values},
        optional={"options": json_values, "rows": json_values, "columns": json_values},
    ),
    max_size=3,
)


@settings(max_examples=100, deadline=None)
@given(json_values, items)
def test_any_json_either_normalizes_or_is_malformed(payload, fields):
    req = harness.request(b"{}", {})
    for candidate in (payload, {"eventType": "FORM_RESPONSE", "data": {"fields": fields}}):
        try:
            leads = SOURCE.normalize(req, candidate, ROUTE)
        except MalformedBody:
            continue
        assert isinstance(leads, list)


# --- signature ---------------------------------------------------------------------------------


def test_valid_signature_passes():
    SOURCE.verify(signed(), ROUTE)


def test_flipped_body_byte_is_a_bad_signature():
    req = signed()
    body = bytearray(req.body)
    body[-3] ^= 0x01
    tampered = harness.request(bytes(body), req.headers)
    assert reason_of(tampered) == "bad_signature"


def test_missing_signature_header():
    assert reason_of(signed(tally_signature=None)) == "missing_header"


def test_wrong_secret():
    error = refusal(signed(secret="not-the-secret"))
    assert error.reason == "bad_signature"
    assert SECRET not in error.message


def test_route_without_secret_or_token_refuses_everything():
    bare = Route(name="r", source="tally", audience_name="Demo")
    assert reason_of(signed(), bare) == "no_secret"


def test_token_route_without_secret_checks_the_token():
    route = make_route(secret=None, token=TOKEN)
    SOURCE.verify(signed(tally_signature=None, x_bridge_token=TOKEN), route)
    assert reason_of(signed(tally_signature=None), route) == "missing_token"


def test_secret_and_token_both_checked():
    route = make_route(token=TOKEN)
    SOURCE.verify(signed(x_bridge_token=TOKEN), route)
    assert reason_of(signed(x_bridge_token="wrong"), route) == "bad_token"


# --- through the real Flask app and Redis -------------------------------------------------------


def test_through_the_app(make_client):
    client = make_client(routes=[ROUTE_DATA])
    harness.post_twice(client, signed())
    refused = harness.post(client, signed(secret="not-the-secret"))
    assert refused.status_code == 401
    assert SECRET not in refused.get_data(as_text=True)


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload, beside the documented one, for the mutation tests to start from.
MINIMAL = {
    "eventType": "FORM_RESPONSE",
    "data": {
        "responseId": "r1",
        "fields": [
            {"key": "k1", "label": "Phone", "type": "INPUT_PHONE_NUMBER", "value": "+9198"},
            {
                "key": "k2",
                "label": "Pick",
                "type": "MULTIPLE_CHOICE",
                "value": ["o1"],
                "options": [{"id": "o1", "text": "One"}],
            },
        ],
    },
}
PROPERTY_SAMPLES = [MINIMAL, SUBMISSION]
