"""Typeform adapter: one valid signed delivery, one broken thing per negative test."""

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
from bridge.sources.typeform import SOURCE, name_part
from tests.sources import harness

SECRET = "tf-whsec-4f1c0d9e8b7a6c5d"
TOKEN = "route-token-9a8b7c6d5e4f"

# A form whose questions have readable refs, as set in the builder or the Create API.
RESPONSE = {
    "event_id": "01JH8R6W3Y6Q1Z8V0N5X2K4M7P",
    "event_type": "form_response",
    "form_response": {
        "form_id": "lT4Z3j",
        "token": "a3a12ec67a1365927098a606107fac15",
        "landed_at": "2026-01-01T09:00:02Z",
        "submitted_at": "2026-01-01T09:01:12Z",
        "hidden": {"utm_source": "instagram", "utm_campaign": "diwali"},
        "calculated": {"score": 9},
        "variables": [
            {"key": "score", "type": "number", "number": 9},
            {"key": "segment", "type": "text", "text": "warm"},
        ],
        "definition": {
            "id": "lT4Z3j",
            "title": "Book a demo",
            "fields": [
                {"id": "f1", "ref": "first_name", "type": "short_text", "title": "First name?"},
                {"id": "f2", "ref": "last_name", "type": "short_text", "title": "Last name?"},
                {"id": "f3", "ref": "mobile", "type": "phone_number", "title": "Your number"},
                {"id": "f4", "ref": "work_email", "type": "email", "title": "Your e-mail"},
                {"id": "f5", "ref": "language", "type": "multiple_choice", "title": "Language"},
                {"id": "f6", "ref": "interests", "type": "multiple_choice", "title": "Interests"},
                {"id": "f7", "ref": "consent", "type": "yes_no", "title": "May we call?"},
            ],
        },
        "answers": [
            {
                "type": "text",
                "text": "Asha",
                "field": {"id": "f1", "type": "short_text", "ref": "first_name"},
            },
            {
                "type": "text",
                "text": "Rao",
                "field": {"id": "f2", "type": "short_text", "ref": "last_name"},
            },
            {
                "type": "phone_number",
                "phone_number": "+919876543210",
                "field": {"id": "f3", "type": "phone_number", "ref": "mobile"},
            },
            {
                "type": "email",
                "email": "asha@example.com",
                "field": {"id": "f4", "type": "email", "ref": "work_email"},
            },
            {
                "type": "choice",
                "choice": {"id": "c1", "ref": "hi", "label": "Hindi"},
                "field": {"id": "f5", "type": "multiple_choice", "ref": "language"},
            },
            {
                "type": "choices",
                "choices": {
                    "ids": ["c2", "c3"],
                    "labels": ["CRM", "Calls"],
                    "other": "WhatsApp bots",
                },
                "field": {"id": "f6", "type": "multiple_choice", "ref": "interests"},
            },
            {
                "type": "boolean",
                "boolean": True,
                "field": {"id": "f7", "type": "yes_no", "ref": "consent"},
            },
        ],
    },
}

# Refs Typeform generated itself: the question titles are what the user recognises.
GENERATED_REFS = {
    "event_id": "01JH8R9A0B1C2D3E4F5G6H7J8K",
    "event_type": "form_response",
    "form_response": {
        "form_id": "TZLwUH",
        "token": "01JH8R9A0B1C2D3E4F5G6H7J8K",
        "submitted_at": "2026-01-01T09:05:00Z",
        "hidden": {},
        "definition": {
            "id": "TZLwUH",
            "fields": [
                {
                    "id": "ReGqDc2VqMX9",
                    "ref": "ecbb3121-1bc9-42f0-ae29-29aeee5d39d3",
                    "type": "short_text",
                    "title": "What is your name?",
                },
                {
                    "id": "U4i2uXoZzXPZ",
                    "ref": "93bcd199-2648-4d4b-9f01-acc47da04fd8",
                    "type": "short_text",
                    "title": "Your WhatsApp number",
                },
                {
                    "id": "aScWB6tE7lKg",
                    "ref": "01HZY3Q4R5S6T7V8W9X0Y1Z2A3",
                    "type": "short_text",
                    "title": "Company name",
                },
            ],
        },
        "answers": [
            {
                "type": "text",
                "text": "Laura Mehta",
                "field": {
                    "id": "ReGqDc2VqMX9",
                    "type": "short_text",
                    "ref": "ecbb3121-1bc9-42f0-ae29-29aeee5d39d3",
                },
            },
            {
                "type": "text",
                "text": "098765 43210",
                "field": {
                    "id": "U4i2uXoZzXPZ",
                    "type": "short_text",
                    "ref": "93bcd199-2648-4d4b-9f01-acc47da04fd8",
                },
            },
            {
                "type": "text",
                "text": "Mehta Exports",
                "field": {
                    "id": "aScWB6tE7lKg",
                    "type": "short_text",
                    "ref": "01HZY3Q4R5S6T7V8W9X0Y1Z2A3",
                },
            },
        ],
    },
}


def response(base=RESPONSE, **changes):
    """A copy of ``base`` with ``form_response`` keys replaced."""
    data = copy.deepcopy(base)
    data["form_response"].update(changes)
    return data


ROUTE_DATA = {"name": "r", "source": "typeform", "audience_name": "Demo", "secret": SECRET}


def make_route(**extra) -> Route:
    return harness.make_route(ROUTE_DATA, **extra)


ROUTE = make_route()


def signed(payload=RESPONSE, *, secret=SECRET, body=None, **headers) -> InboundRequest:
    """The one valid builder: a delivery signed as Typeform signs it."""
    body = json.dumps(payload).encode() if body is None else body
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    base = {
        "content-type": "application/json",
        "user-agent": "Typeform Webhooks",
        "typeform-signature": "sha256=" + base64.b64encode(mac).decode(),
    }
    return harness.request(body, harness.with_headers(base, **headers))


def leads_of(req, route=None):
    return harness.leads_of(SOURCE, req, route or make_route())


def contact_of(lead, route=None):
    return harness.contact_of(SOURCE, lead, route or make_route())


def refusal(req, route=None):
    return harness.refusal(SOURCE, req, route or make_route())


def reason_of(req, route=None):
    return harness.reason_of(SOURCE, req, route or make_route())


# --- normalization and mapping -------------------------------------------------------------


def test_readable_refs_key_the_fields_and_typed_answers_become_hints():
    [lead] = leads_of(signed())
    assert lead.fields == {
        "first_name": "Asha",
        "last_name": "Rao",
        "mobile": "+919876543210",
        "work_email": "asha@example.com",
        "language": "Hindi",
        "interests": ["CRM", "Calls", "WhatsApp bots"],
        "consent": True,
        "utm_source": "instagram",
        "utm_campaign": "diwali",
        "score": 9,
        "segment": "warm",
    }
    assert (lead.first_name, lead.last_name) == ("Asha", "Rao")
    assert (lead.phone, lead.email) == ("+919876543210", "asha@example.com")
    assert lead.event_id == "a3a12ec67a1365927098a606107fac15"  # the response token

    contact = contact_of(lead)
    assert contact["name"] == "Asha Rao"
    assert contact["phoneNumber"] == "+919876543210"
    assert contact["metadata"]["email"] == "asha@example.com"
    assert contact["metadata"]["utm_source"] == "instagram"
    assert contact["metadata"]["language"] == "Hindi"
    assert contact["metadata"]["interests"] == "CRM, Calls, WhatsApp bots"


def test_generated_refs_fall_back_to_question_titles_and_free_text_phone_is_parsed():
    [lead] = leads_of(signed(GENERATED_REFS))
    assert lead.fields == {
        "What is your name?": "Laura Mehta",
        "Your WhatsApp number": "098765 43210",
        "Company name": "Mehta Exports",
    }
    assert lead.name == "Laura Mehta"
    assert lead.phone is None
    contact = contact_of(lead)
    assert contact["name"] == "Laura Mehta"
    assert contact["phoneNumber"] == "+919876543210"
    assert contact["metadata"]["Company name"] == "Mehta Exports"


def test_foreign_number_keeps_its_country_code():
    payload = copy.deepcopy(RESPONSE)
    payload["form_response"]["answers"][2]["phone_number"] = "+1 (415) 555-0132"
    [lead] = leads_of(signed(payload))
    assert contact_of(lead)["phoneNumber"] == "+14155550132"


def test_route_expressions_read_fields_and_hints():
    route = make_route(
        fields={"name": "fields.first_name", "phoneNumber": "hints.phone"},
        metadata={"campaign": "fields.utm_campaign", "response": "event_id"},
    )
    [lead] = leads_of(signed(), route)
    contact = contact_of(lead, route)
    assert contact["name"] == "Asha"
    assert contact["metadata"] == {
        "campaign": "diwali",
        "response": "a3a12ec67a1365927098a606107fac15",
        "email": "asha@example.com",
    }


def test_no_phone_is_unmappable_and_accepted_rather_than_refused():
    payload = copy.deepcopy(RESPONSE)
    del payload["form_response"]["answers"][2]
    [lead] = leads_of(signed(payload))
    with pytest.raises(Unmappable):
        contact_of(lead)
    assert SOURCE.unmappable == "accept"


def test_repeated_titles_do_not_overwrite_each_other():
    payload = copy.deepcopy(GENERATED_REFS)
    fields = payload["form_response"]["definition"]["fields"]
    fields[2]["title"] = "What is your name?"
    [lead] = leads_of(signed(payload))
    assert lead.fields["What is your name?"] == "Laura Mehta"
    assert lead.fields["What is your name? (2)"] == "Mehta Exports"


def test_hidden_field_colliding_with_an_answer_is_kept_beside_it():
    payload = response(hidden={"mobile": "9999999999"})
    [lead] = leads_of(signed(payload))
    assert lead.fields["mobile"] == "+919876543210"
    assert lead.fields["mobile (2)"] == "9999999999"


def test_event_id_falls_back_to_the_delivery_id_without_a_token():
    payload = copy.deepcopy(RESPONSE)
    del payload["form_response"]["token"]
    [lead] = leads_of(signed(payload))
    assert lead.event_id == RESPONSE["event_id"]


def test_partial_responses_are_not_leads():
    payload = dict(copy.deepcopy(RESPONSE), event_type="form_response_partial")
    assert leads_of(signed(payload)) == []


@pytest.mark.parametrize(
    ("label", "part"),
    [
        ("What's your first name?", "first"),
        ("first_name", "first"),
        ("Surname", "last"),
        ("Family name", "last"),
        ("Your full name", "name"),
        ("name", "name"),
        ("Company name", None),
        ("Name of your business", None),
        ("Phone", None),
    ],
)
def test_name_questions_are_recognised_by_title_or_ref(label, part):
    assert name_part(label) == part


# --- malformed bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([RESPONSE], "expected a Typeform webhook object"),
        ({"event_type": "form_response"}, "form_response is missing"),
        ({"event_type": "form_response", "form_response": []}, "form_response is missing"),
        (response(answers={"a": 1}), "answers is not a list"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(payload, message):
    with pytest.raises(MalformedBody, match=message):
        leads_of(signed(payload))


def test_a_body_that_is_not_json_is_malformed():
    with pytest.raises(MalformedBody):
        leads_of(signed(body=b"{not json"))


TYPEFORM_KEYS = (
    "type text field ref id choice choices labels answers definition fields hidden token "
    "form_response event_type variables key title other label"
).split()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(TYPEFORM_KEYS),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_either_normalizes_or_is_malformed(payload):
    req = harness.request(b"{}", {})
    try:
        leads = SOURCE.normalize(req, payload, ROUTE)
    except MalformedBody:
        return
    assert isinstance(leads, list)


# --- signature ---------------------------------------------------------------------------------


def test_valid_signature_passes():
    SOURCE.verify(signed(), make_route())


def test_flipped_body_byte_is_a_bad_signature():
    req = signed()
    body = bytearray(req.body)
    body[10] ^= 0x01
    tampered = harness.request(bytes(body), req.headers)
    assert reason_of(tampered) == "bad_signature"


def test_missing_signature_header():
    error = refusal(signed(typeform_signature=None))
    assert error.reason == "missing_header"
    assert "typeform-signature" in error.message


def test_wrong_secret():
    error = refusal(signed(secret="another-secret"))
    assert error.reason == "bad_signature"
    assert SECRET not in error.message


def test_signature_without_the_sha256_prefix():
    req = signed()
    bare = req.headers["typeform-signature"].removeprefix("sha256=")
    assert reason_of(signed(typeform_signature=bare)) == "bad_signature"


def test_route_without_secret_or_token_refuses_everything():
    bare = Route(name="r", source="typeform", audience_name="Demo")
    assert reason_of(signed(), bare) == "no_secret"


def test_token_route_without_secret_checks_the_token():
    route = make_route(secret=None, token=TOKEN)
    SOURCE.verify(signed(x_bridge_token=TOKEN, typeform_signature=None), route)
    assert reason_of(signed(x_bridge_token="nope"), route) == "bad_token"


def test_secret_and_token_are_both_required_when_both_are_set():
    route = make_route(token=TOKEN)
    SOURCE.verify(signed(x_bridge_token=TOKEN), route)
    assert reason_of(signed(), route) == "missing_token"


# --- through the real Flask app and Redis -------------------------------------------------------


def test_through_the_app(make_client):
    client = make_client(routes=[ROUTE_DATA])
    harness.post_twice(client, signed())
    # No phone: acknowledged and recorded as skipped, not a 4xx Typeform would retry.
    payload = response(token="another-response-token")
    del payload["form_response"]["answers"][2]
    skipped = harness.post(client, signed(payload))
    assert skipped.status_code == 202
    assert skipped.get_json()["status"] == "skipped"


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload, beside the documented one, for the mutation tests to start from.
MINIMAL = {
    "event_type": "form_response",
    "form_response": {
        "token": "t1",
        "definition": {"fields": [{"id": "f1", "ref": "name", "title": "Your name"}]},
        "answers": [
            {"type": "text", "text": "Asha", "field": {"id": "f1", "type": "short_text"}},
            {"type": "phone_number", "phone_number": "+919876543210", "field": {"id": "f2"}},
        ],
        "hidden": {"utm": "x"},
    },
}
PROPERTY_SAMPLES = [MINIMAL, RESPONSE]
