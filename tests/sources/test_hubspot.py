"""HubSpot adapter: v1/v2/v3 signatures, workflow and Webhooks API shapes, contact fetch."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time

import pytest
import requests

from bridge.event import Event, InboundRequest, Lead
from bridge.exceptions import MalformedBody, ProviderFetchError, Unmappable
from bridge.sources.hubspot import SOURCE
from tests.sources import harness

SECRET = "hs-client-secret-6f1c"
TOKEN = "hs-bridge-token-93ad"
ACCESS_TOKEN = "pat-na1-access-token-77e2"
URL = "https://bridge.example.com/hooks/hs"
ROUTE_DATA = {"name": "hs", "source": "hubspot", "audience_id": "aud_1", "secret": SECRET}


def make_route(**keys):
    return harness.make_route(ROUTE_DATA, **keys)


def signed(
    payload,
    *,
    secret: str = SECRET,
    url: str = URL,
    signed_url: str | None = None,
    versions: tuple[str, ...] = ("v3", "v1"),
    timestamp: int | None = None,
    headers: dict[str, str] | None = None,
) -> InboundRequest:
    """A request signed the way HubSpot signs it; each test breaks one thing of it."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signed_url = signed_url or url
    ts = str(int(time.time() * 1000) if timestamp is None else timestamp)
    h = {"content-type": "application/json"}
    if "v3" in versions:
        message = f"POST{signed_url}".encode() + body + ts.encode()
        digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
        h["x-hubspot-signature-v3"] = base64.b64encode(digest).decode()
        h["x-hubspot-request-timestamp"] = ts
    for version in versions:
        if version == "v1":
            source = secret.encode() + body
        elif version == "v2":
            source = f"{secret}POST{signed_url}".encode() + body
        else:
            continue
        h["x-hubspot-signature-version"] = version
        h["x-hubspot-signature"] = hashlib.sha256(source).hexdigest()
    h.update(headers or {})
    return harness.request(body, h, route="hs", url=url)


def contact_of(lead: Lead, route=None):
    return harness.contact_of(SOURCE, lead, route or make_route())


def leads_of(req: InboundRequest, route=None):
    return harness.leads_of(SOURCE, req, route or make_route())


def refusal(req: InboundRequest, route=None):
    return harness.refusal(SOURCE, req, route or make_route())


def reason_of(req: InboundRequest, route=None):
    return harness.reason_of(SOURCE, req, route or make_route())


# --- fixtures: documented shapes -----------------------------------------------------------------

WORKFLOW_ALL_PROPERTIES = {
    "vid": 3234574,
    "canonical-vid": 3234574,
    "merged-vids": [],
    "portal-id": 62515,
    "is-contact": True,
    "properties": {
        "hs_analytics_source": {"value": "PAID_SOCIAL", "versions": []},
        "firstname": {
            "value": "Asha",
            "versions": [{"value": "Asha", "source-type": "FORM", "timestamp": 1700000000000}],
        },
        "lastname": {"value": "Rao"},
        "email": {"value": "asha.rao@example.in"},
        "phone": {"value": "+91 98765 43210"},
        "mobilephone": {"value": ""},
        "hs_language": {"value": "hi"},
        "utm_campaign": {"value": "diwali-2025"},
        "city": {"value": "Pune"},
    },
    "form-submissions": [
        {"form-id": "f-old", "title": "Old form", "page-url": "https://x.in/a", "timestamp": 1},
        {
            "form-id": "f-123",
            "title": "Demo request",
            "page-url": "https://acme.in/demo?utm_source=fb",
            "timestamp": 1700000000000,
        },
    ],
    "identity-profiles": [
        {"vid": 3234574, "identities": [{"type": "EMAIL", "value": "asha.rao@example.in"}]}
    ],
    "merge-audits": [],
}

WORKFLOW_CUSTOM_BODY = {
    "firstname": "Ravi",
    "lastname": "Kumar",
    "phone": "098200 11223",
    "email": "ravi@example.in",
    "utm_source": "google",
    "course": "MBA",
}

WEBHOOKS_BATCH = [
    {
        "eventId": 100,
        "subscriptionId": 12345,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": 1564113600000,
        "subscriptionType": "contact.creation",
        "attemptNumber": 0,
        "objectId": 123,
        "changeSource": "CRM",
        "changeFlag": "NEW",
    },
    {
        "eventId": 101,
        "subscriptionId": 12346,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": 1564113600500,
        "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0,
        "objectId": 123,
        "propertyName": "phone",
        "propertyValue": "+91 98765 43210",
        "changeSource": "CRM",
    },
    {
        "eventId": 102,
        "subscriptionId": 12347,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": 1564113601000,
        "subscriptionType": "deal.creation",
        "attemptNumber": 0,
        "objectId": 900,
    },
    {
        "eventId": 103,
        "subscriptionId": 12348,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": 1564113602000,
        "subscriptionType": "object.creation",
        "objectTypeId": "0-1",
        "attemptNumber": 1,
        "objectId": 456,
    },
]


# --- verification --------------------------------------------------------------------------------


def test_v3_and_v1_signed_request_is_accepted():
    SOURCE.verify(signed(WEBHOOKS_BATCH), make_route())


def test_v3_alone_is_enough():
    SOURCE.verify(signed(WEBHOOKS_BATCH, versions=("v3",)), make_route())


def test_v1_alone_is_enough():
    SOURCE.verify(signed(WEBHOOKS_BATCH, versions=("v1",)), make_route())


def test_v2_workflow_signature_covers_method_and_url():
    req = signed(WORKFLOW_CUSTOM_BODY, versions=("v2",))
    SOURCE.verify(req, make_route())
    for changed in (
        dataclasses.replace(req, method="PUT"),
        dataclasses.replace(req, url=URL.replace("/hooks/hs", "/hooks/other")),
        dataclasses.replace(req, url=URL + "?extra=1"),
    ):
        error = refusal(changed)
        assert (error.status, error.reason) == (401, "bad_signature"), changed


def test_v2_workflow_signature_through_the_app_binds_method_and_url(make_client):
    client = make_client(routes=[ROUTE_DATA])
    url = "http://localhost/hooks/hs"
    req = signed(WORKFLOW_CUSTOM_BODY, versions=("v2",), url=url)
    put = client.put("/hooks/hs", data=req.body, headers=dict(req.headers))
    assert put.status_code == 401 and put.get_json()["error"] == "unauthorized"
    moved = client.post("/hooks/hs?campaign=x", data=req.body, headers=dict(req.headers))
    assert moved.status_code == 401
    assert harness.post(client, req, url="/hooks/hs").status_code == 202


def test_any_valid_version_is_enough():
    req = signed(WORKFLOW_CUSTOM_BODY, versions=("v3", "v2"))
    broken = dict(req.headers, **{"x-hubspot-signature-v3": "AAAA"})
    SOURCE.verify(harness.request(req.body, broken, route="hs", url=URL), make_route())


def test_flipped_body_byte_is_rejected():
    req = signed(WORKFLOW_CUSTOM_BODY)
    body = bytearray(req.body)
    body[5] ^= 0x01
    tampered = harness.request(bytes(body), req.headers, route="hs", url=URL)
    assert reason_of(tampered) == "bad_signature"


def test_wrong_secret_is_rejected():
    error = refusal(signed(WORKFLOW_CUSTOM_BODY, secret="other-secret"))
    assert error.reason == "bad_signature"
    assert SECRET not in error.message


def test_missing_signature_headers_are_rejected():
    assert reason_of(signed(WORKFLOW_CUSTOM_BODY, versions=())) == "missing_header"


def test_v3_without_timestamp_header_is_rejected():
    req = signed(WORKFLOW_CUSTOM_BODY, versions=("v3",))
    headers = {k: v for k, v in req.headers.items() if k != "x-hubspot-request-timestamp"}
    assert reason_of(harness.request(req.body, headers, route="hs", url=URL)) == "missing_header"


def test_stale_v3_timestamp_is_rejected():
    old = int((time.time() - 301) * 1000)
    req = signed(WORKFLOW_CUSTOM_BODY, versions=("v3",), timestamp=old)
    assert reason_of(req) == "stale_timestamp"


def test_unreadable_v3_timestamp_is_rejected():
    req = signed(
        WORKFLOW_CUSTOM_BODY, versions=("v3",), headers={"x-hubspot-request-timestamp": "soon"}
    )
    assert reason_of(req) == "bad_timestamp"


def test_v3_signed_for_another_url_is_rejected():
    req = signed(WORKFLOW_CUSTOM_BODY, versions=("v3",), signed_url="https://evil.example/x")
    assert reason_of(req) == "bad_signature"


def test_v3_url_escapes_are_decoded_as_hubspot_does():
    url = URL + "?ref=a%3Ab%2Fc&x=%20"
    req = signed(
        WORKFLOW_CUSTOM_BODY, versions=("v3",), url=url, signed_url=URL + "?ref=a:b/c&x=%20"
    )
    SOURCE.verify(req, make_route())


def test_public_url_option_rebuilds_the_url_behind_a_proxy():
    req = signed(
        WORKFLOW_CUSTOM_BODY,
        versions=("v3",),
        url="http://10.0.0.7:8000/hooks/hs?token=abc",
        signed_url=URL + "?token=abc",
    )
    refusal(req)
    SOURCE.verify(req, make_route(public_url=URL))


def test_route_without_secret_checks_the_token():
    route = make_route(secret=None, token=TOKEN)
    SOURCE.verify(
        signed(WORKFLOW_CUSTOM_BODY, versions=(), headers={"x-bridge-token": TOKEN}), route
    )
    assert reason_of(signed(WORKFLOW_CUSTOM_BODY, versions=()), route) == "missing_token"
    wrong = signed(WORKFLOW_CUSTOM_BODY, versions=(), headers={"x-bridge-token": "nope"})
    assert reason_of(wrong, route) == "bad_token"


def test_route_with_secret_and_token_checks_both():
    route = make_route(token=TOKEN)
    SOURCE.verify(signed(WORKFLOW_CUSTOM_BODY, headers={"x-bridge-token": TOKEN}), route)
    assert reason_of(signed(WORKFLOW_CUSTOM_BODY), route) == "missing_token"
    forged = signed(WORKFLOW_CUSTOM_BODY, secret="x", headers={"x-bridge-token": TOKEN})
    assert reason_of(forged, route) == "bad_signature"


def test_config_requires_a_secret_or_token():
    from bridge.exceptions import ConfigError

    with pytest.raises(ConfigError) as exc:
        make_route(secret=None)
    assert any("secret" in p for p in exc.value.problems)


def test_config_checks_options():
    from bridge.exceptions import ConfigError

    with pytest.raises(ConfigError) as exc:
        make_route(public_url="bridge.example.com", subscription_types="contact.creation")
    text = "\n".join(exc.value.problems)
    assert "public_url" in text and "subscription_types" in text


# --- workflow action -----------------------------------------------------------------------------


def test_workflow_all_properties():
    [lead] = leads_of(signed(WORKFLOW_ALL_PROPERTIES, versions=("v3", "v2")))
    assert lead.event_id is None  # no event id: the body hash de-duplicates
    assert lead.fetch is None
    assert lead.fields["firstname"] == "Asha"
    assert lead.fields["utm_campaign"] == "diwali-2025"
    assert lead.fields["hs_object_id"] == "3234574"
    assert lead.fields["form_submission"]["form-id"] == "f-123"
    assert "mobilephone" not in lead.fields  # blank values are dropped
    keys = list(lead.fields)
    assert keys.index("utm_campaign") < keys.index("hs_analytics_source")  # hs_* come last
    assert (lead.first_name, lead.last_name, lead.phone) == ("Asha", "Rao", "+91 98765 43210")
    contact = contact_of(lead)
    assert contact["name"] == "Asha Rao"
    assert contact["phoneNumber"] == "+919876543210"
    meta = contact["metadata"]
    assert meta["email"] == "asha.rao@example.in"
    assert meta["utm_campaign"] == "diwali-2025"
    assert meta["form_submission.page-url"] == "https://acme.in/demo?utm_source=fb"
    assert meta["hs_analytics_source"] == "PAID_SOCIAL"


def test_route_mapping_over_the_event():
    route = make_route(
        fields={"language": "fields.hs_language == 'hi' && 'hi-IN' || 'en-IN'"},
        metadata={
            "form_page": 'fields.form_submission."page-url"',
            "campaign": "fields.utm_campaign",
        },
    )
    [lead] = leads_of(signed(WORKFLOW_ALL_PROPERTIES), route)
    contact = contact_of(lead, route)
    assert contact["language"] == "hi-IN"
    assert contact["metadata"] == {
        "form_page": "https://acme.in/demo?utm_source=fb",
        "campaign": "diwali-2025",
        "email": "asha.rao@example.in",
    }


def test_workflow_custom_body_with_trunk_zero_number():
    [lead] = leads_of(signed(WORKFLOW_CUSTOM_BODY, versions=("v2",)))
    assert lead.fields == WORKFLOW_CUSTOM_BODY
    contact = contact_of(lead)
    assert contact["name"] == "Ravi Kumar"
    assert contact["phoneNumber"] == "+919820011223"
    assert contact["metadata"]["utm_source"] == "google"
    assert contact["metadata"]["course"] == "MBA"
    assert contact["metadata"]["email"] == "ravi@example.in"


def test_workflow_us_number_uses_the_country_hint():
    payload = {
        "vid": 77,
        "properties": {
            "firstname": {"value": "John"},
            "phone": {"value": "(415) 555-0132"},
            "hs_country_region_code": {"value": "us"},
        },
    }
    [lead] = leads_of(signed(payload))
    assert lead.country == "US"
    assert contact_of(lead)["phoneNumber"] == "+14155550132"


def test_workflow_prefers_mobile_then_hubspot_calculated_number():
    payload = {
        "properties": {
            "phone": {"value": "4155550132"},
            "hs_calculated_phone_number": {"value": "+14155550132"},
            "hs_calculated_phone_number_country_code": {"value": "US"},
        }
    }
    [lead] = leads_of(signed(payload))
    assert lead.phone == "+14155550132"
    payload["properties"]["mobilephone"] = {"value": "+44 7911 123456"}
    [lead] = leads_of(signed(payload))
    assert contact_of(lead)["phoneNumber"] == "+447911123456"


def test_workflow_object_api_shape():
    payload = {"id": "512", "properties": {"firstname": "Meera", "mobilephone": "+971 50 123 4567"}}
    [lead] = leads_of(signed(payload))
    assert lead.fields == {
        "firstname": "Meera",
        "mobilephone": "+971 50 123 4567",
        "hs_object_id": "512",
    }
    contact = contact_of(lead)
    assert contact["name"] == "Meera"
    assert contact["phoneNumber"] == "+971501234567"


def test_workflow_contact_without_phone_is_unmappable():
    payload = {
        "vid": 1,
        "properties": {"firstname": {"value": "Nobody"}, "email": {"value": "n@x.in"}},
    }
    [lead] = leads_of(signed(payload))
    with pytest.raises(Unmappable):
        contact_of(lead)
    assert SOURCE.unmappable == "accept"


# --- Webhooks API --------------------------------------------------------------------------------


def test_webhooks_batch_keeps_contact_creations_only():
    leads = leads_of(signed(WEBHOOKS_BATCH))
    assert [lead.fetch for lead in leads] == [
        {"kind": "hubspot_contact", "id": "123"},
        {"kind": "hubspot_contact", "id": "456"},
    ]
    assert [lead.event_id for lead in leads] == ["62515:12345:100:123", "62515:12348:103:456"]
    assert leads[0].fields["subscriptionType"] == "contact.creation"
    assert leads[0].fields["objectId"] == 123


def test_webhooks_subscription_types_option():
    route = make_route(subscription_types=["contact.propertyChange"])
    [lead] = leads_of(signed(WEBHOOKS_BATCH), route)
    assert lead.fields["propertyName"] == "phone"
    assert lead.event_id == "62515:12346:101:123"


def test_webhooks_batch_of_other_objects_is_ignored():
    assert leads_of(signed([WEBHOOKS_BATCH[2]])) == []
    assert leads_of(signed([])) == []


@pytest.mark.parametrize(
    "payload, words",
    [
        ([{"eventId": 1}], "subscriptionType"),
        ([{"subscriptionType": "contact.creation", "eventId": 1}], "objectId"),
        ([{"subscriptionType": "contact.creation", "objectId": {"x": 1}}], "objectId"),
        (["contact.creation"], "not a JSON object"),
        ("just text", "got str"),
        (42, "got int"),
    ],
)
def test_malformed_bodies(payload, words):
    with pytest.raises(MalformedBody) as exc:
        leads_of(signed(payload))
    assert words in exc.value.message


def test_invalid_json_is_malformed():
    with pytest.raises(MalformedBody):
        leads_of(signed(b'[{"eventId": '))


# --- fetch ---------------------------------------------------------------------------------------

CONTACT_123 = {
    "id": "123",
    "properties": {
        "createdate": "2026-01-01T00:00:00.000Z",
        "email": "priya@example.in",
        "firstname": "Priya",
        "lastname": "Sharma",
        "mobilephone": "0091 98200 11223",
        "phone": None,
        "hs_object_id": "123",
        "hs_language": "mr",
        "course_interest": "BBA",
    },
    "createdAt": "2026-01-01T00:00:00.000Z",
    "updatedAt": "2026-01-01T00:00:00.000Z",
    "archived": False,
}

API_ANSWERS = {
    "/crm/v3/objects/contacts/123": (200, CONTACT_123),
    "/crm/v3/objects/contacts/456": (
        200,
        {"id": "456", "properties": {"firstname": "Kiran", "phone": "+91 98200 11223"}},
    ),
    "/crm/v3/objects/contacts/404": (
        404,
        {"status": "error", "message": "Object not found.", "category": "OBJECT_NOT_FOUND"},
    ),
    "/crm/v3/objects/contacts/401": (
        401,
        {
            "status": "error",
            "message": "Authentication credentials not found.",
            "category": "INVALID_AUTHENTICATION",
        },
    ),
    "/crm/v3/objects/contacts/429": (
        429,
        {
            "status": "error",
            "message": "You have reached your secondly limit.",
            "category": "RATE_LIMITS",
        },
    ),
    "/crm/v3/objects/contacts/502": (502, "<html>Bad gateway</html>"),
    "/crm/v3/objects/contacts/odd": (200, {"results": []}),
}


@pytest.fixture(scope="module")
def hubspot_api():
    missing = (404, {"message": "no route"})
    api = harness.FakeApi(API_ANSWERS, missing=missing)
    api.answer("/crm/v3/objects/contacts/slow", *missing, delay=1.0)
    yield api.url, api.seen
    api.close()


def fetch_event(contact_id: str) -> Event:
    lead = Lead(
        fields={"objectId": contact_id},
        event_id="62515:1:9:" + contact_id,
        fetch={"kind": "hubspot_contact", "id": contact_id},
    )
    return Event.from_lead(
        lead, route="hs", source="hubspot", event_id=lead.event_id, received_at=harness.RECEIVED_AT
    )


def test_fetch_contact(hubspot_api):
    base, seen = hubspot_api
    seen.clear()
    route = make_route(access_token=ACCESS_TOKEN, api_base_url=base, properties=["course_interest"])
    with requests.Session() as http:
        lead = SOURCE.fetch(fetch_event("123"), route, http, 2.0)
    assert seen[0]["headers"]["Authorization"] == f"Bearer {ACCESS_TOKEN}"
    asked = seen[0]["query"]["properties"][0].split(",")
    assert {"firstname", "mobilephone", "phone", "course_interest"} <= set(asked)
    assert lead.event_id == "62515:1:9:123"
    assert lead.fetch is None
    assert "phone" not in lead.fields
    contact = contact_of(lead, route)
    assert contact["name"] == "Priya Sharma"
    assert contact["phoneNumber"] == "+919820011223"
    assert contact["metadata"]["course_interest"] == "BBA"
    assert contact["metadata"]["email"] == "priya@example.in"
    assert ACCESS_TOKEN not in json.dumps(lead.fields)


@pytest.mark.parametrize(
    "contact_id, transient, words",
    [
        ("404", False, "OBJECT_NOT_FOUND"),
        ("401", False, "INVALID_AUTHENTICATION"),
        ("429", True, "RATE_LIMITS"),
        ("502", True, "502"),
        ("odd", True, "without contact properties"),
    ],
)
def test_fetch_errors(hubspot_api, contact_id, transient, words):
    base, _ = hubspot_api
    route = make_route(access_token=ACCESS_TOKEN, api_base_url=base)
    with requests.Session() as http, pytest.raises(ProviderFetchError) as exc:
        SOURCE.fetch(fetch_event(contact_id), route, http, 2.0)
    assert exc.value.transient is transient
    assert words in exc.value.message
    assert ACCESS_TOKEN not in exc.value.message


def test_fetch_timeout_is_transient(hubspot_api):
    base, _ = hubspot_api
    route = make_route(access_token=ACCESS_TOKEN, api_base_url=base)
    with requests.Session() as http, pytest.raises(ProviderFetchError) as exc:
        SOURCE.fetch(fetch_event("slow"), route, http, 0.2)
    assert exc.value.transient is True


def test_fetch_unreachable_api_is_transient():
    route = make_route(access_token=ACCESS_TOKEN, api_base_url=harness.unused_url())
    with requests.Session() as http, pytest.raises(ProviderFetchError) as exc:
        SOURCE.fetch(fetch_event("123"), route, http, 1.0)
    assert exc.value.transient is True
    assert ACCESS_TOKEN not in exc.value.message


def test_fetch_without_access_token_fails_permanently():
    with requests.Session() as http, pytest.raises(ProviderFetchError) as exc:
        SOURCE.fetch(fetch_event("123"), make_route(), http, 1.0)
    assert exc.value.transient is False
    assert "access_token" in exc.value.message


def test_url_without_query_string_is_rebuilt_from_the_arguments():
    req = signed(WORKFLOW_CUSTOM_BODY, versions=("v3",), url=URL + "?token=abc")
    base_only = harness.request(req.body, req.headers, {"token": "abc"}, route="hs", url=URL)
    SOURCE.verify(base_only, make_route())


# --- through the real Flask app and Redis ---------------------------------------------------------


def test_through_the_app_batch_redelivery_and_fetch(make_client, run_jobs, hubspot_api):
    base, _ = hubspot_api
    route = {
        "name": "hs",
        "source": "hubspot",
        "secret": SECRET,
        "access_token": ACCESS_TOKEN,
        "api_base_url": base,
        "audience_name": "HubSpot leads",
    }
    client = make_client(routes=[route])
    resp, _ = harness.post_twice(client, signed(WEBHOOKS_BATCH, url="http://localhost/hooks/hs"))
    body = resp.get_json()
    assert [d["status"] for d in body["deliveries"]] == ["queued", "queued"]

    assert run_jobs(client.settings) == 2
    delivered = [client.store.get(d["deliveryId"]) for d in body["deliveries"]]
    assert [(d.status, d.contact["name"], d.contact["phoneNumber"]) for d in delivered] == [
        ("delivered", "Priya Sharma", "+919820011223"),
        ("delivered", "Kiran", "+919820011223"),
    ]


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: Minimal valid payloads of both shapes, beside the documented ones, for the mutation tests.
MINIMAL_WORKFLOW = {"vid": 1, "properties": {"phone": {"value": "+919876543210"}}}
MINIMAL_BATCH = [
    {"subscriptionType": "contact.creation", "objectId": 1, "eventId": 2, "portalId": 3}
]
PROPERTY_SAMPLES = [
    MINIMAL_WORKFLOW,
    MINIMAL_BATCH,
    WORKFLOW_ALL_PROPERTIES,
    WORKFLOW_CUSTOM_BODY,
    WEBHOOKS_BATCH,
]
#: Route options that reach the adapter's other branches.
PROPERTY_OPTIONS = {
    "subscription_types": ["contact.creation", "contact.propertyChange"],
    "properties": ["x"],
    "public_url": "https://bridge.example.com/hooks/hubspot",
}
