"""Pipedrive adapter: Basic auth, v2 and v1 person / lead / deal webhooks, person fetch."""

from __future__ import annotations

import base64
import copy
import json

import pytest
import requests

from bridge.event import Event, InboundRequest, Lead
from bridge.exceptions import MalformedBody, ProviderFetchError, Unmappable
from bridge.sources.pipedrive import SOURCE
from tests.sources import harness

BASIC = "pipedrive:s3cret-pass"
API_TOKEN = "659c9fddb16335e48cc67114694b52074e812e03"
ROUTE_DATA = {"name": "pd", "source": "pipedrive", "audience_id": "aud_1", "basic_auth": BASIC}


def make_route(**keys):
    return harness.make_route(ROUTE_DATA, **keys)


def delivered(payload, *, credentials: str | None = BASIC, headers=None) -> InboundRequest:
    """A request as Pipedrive sends it with the webhook's HTTP Basic credentials."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    h = {"content-type": "application/json", "user-agent": "Pipedrive-Webhook"}
    if credentials is not None:
        h["authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    h.update(headers or {})
    return harness.request(body, h, route="pd")


def leads_of(req: InboundRequest, route=None):
    return harness.leads_of(SOURCE, req, route or make_route())


def contact_of(lead: Lead, route=None):
    return harness.contact_of(SOURCE, lead, route or make_route())


def refusal(req: InboundRequest, route=None):
    return harness.refusal(SOURCE, req, route or make_route())


V2_PERSON = {
    "meta": {
        "action": "create",
        "entity": "person",
        "entity_id": "123",
        "id": "6c1c0b1c-9f0e-4d5c-8d7a-2b1e6f0c9a11",
        "company_id": "9001",
        "correlation_id": "c0ffee",
        "is_bulk_edit": False,
        "timestamp": "2025-05-14T09:12:41.123Z",
        "type": "general",
        "user_id": "77",
        "version": "2.0",
        "webhook_id": "55",
        "webhook_owner_id": "77",
        "change_source": "app",
        "attempt": 1,
        "host": "acme.pipedrive.com",
        "permitted_user_ids": ["77"],
    },
    "data": {
        "id": 123,
        "name": "Asha Rao",
        "first_name": "Asha",
        "last_name": "Rao",
        "phones": [
            {"value": "+91 22 2345 6789", "primary": False, "label": "work"},
            {"value": "+91 98765 43210", "primary": True, "label": "mobile"},
        ],
        "emails": [{"value": "asha@example.in", "primary": True, "label": "work"}],
        "owner_id": 77,
        "org_id": None,
        "label_ids": [],
        "custom_fields": {
            "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678": "Website form",
            "0123456789abcdef0123456789abcdef01234567": {"type": "varchar", "value": "diwali"},
        },
    },
    "previous": None,
}

V1_PERSON = {
    "v": 1,
    "event": "added.person",
    "retry": 0,
    "matches_filters": {"current": []},
    "meta": {
        "v": 1,
        "action": "added",
        "object": "person",
        "id": 456,
        "company_id": 9001,
        "user_id": 77,
        "host": "acme.pipedrive.com",
        "timestamp": 1592818475,
        "timestamp_micro": 1592818475384700,
        "permitted_user_ids": [77],
        "trans_pending": False,
        "is_bulk_update": False,
        "pipedrive_service_name": False,
        "change_source": "app",
        "webhook_id": "55",
    },
    "current": {
        "id": 456,
        "name": "Ravi Kumar",
        "first_name": "Ravi",
        "last_name": "Kumar",
        "phone": [{"label": "mobile", "value": "98200 11223", "primary": True}],
        "email": [{"label": "work", "value": "", "primary": True}],
        "org_id": {"name": "Kumar Traders", "value": 9, "people_count": 1},
        "org_name": "Kumar Traders",
        "owner_id": {"id": 77, "name": "Sales Bot", "value": 77},
        "owner_name": "Sales Bot",
        "label": 5,
        "open_deals_count": 0,
        "ffffffffffffffffffffffffffffffffffffffff": "utm: google / cpc",
    },
    "previous": None,
}

V2_LEAD = {
    "meta": {
        "action": "create",
        "entity": "lead",
        "entity_id": "adf21080-0e10-11eb-879b-05d71fb426ec",
        "id": "7d2f3a90-1111-4e0c-9a77-4f6b2d8e5c01",
        "version": "2.0",
        "timestamp": "2025-05-14T09:12:41.123Z",
        "attempt": 1,
        "host": "acme.pipedrive.com",
    },
    "data": {
        "id": "adf21080-0e10-11eb-879b-05d71fb426ec",
        "title": "Asha Rao lead",
        "person_id": 123,
        "organization_id": None,
        "source_name": "Web forms",
        "value": {"amount": 500, "currency": "INR"},
        "label_ids": [],
    },
    "previous": None,
}


# --- verification --------------------------------------------------------------------------------


def test_basic_credentials_are_accepted():
    SOURCE.verify(delivered(V2_PERSON), make_route())


def test_missing_basic_credentials_are_rejected():
    assert refusal(delivered(V2_PERSON, credentials=None)).reason == "missing_header"


def test_wrong_basic_credentials_are_rejected():
    error = refusal(delivered(V2_PERSON, credentials="pipedrive:guess"))
    assert error.reason == "bad_token"
    assert BASIC not in error.message


def test_token_route_checks_the_token():
    route = make_route(basic_auth=None, token="pd-token-1")
    assert refusal(delivered(V2_PERSON), route).reason == "missing_token"
    SOURCE.verify(harness.request(b"{}", {}, {"token": "pd-token-1"}, route="pd"), route)


# --- v2 ------------------------------------------------------------------------------------------


def test_v2_person_created():
    [lead] = leads_of(delivered(V2_PERSON))
    assert lead.event_id == "6c1c0b1c-9f0e-4d5c-8d7a-2b1e6f0c9a11"
    assert lead.fetch is None
    assert lead.fields["phone"] == "+91 98765 43210"  # the primary one, not the first
    assert lead.fields["other_phones"] == ["+91 22 2345 6789"]
    assert lead.fields["custom_fields"] == {
        "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678": "Website form",
        "0123456789abcdef0123456789abcdef01234567": "diwali",
    }
    assert (lead.name, lead.phone, lead.email) == ("Asha Rao", "+91 98765 43210", "asha@example.in")
    contact = contact_of(lead)
    assert contact["name"] == "Asha Rao"
    assert contact["phoneNumber"] == "+919876543210"
    meta = contact["metadata"]
    assert meta["email"] == "asha@example.in"
    assert meta["custom_fields.0123456789abcdef0123456789abcdef01234567"] == "diwali"
    assert meta["owner"] == 77


def test_route_mapping_reads_custom_fields_and_the_event_id():
    route = make_route(
        metadata={
            "utm": 'fields.custom_fields."0123456789abcdef0123456789abcdef01234567"',
            "pipedrive_event": "event_id",
        }
    )
    [lead] = leads_of(delivered(V2_PERSON), route)
    assert lead.event_id is not None  # what the route's "event_id" reads
    contact = contact_of(lead, route)
    assert contact["metadata"] == {
        "utm": "diwali",
        "pipedrive_event": "6c1c0b1c-9f0e-4d5c-8d7a-2b1e6f0c9a11",
        "email": "asha@example.in",
    }


def test_v2_person_changes_are_ignored_by_default():
    changed = copy.deepcopy(V2_PERSON)
    changed["meta"]["action"] = "change"
    changed["previous"] = {"phones": []}
    assert leads_of(delivered(changed)) == []
    [lead] = leads_of(delivered(changed), make_route(actions=["create", "change"]))
    assert lead.phone == "+91 98765 43210"


def test_v2_delete_and_other_objects_are_ignored():
    deleted = copy.deepcopy(V2_PERSON)
    deleted["meta"]["action"] = "delete"
    deleted["data"] = None
    assert leads_of(delivered(deleted)) == []
    org = copy.deepcopy(V2_PERSON)
    org["meta"]["entity"] = "organization"
    assert leads_of(delivered(org)) == []


def test_v2_person_without_phone_is_unmappable():
    person = copy.deepcopy(V2_PERSON)
    person["data"]["phones"] = [{"value": "", "primary": True}]
    [lead] = leads_of(delivered(person))
    with pytest.raises(Unmappable):
        contact_of(lead)
    assert SOURCE.unmappable == "accept"


def test_v2_foreign_number():
    person = copy.deepcopy(V2_PERSON)
    person["data"]["phones"] = [{"value": "+44 7911 123456", "primary": True}]
    [lead] = leads_of(delivered(person))
    assert contact_of(lead)["phoneNumber"] == "+447911123456"


def test_v2_lead_points_at_its_person():
    [lead] = leads_of(delivered(V2_LEAD))
    assert lead.fetch == {"kind": "pipedrive_person", "id": "123"}
    assert lead.event_id == "7d2f3a90-1111-4e0c-9a77-4f6b2d8e5c01"
    assert lead.fields["lead"]["title"] == "Asha Rao lead"
    assert "value" not in lead.fields["lead"]


# --- v1 ------------------------------------------------------------------------------------------


def test_v1_person_added():
    [lead] = leads_of(delivered(V1_PERSON))
    assert lead.event_id == "v1:55:person:456:1592818475384700"
    assert lead.fields["organization"] == "Kumar Traders"
    assert lead.fields["owner"] == "Sales Bot"
    assert lead.fields["custom_fields"] == {"f" * 40: "utm: google / cpc"}
    assert "email" not in lead.fields
    assert "open_deals_count" not in lead.fields
    contact = contact_of(lead)
    assert contact["name"] == "Ravi Kumar"
    assert contact["phoneNumber"] == "+919820011223"
    assert contact["metadata"]["organization"] == "Kumar Traders"
    assert contact["metadata"]["custom_fields." + "f" * 40] == "utm: google / cpc"
    assert "email" not in contact["metadata"]


def test_v1_redelivery_has_the_same_event_id():
    retry = copy.deepcopy(V1_PERSON)
    retry["retry"] = 2
    [first] = leads_of(delivered(V1_PERSON))
    [again] = leads_of(delivered(retry))
    assert first.event_id == again.event_id


def test_v1_deal_with_person_object_is_fetched():
    deal = {
        "v": 1,
        "event": "added.deal",
        "meta": {
            "action": "added",
            "object": "deal",
            "id": 31,
            "timestamp_micro": 1,
            "webhook_id": "9",
        },
        "current": {"id": 31, "title": "Big deal", "person_id": {"name": "Ravi", "value": 456}},
        "previous": None,
    }
    [lead] = leads_of(delivered(deal))
    assert lead.fetch == {"kind": "pipedrive_person", "id": "456"}
    assert lead.fields == {"deal": {"id": 31, "title": "Big deal"}}


@pytest.mark.parametrize(
    "payload, words",
    [
        ([V2_PERSON], "got list"),
        ({"data": {}}, "no meta"),
        ({"meta": {"version": "2.0"}, "data": {}}, "action / entity"),
        (
            {"meta": {"action": "create", "entity": "person", "version": "2.0"}, "data": "x"},
            "data object",
        ),
        ({"meta": {"action": "added", "object": "person"}, "current": None}, "current object"),
    ],
)
def test_malformed_bodies(payload, words):
    with pytest.raises(MalformedBody) as exc:
        leads_of(delivered(payload))
    assert words in exc.value.message


def test_config_checks_actions():
    from bridge.exceptions import ConfigError

    with pytest.raises(ConfigError) as exc:
        make_route(actions=["added"])
    assert "actions" in exc.value.problems[0]


# --- fetch ---------------------------------------------------------------------------------------

PERSON_123 = {
    "success": True,
    "data": {
        "id": 123,
        "name": "Asha Rao",
        "first_name": "Asha",
        "last_name": "Rao",
        "owner_id": 77,
        "org_id": 9,
        "phones": [{"value": "098765 43210", "primary": True, "label": "mobile"}],
        "emails": [{"value": "asha@example.in", "primary": True, "label": "work"}],
        "custom_fields": {},
    },
}
ANSWERS = {
    "/api/v2/persons/123": (200, PERSON_123),
    "/api/v2/persons/404": (404, {"success": False, "error": "Person not found", "code": 404}),
    "/api/v2/persons/401": (401, {"success": False, "error": "unauthorized access", "code": 401}),
    "/api/v2/persons/429": (429, {"success": False, "error": "Too many requests"}),
    "/api/v2/persons/500": (500, {"success": False, "error": "Internal server error"}),
    "/api/v2/persons/odd": (200, {"success": True, "data": None}),
}


@pytest.fixture(scope="module")
def pipedrive_api():
    missing = (404, {"success": False, "error": "?"})
    api = harness.FakeApi(ANSWERS, missing=missing)
    api.answer("/api/v2/persons/slow", *missing, delay=1.0)
    yield api.url, api.seen
    api.close()


def fetch_event(person_id: str) -> Event:
    lead = Lead(
        fields={"lead": {"title": "Asha Rao lead", "source_name": "Web forms"}},
        event_id="7d2f3a90",
        fetch={"kind": "pipedrive_person", "id": person_id},
    )
    return Event.from_lead(
        lead, route="pd", source="pipedrive", event_id="7d2f3a90", received_at=harness.RECEIVED_AT
    )


def test_fetch_person_of_a_lead(pipedrive_api):
    base, seen = pipedrive_api
    seen.clear()
    route = make_route(access_token=API_TOKEN, api_base_url=base)
    with requests.Session() as http:
        lead = SOURCE.fetch(fetch_event("123"), route, http, 2.0)
    assert seen[-1]["headers"]["x-api-token"] == API_TOKEN
    assert lead.event_id == "7d2f3a90"
    assert lead.fields["lead"]["source_name"] == "Web forms"
    contact = contact_of(lead, route)
    assert contact["name"] == "Asha Rao"
    assert contact["phoneNumber"] == "+919876543210"
    assert contact["metadata"]["lead.title"] == "Asha Rao lead"
    assert contact["metadata"]["email"] == "asha@example.in"


@pytest.mark.parametrize(
    "person_id, transient, words",
    [
        ("404", False, "Person not found"),
        ("401", False, "unauthorized"),
        ("429", True, "Too many"),
        ("500", True, "Internal"),
        ("odd", True, "without a person"),
    ],
)
def test_fetch_errors(pipedrive_api, person_id, transient, words):
    base, _ = pipedrive_api
    route = make_route(access_token=API_TOKEN, api_base_url=base)
    with requests.Session() as http, pytest.raises(ProviderFetchError) as exc:
        SOURCE.fetch(fetch_event(person_id), route, http, 2.0)
    assert exc.value.transient is transient
    assert words in exc.value.message
    assert API_TOKEN not in exc.value.message


def test_fetch_timeout_is_transient(pipedrive_api):
    base, _ = pipedrive_api
    route = make_route(access_token=API_TOKEN, api_base_url=base)
    with requests.Session() as http, pytest.raises(ProviderFetchError) as exc:
        SOURCE.fetch(fetch_event("slow"), route, http, 0.2)
    assert exc.value.transient is True


def test_fetch_without_access_token_fails_permanently():
    with requests.Session() as http, pytest.raises(ProviderFetchError) as exc:
        SOURCE.fetch(fetch_event("123"), make_route(), http, 1.0)
    assert exc.value.transient is False
    assert "access_token" in exc.value.message


# --- through the real Flask app and Redis ---------------------------------------------------------


def test_through_the_app_and_redelivery(make_client):
    route = {"name": "pd", "source": "pipedrive", "basic_auth": BASIC, "audience_name": "PD"}
    client = make_client(routes=[route])
    req = delivered(V2_PERSON)
    resp, again = harness.post_twice(client, req)
    assert resp.get_json()["status"] == "queued"
    assert again.get_json() == {
        "deliveryId": resp.get_json()["deliveryId"],
        "status": "duplicate",
        "duplicate": True,
    }
    wrong = client.post("/hooks/pd", data=req.body, headers={"content-type": "application/json"})
    assert wrong.status_code == 401


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload, beside the documented ones, for the mutation tests to start from.
MINIMAL = {
    "meta": {"action": "create", "entity": "person", "id": "m1", "version": "2.0"},
    "data": {"id": 1, "name": "A", "phones": [{"value": "+919876543210", "primary": True}]},
}
PROPERTY_SAMPLES = [MINIMAL, V2_PERSON, V1_PERSON, V2_LEAD]
#: Route options that reach the adapter's other branches.
PROPERTY_OPTIONS = {"actions": ["create", "change"]}
