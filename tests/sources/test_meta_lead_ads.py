"""Meta Lead Ads adapter: handshake, one valid signed notification with one broken thing per
test, and the Graph API fetch against a real local HTTP server."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
import requests

from bridge.event import Event, InboundRequest
from bridge.exceptions import ConfigError, MalformedBody, ProviderFetchError, StorageUnavailable
from bridge.sources.base import Accepted, Outcome
from bridge.sources.meta_lead_ads import SOURCE
from tests.sources import harness

APP_SECRET = "3f1c0a9e8b7d6c5f4e3d2c1b0a9f8e7d"
VERIFY_TOKEN = "bridge-verify-5521"
ACCESS_TOKEN = "EAAGm0PX4ZCpsBAKZC-page-token"


def change(leadgen_id, form_id="551111744595541", ad_id="6045268386040"):
    return {
        "field": "leadgen",
        "value": {
            "leadgen_id": leadgen_id,
            "page_id": "1029384756",
            "form_id": form_id,
            "adgroup_id": ad_id,
            "ad_id": ad_id,
            "created_time": 1767225600,
        },
    }


NOTIFICATION = {
    "object": "page",
    "entry": [{"id": "1029384756", "time": 1767225601, "changes": [change("1234567890123")]}],
}


ROUTE_DATA = {
    "name": "r",
    "source": "meta_lead_ads",
    "audience_id": "aud_1",
    "secret": APP_SECRET,
    "verify_token": VERIFY_TOKEN,
    "access_token": ACCESS_TOKEN,
}


def route_data(**extra):
    return harness.route_data(ROUTE_DATA, **extra)


def make_route(**extra):
    return harness.make_route(ROUTE_DATA, **extra)


def signed(payload=NOTIFICATION, *, secret=APP_SECRET, body=None, **headers):
    """The one valid builder: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(body)>``."""
    body = json.dumps(payload).encode() if body is None else body
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    base = {"content-type": "application/json", "x-hub-signature-256": f"sha256={mac}"}
    return harness.request(body, harness.with_headers(base, **headers))


def leads_of(req, route=None):
    return harness.leads_of(SOURCE, req, route or make_route())


def event_of(lead, route):
    return harness.event_of(SOURCE, lead, route)


def reason_of(req, route=None):
    return harness.reason_of(SOURCE, req, route or make_route())


# --- handshake ----------------------------------------------------------------------------------


def challenge(**query):
    base = {
        "hub.mode": "subscribe",
        "hub.challenge": "1158201444",
        "hub.verify_token": VERIFY_TOKEN,
    }
    base.update(query)
    base = {k: v for k, v in base.items() if v is not None}
    return InboundRequest(method="GET", route="r", query=base)


def test_handshake_echoes_the_challenge_as_plain_text():
    answer = SOURCE.handshake(challenge(), make_route())
    assert answer.status == 200
    assert answer.content_type == "text/plain"
    assert answer.body_bytes() == b"1158201444"


def test_handshake_with_a_wrong_verify_token_is_403():
    answer = SOURCE.handshake(challenge(**{"hub.verify_token": "guess"}), make_route())
    assert answer.status == 403
    assert VERIFY_TOKEN.encode() not in answer.body_bytes()


@pytest.mark.parametrize(
    "query",
    [{"hub.verify_token": None}, {"hub.challenge": None}, {"hub.mode": "unsubscribe"}],
)
def test_incomplete_handshake(query):
    answer = SOURCE.handshake(challenge(**query), make_route())
    assert answer.status in (400, 403)
    assert answer.body_bytes() != b"1158201444"


def test_other_methods_have_no_handshake():
    req = InboundRequest(method="PUT", route="r", query=challenge().query)
    assert SOURCE.handshake(req, make_route()) is None


# --- notifications ------------------------------------------------------------------------------


def test_notification_gives_an_id_only_lead_to_fetch():
    (lead,) = leads_of(signed())
    assert lead.event_id == "1234567890123"
    assert lead.fetch == {"kind": "meta_lead", "id": "1234567890123"}
    assert lead.fields["form_id"] == "551111744595541"
    assert lead.fields["ad_id"] == "6045268386040"
    assert lead.phone is None


def test_batch_of_entries_and_changes_with_numeric_ids():
    payload = {
        "object": "page",
        "entry": [
            {"id": 1, "time": 1, "changes": [change(444444444444), {"field": "feed", "value": {}}]},
            {"id": 1, "time": 2, "changes": [change("555555555555"), change(666666666666)]},
        ],
    }
    leads = leads_of(signed(payload))
    assert [lead.event_id for lead in leads] == ["444444444444", "555555555555", "666666666666"]


def test_other_objects_are_ignored():
    assert leads_of(signed({"object": "user", "entry": [{"changes": [change("1")]}]})) == []


def test_replies_are_200_and_errors_keep_their_status():
    ok = SOURCE.reply(Outcome(accepted=[Accepted("d1", "queued"), Accepted("d2", "queued")]))
    assert ok.status == 200
    assert len(ok.body["deliveries"]) == 2
    dup = SOURCE.reply(Outcome(accepted=[Accepted("d1", "duplicate")]))
    assert dup.status == 200 and dup.body["duplicate"] is True
    assert SOURCE.reply(Outcome(error=StorageUnavailable("redis down"))).status == 503


def test_legacy_sha1_signature_alone_is_accepted():
    body = json.dumps(NOTIFICATION).encode()
    sha1 = hmac.new(APP_SECRET.encode(), body, hashlib.sha1).hexdigest()
    leads_of(signed(x_hub_signature_256=None, x_hub_signature=f"sha1={sha1}"))


def test_token_route_without_app_secret():
    route = make_route(secret=None, token="tok-1")
    req = signed(x_hub_signature_256=None)
    assert reason_of(req, route) == "missing_token"
    req = harness.request(req.body, req.headers, {"token": "tok-1"})
    assert len(leads_of(req, route)) == 1


# --- one broken thing each ----------------------------------------------------------------------


def test_flipped_body_byte():
    req = signed()
    body = bytearray(req.body)
    body[3] ^= 0x01
    assert reason_of(harness.request(bytes(body), req.headers)) == "bad_signature"


def test_wrong_secret():
    assert reason_of(signed(secret="not-the-app-secret")) == "bad_signature"


def test_missing_signature_header():
    assert reason_of(signed(x_hub_signature_256=None)) == "missing_header"


def test_signature_without_algorithm_prefix():
    mac = signed().headers["x-hub-signature-256"].removeprefix("sha256=")
    assert reason_of(signed(x_hub_signature_256=mac)) == "bad_signature"


def test_wrong_token_on_a_secret_plus_token_route():
    assert reason_of(signed(x_bridge_token="nope"), make_route(token="tok-1")) == "bad_token"


def test_config_requires_verify_token_and_access_token():
    with pytest.raises(ConfigError) as info:
        make_route(verify_token=None, access_token=None)
    assert any("verify_token: required for meta_lead_ads" in p for p in info.value.problems)
    assert any("access_token: required" in p for p in info.value.problems)
    assert not any(VERIFY_TOKEN in p or APP_SECRET in p for p in info.value.problems)


@pytest.mark.parametrize(
    "payload",
    [
        [NOTIFICATION],
        {"entry": []},
        {"object": "page", "entry": {}},
        {"object": "page", "entry": ["x"]},
        {"object": "page", "entry": [{"changes": {}}]},
        {"object": "page", "entry": [{"changes": [{"field": "leadgen", "value": None}]}]},
        {"object": "page", "entry": [{"changes": [{"field": "leadgen", "value": {}}]}]},
        {"object": "page", "entry": [{"changes": [change("../me?fields=x")]}]},
    ],
)
def test_malformed_body(payload):
    with pytest.raises(MalformedBody):
        leads_of(signed(payload))


# --- fetching the lead from a real local HTTP server ------------------------------------------


@pytest.fixture(scope="module")
def graph():
    """The Graph API: ``graph.answer(lead_id, status, body, delay)``, ``graph.seen``."""
    api = harness.FakeApi(missing=(404, {"error": {}}), prefix="/v23.0")
    yield api
    api.close()


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


LEAD_NODE = {
    "created_time": "2026-01-01T00:00:00+0000",
    "id": "1234567890123",
    "ad_id": "6045268386040",
    "form_id": "551111744595541",
    "campaign_id": "6045268386999",
    "platform": "ig",
    "is_organic": False,
    "field_data": [
        {"name": "full_name", "values": ["Meera Iyer"]},
        {"name": "phone_number", "values": ["+91 98765 43210"]},
        {"name": "email", "values": ["meera@example.com"]},
        {"name": "city", "values": ["Chennai"]},
        {"name": "which_course_are_you_interested_in?", "values": ["data_science"]},
        {"name": "preferred_days", "values": ["sat", "sun"]},
    ],
}


def fetch(graph, http, lead_id="1234567890123", route=None, timeout=2.0):
    route = route or make_route(api_base_url=graph.url)
    (lead,) = leads_of(signed({"object": "page", "entry": [{"changes": [change(lead_id)]}]}), route)
    return SOURCE.fetch(event_of(lead, route), route, http, timeout), route


def test_fetch_returns_the_full_lead_and_maps_it(graph, http):
    graph.answer("1234567890123", 200, LEAD_NODE)
    lead, route = fetch(graph, http)
    path, query = graph.seen[-1]["path"], graph.seen[-1]["query"]
    assert path == "/v23.0/1234567890123"
    assert query["access_token"] == [ACCESS_TOKEN]
    assert "field_data" in query["fields"][0]
    expected_proof = hmac.new(APP_SECRET.encode(), ACCESS_TOKEN.encode(), hashlib.sha256)
    assert query["appsecret_proof"] == [expected_proof.hexdigest()]

    assert lead.event_id == "1234567890123"
    assert lead.fetch is None
    assert lead.name == "Meera Iyer"
    assert lead.fields["which_course_are_you_interested_in?"] == "data_science"
    assert lead.fields["preferred_days"] == ["sat", "sun"]
    assert lead.fields["platform"] == "ig"
    assert lead.fields["page_id"] == "1029384756"  # from the webhook

    c = harness.contact_of(SOURCE, lead, route)
    assert c["name"] == "Meera Iyer"
    assert c["phoneNumber"] == "+919876543210"
    assert c["metadata"]["email"] == "meera@example.com"
    assert c["metadata"]["city"] == "Chennai"
    assert c["metadata"]["campaign_id"] == "6045268386999"
    assert c["metadata"]["preferred_days"] == "sat, sun"


def test_fetch_first_last_names_and_foreign_number(graph, http):
    node = {
        "id": "222",
        "field_data": [
            {"name": "first_name", "values": ["John"]},
            {"name": "last_name", "values": ["Smith"]},
            {"name": "phone_number", "values": ["07911 123456"]},
            {"name": "country", "values": ["GB"]},
        ],
    }
    graph.answer("222", 200, node)
    lead, route = fetch(graph, http, "222")
    assert lead.country == "GB"
    c = harness.contact_of(SOURCE, lead, route)
    assert c["name"] == "John Smith"
    assert c["phoneNumber"] == "+447911123456"


def test_fetch_lead_fields_option_and_no_proof_without_secret(graph, http):
    graph.answer("333", 200, {"id": "333", "field_data": []})
    route = make_route(api_base_url=graph.url, lead_fields="field_data", secret=None, token="tok-1")
    req = signed(
        {"object": "page", "entry": [{"changes": [change("333")]}]}, x_bridge_token="tok-1"
    )
    (webhook_lead,) = leads_of(req, route)
    SOURCE.fetch(event_of(webhook_lead, route), route, http, 2.0)
    query = graph.seen[-1]["query"]
    assert query["fields"] == ["field_data"]
    assert "appsecret_proof" not in query


def oauth_error(code, message="Error validating access token", **extra):
    return {
        "error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "fbtrace_id": "AbCdEf",
        }
        | extra
    }


@pytest.mark.parametrize(
    ("status", "body", "transient"),
    [
        (400, oauth_error(190), False),
        (400, oauth_error(100, "Unsupported get request."), False),
        (400, oauth_error(4, "Application request limit reached"), True),
        (400, oauth_error(80001, "too many calls"), True),
        (400, oauth_error(10, "x", is_transient=True), True),
        (500, oauth_error(2, "Service temporarily unavailable"), True),
        (502, b"<html>bad gateway</html>", True),
        (429, b"", True),
        (200, {"id": "444"}, False),
    ],
)
def test_fetch_errors(graph, http, status, body, transient):
    graph.answer("444", status, body)
    with pytest.raises(ProviderFetchError) as info:
        fetch(graph, http, "444")
    assert info.value.transient is transient
    assert info.value.status == status
    assert ACCESS_TOKEN not in info.value.message


def test_fetch_error_names_metas_error_and_never_the_token(graph, http):
    graph.answer("555", 400, oauth_error(190, f"Malformed access token {ACCESS_TOKEN}"))
    with pytest.raises(ProviderFetchError) as info:
        fetch(graph, http, "555")
    assert "OAuthException" in info.value.message
    assert "code 190" in info.value.message
    assert ACCESS_TOKEN not in info.value.message


def test_fetch_timeout_is_transient(graph, http):
    graph.answer("666", 200, LEAD_NODE, delay=0.5)
    with pytest.raises(ProviderFetchError) as info:
        fetch(graph, http, "666", timeout=0.1)
    assert info.value.transient is True


def test_fetch_connection_refused_is_transient(http):
    route = make_route(api_base_url=harness.unused_url() + "/v23.0")
    (lead,) = leads_of(signed(), route)
    with pytest.raises(ProviderFetchError) as info:
        SOURCE.fetch(event_of(lead, route), route, http, 1.0)
    assert info.value.transient is True
    assert ACCESS_TOKEN not in info.value.message


def test_fetch_refuses_an_event_without_a_lead_id(http):
    route = make_route()
    event = Event(
        route="r",
        source=SOURCE.name,
        event_id="x",
        received_at="",
        fields={},
        fetch={"kind": "meta_lead", "id": "../../me"},
    )
    with pytest.raises(ProviderFetchError) as info:
        SOURCE.fetch(event, route, http, 1.0)
    assert info.value.transient is False


# --- through the real Flask app and Redis -------------------------------------------------------


def test_through_the_app_handshake_redelivery_and_fetch(make_client, run_jobs, graph):
    graph.answer("1234567890123", 200, LEAD_NODE)
    route = route_data(api_base_url=graph.url, audience_id=None, audience_name="Meta leads")
    client = make_client(routes=[route])
    query = {
        "hub.mode": "subscribe",
        "hub.challenge": "987654321",
        "hub.verify_token": VERIFY_TOKEN,
    }
    shake = client.get("/hooks/r", query_string=query)
    assert shake.status_code == 200
    assert shake.data == b"987654321"
    assert shake.mimetype == "text/plain"
    wrong = client.get("/hooks/r", query_string=dict(query, **{"hub.verify_token": "x"}))
    assert wrong.status_code == 403

    resp, _ = harness.post_twice(client, signed(), status=200)
    assert resp.get_json()["status"] == "queued"

    # The worker fetches the lead from the (local) Graph API, maps it and delivers it.
    assert run_jobs(client.settings) == 1
    delivery = client.store.get(resp.get_json()["deliveryId"])
    assert delivery.status == "delivered", (delivery.status, delivery.reason)
    assert delivery.contact["phoneNumber"] == "+919876543210"
    assert delivery.contact["name"] == "Meera Iyer"


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload, beside the documented one, for the mutation tests to start from.
MINIMAL = {
    "object": "page",
    "entry": [{"changes": [{"field": "leadgen", "value": {"leadgen_id": "123"}}]}],
}
PROPERTY_SAMPLES = [MINIMAL, NOTIFICATION]
#: Keys every route of this source needs (the handshake's token is drawn into query strings).
PROPERTY_ROUTE = {"verify_token": VERIFY_TOKEN, "access_token": ACCESS_TOKEN}
#: Route options that reach the adapter's other branches.
PROPERTY_OPTIONS = {"lead_fields": "field_data,ad_id"}
