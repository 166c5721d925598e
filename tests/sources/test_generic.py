"""Generic adapter: a lead posted by the sender itself (JSON, form, multipart, XML), its
Idempotency-Key, and the route's token or HTTP Basic credentials."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

import pytest
from rq import Queue

from bridge.event import InboundRequest
from bridge.exceptions import MalformedBody, Unmappable
from bridge.sources.base import MAX_EVENT_ID_CHARS
from bridge.sources.generic import SOURCE
from tests import strategies as S
from tests.bridge_fixtures import route_dict
from tests.sources import harness

TOKEN = "generic-route-token-4b7e"
BASIC = "make:hook-pass-31"
ROUTE_DATA = {"name": "web", "source": "generic", "audience_name": "Website", "token": TOKEN}

#: What a website form or a Make scenario posts.
LEAD = {"first_name": "Ravi", "last_name": "Kumar", "mobile": "+91-98765-43210", "city": "Pune"}


def make_route(**keys):
    return harness.make_route(ROUTE_DATA, **keys)


def encoded(lead: dict, kind: str) -> tuple[bytes, str]:
    """The lead as a sender encodes it: ``json``, ``array`` (of one), ``form``, ``multipart``
    or ``xml``."""
    if kind == "json":
        return json.dumps(lead).encode(), "application/json"
    if kind == "array":
        return json.dumps([lead]).encode(), "application/json"
    if kind == "form":
        return urlencode(lead).encode(), "application/x-www-form-urlencoded"
    if kind == "multipart":
        return S.multipart(list(lead.items())), f"multipart/form-data; boundary={S.BOUNDARY}"
    inner = "".join(f"<{k}>{v}</{k}>" for k, v in lead.items())
    return f"<lead>{inner}</lead>".encode(), "text/xml; charset=utf-8"


def posted(
    lead: dict = LEAD, *, kind: str = "json", token: str | None = TOKEN, body=None, **headers
) -> InboundRequest:
    """A lead posted with the route's token header; each test changes one thing of it."""
    data, ctype = encoded(lead, kind)
    h = {"content-type": ctype}
    if token is not None:
        h["x-bridge-token"] = token
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    return harness.request(data if body is None else body, h, route="web")


def leads_of(req: InboundRequest, route=None):
    return harness.leads_of(SOURCE, req, route or make_route())


def contact_of(lead, route=None):
    return harness.contact_of(SOURCE, lead, route or make_route())


def reason_of(req: InboundRequest, route=None):
    return harness.reason_of(SOURCE, req, route or make_route())


# --- shapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["json", "array", "form", "multipart", "xml"])
def test_every_encoding_gives_the_same_lead(kind):
    [lead] = leads_of(posted(kind=kind))
    assert lead.fields == LEAD
    assert lead.event_id is None  # no Idempotency-Key: the body hash de-duplicates
    assert contact_of(lead) == {
        "name": "Ravi Kumar",
        "phoneNumber": "+919876543210",
        "metadata": {"city": "Pune"},
    }


def test_nested_json_fields_are_kept_and_found():
    lead = {"contact": {"name": "Asha Rao", "phone": "098765 43210"}, "utm": {"source": "fb"}}
    [found] = leads_of(posted(lead))
    contact = contact_of(found)
    assert contact["name"] == "Asha Rao" and contact["phoneNumber"] == "+919876543210"
    assert contact["metadata"]["utm.source"] == "fb"


def test_repeated_form_keys_become_a_list():
    body = b"phone=%2B919876543210&interest=a&interest=b"
    [lead] = leads_of(posted(body=body, content_type="application/x-www-form-urlencoded"))
    assert lead.fields == {"phone": "+919876543210", "interest": ["a", "b"]}


def test_idempotency_key_is_the_event_id():
    [lead] = leads_of(posted(idempotency_key="  order-1042 "))
    assert lead.event_id == "order-1042"


def test_overlong_idempotency_key_is_cut():
    [lead] = leads_of(posted(idempotency_key="k" * 5000))
    assert lead.event_id == "k" * MAX_EVENT_ID_CHARS


def test_blank_idempotency_key_is_no_event_id():
    [lead] = leads_of(posted(idempotency_key="   "))
    assert lead.event_id is None


def test_without_a_phone_it_is_refused_not_skipped():
    [lead] = leads_of(posted({"name": "No Phone"}))
    with pytest.raises(Unmappable) as refused:
        contact_of(lead)
    assert refused.value.field == "phoneNumber"
    assert SOURCE.unmappable == "reject"  # the sender shows the 422 to its user


@pytest.mark.parametrize(
    "body, ctype, words",
    [
        (json.dumps([LEAD, LEAD]).encode(), "application/json", "exactly one lead"),
        (b"[]", "application/json", "exactly one lead"),
        (b'"text"', "application/json", "expected a JSON object"),
        (b"42", "application/json", "got int"),
        (b"<lead>just text</lead>", "text/xml", "XML body has no fields"),
    ],
)
def test_bodies_that_are_not_one_lead_are_malformed(body, ctype, words):
    with pytest.raises(MalformedBody) as refused:
        leads_of(posted(body=body, content_type=ctype))
    assert words in refused.value.message


# --- authentication ------------------------------------------------------------------------------


def test_token_header_passes():
    SOURCE.verify(posted(), make_route())


def test_token_in_the_query_passes():
    req = posted(token=None)
    SOURCE.verify(harness.request(req.body, req.headers, {"token": TOKEN}), make_route())


def test_missing_token():
    assert reason_of(posted(token=None)) == "missing_token"


def test_wrong_token():
    error = harness.refusal(SOURCE, posted(token=TOKEN + "x"), make_route())
    assert error.reason == "bad_token" and TOKEN not in error.message


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_basic_auth_route():
    route = make_route(token=None, basic_auth=BASIC)
    SOURCE.verify(posted(token=None, authorization=basic(BASIC)), route)
    assert reason_of(posted(token=None), route) == "missing_header"
    assert reason_of(posted(token=None, authorization=basic("make:guess")), route) == "bad_token"


def test_token_and_basic_auth_are_both_checked():
    route = make_route(basic_auth=BASIC)
    SOURCE.verify(posted(authorization=basic(BASIC)), route)
    assert reason_of(posted(token=None, authorization=basic(BASIC)), route) == "missing_token"
    assert reason_of(posted(), route) == "missing_header"


# --- through the real Flask app and Redis ---------------------------------------------------------

APP_LEAD = {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}


@pytest.fixture
def client(make_client):
    return make_client(routes=[route_dict(), route_dict(name="locked", token="s3cret-token")])


def queued_job_count(client) -> int:
    return Queue(client.settings.queue_name, connection=client.redis).count


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": {"first_name": "Ravi", "last_name": "Kumar", "mobile": "+91-98765-43210"}},
        {
            "data": {"first_name": "Ravi", "last_name": "Kumar", "mobile": "+91-98765-43210"},
            "content_type": "multipart/form-data",
        },
        {
            "data": json.dumps(
                [{"first_name": "Ravi", "last_name": "Kumar", "mobile": "+91-98765-43210"}]
            ),
            "content_type": "application/json",
        },
    ],
    ids=["form-urlencoded", "multipart", "one-element-array"],
)
def test_forms_multipart_and_arrays(client, kwargs):
    r = client.post("/hooks/leads", **kwargs)
    assert r.status_code == 202, r.json
    contact = client.store.get(r.json["deliveryId"]).contact
    assert contact["name"] == "Ravi Kumar"
    assert contact["phoneNumber"] == "+919876543210"


def test_idempotency_key_decides_repeats(client):
    a = client.post("/hooks/leads", json=APP_LEAD, headers={"Idempotency-Key": "k1"})
    b = client.post(
        "/hooks/leads", json={**APP_LEAD, "city": "Pune"}, headers={"Idempotency-Key": "k1"}
    )
    c = client.post("/hooks/leads", json=APP_LEAD, headers={"Idempotency-Key": "k2"})
    assert b.status_code == 200 and b.json["deliveryId"] == a.json["deliveryId"]
    assert c.status_code == 202 and c.json["deliveryId"] != a.json["deliveryId"]


def test_idempotency_key_is_kept_for_replay(client):
    r = client.post("/hooks/leads", json=APP_LEAD, headers={"Idempotency-Key": "order-7"})
    raw = client.store.raw(client.store.get(r.json["deliveryId"]))
    assert raw["headers"]["idempotency-key"] == "order-7"


def test_token_in_header_or_query(client):
    assert client.post("/hooks/locked", json=APP_LEAD).status_code == 401
    wrong = client.post("/hooks/locked", json=APP_LEAD, headers={"X-Bridge-Token": "nope"})
    assert wrong.status_code == 401
    assert wrong.json == {
        "error": "unauthorized",
        "message": "token does not match this route's token",
    }
    assert "s3cret-token" not in wrong.get_data(as_text=True)
    ok = client.post("/hooks/locked?token=s3cret-token", json=APP_LEAD)
    assert ok.status_code == 202
    # the stored raw request keeps no token
    raw = client.store.raw(client.store.get(ok.json["deliveryId"]))
    assert "token" not in raw["query"]
    assert "s3cret-token" not in json.dumps(raw)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"[1, 2]", "exactly one lead"),
        (b'"text"', "expected a JSON object"),
        (b"", "empty"),
        (b"\xff\xfe{}", "UTF-8"),
    ],
)
def test_bodies_that_are_not_one_lead(client, body, message):
    r = client.post("/hooks/leads", data=body, content_type="application/json")
    assert r.status_code == 400
    assert message in r.json["message"]
    assert queued_job_count(client) == 0


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload, beside the lead above, for the mutation tests to start from.
MINIMAL = {"name": "Asha Rao", "phone": "098765 43210", "utm": {"source": "x"}}
PROPERTY_SAMPLES = [MINIMAL, LEAD]
