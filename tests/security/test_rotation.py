"""Rotating a route's credential: ``secret = ["${OLD}", "${NEW}"]`` (``token``, ``basic_auth``,
``verify_token`` likewise) accepts both while the provider is switched over; once the old one is
removed from the list, a request made with it is refused with 401.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
import requests

from bridge.config import build_settings, load_settings
from bridge.exceptions import ConfigError
from bridge.keys import RECEIVED_STREAM
from bridge.sources import get_source
from tests.security.signed_sources import SIGNED_SOURCES, by_name
from tests.sources import harness, test_leadsquared, test_meta_lead_ads, test_zoho_crm

OLD = "old-route-token-5f1e2d3c"
NEW = "new-route-token-9a8b7c6d"


# --- signed sources ------------------------------------------------------------------------------


@pytest.mark.parametrize("source", **by_name(SIGNED_SOURCES))
def test_old_and_new_secret_during_rotation_then_only_the_new(make_client, source):
    rotating = make_client(routes=[source.route_with([source.secret, source.new_secret])])
    old = harness.post(rotating, source.signed(source.secret))
    assert old.status_code == source.accepted, old.get_json()
    assert old.get_json()["status"] == "queued"
    # The provider switched to the new secret and sends the same event again: verified, and
    # answered as the duplicate it is.
    new = harness.post(rotating, source.signed(source.new_secret))
    assert new.status_code == 200, new.get_json()
    assert new.get_json()["duplicate"] is True

    rotated = make_client(routes=[source.route_with(source.new_secret)])
    refused = harness.post(rotated, source.signed(source.secret))
    assert refused.status_code == 401
    assert refused.get_json()["error"] == "unauthorized"
    assert source.secret not in refused.get_data(as_text=True)
    assert harness.post(rotated, source.signed(source.new_secret)).status_code == 200
    assert rotating.redis.xlen(RECEIVED_STREAM) == len(old.get_json().get("deliveries") or [1])


# --- shared tokens and HTTP Basic ----------------------------------------------------------------


def generic_route(**keys):
    return {"name": "leads", "source": "generic", "audience_name": "Leads", **keys}


def lead(phone: str) -> dict:
    return {"name": "Asha Rao", "phone": phone}


def test_token_rotation(make_client):
    rotating = make_client(routes=[generic_route(token=[OLD, NEW])])
    by_header = rotating.post(
        "/hooks/leads", json=lead("9876543210"), headers={"X-Bridge-Token": OLD}
    )
    assert by_header.status_code == 202
    by_query = rotating.post(f"/hooks/leads?token={NEW}", json=lead("9820011223"))
    assert by_query.status_code == 202
    wrong = rotating.post("/hooks/leads", json=lead("9820011224"), headers={"X-Bridge-Token": "x"})
    assert wrong.status_code == 401

    rotated = make_client(routes=[generic_route(token=NEW)])
    refused = rotated.post("/hooks/leads", json=lead("9820011225"), headers={"X-Bridge-Token": OLD})
    assert refused.status_code == 401
    assert "token does not match" in refused.get_json()["message"]
    assert rotated.post(f"/hooks/leads?token={NEW}", json=lead("9820011226")).status_code == 202


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def test_basic_auth_rotation(make_client):
    rotating = make_client(routes=[generic_route(basic_auth=["zap:old-pass-1", "zap:new-pass-2"])])
    for i, credentials in enumerate(["zap:old-pass-1", "zap:new-pass-2"]):
        answer = rotating.post(
            "/hooks/leads", json=lead(f"982001122{i}"), headers=basic(credentials)
        )
        assert answer.status_code == 202, answer.get_json()
    rotated = make_client(routes=[generic_route(basic_auth=["zap:new-pass-2"])])
    refused = rotated.post("/hooks/leads", json=lead("9820011229"), headers=basic("zap:old-pass-1"))
    assert refused.status_code == 401


def test_verify_token_rotation_for_meta_handshakes(make_client):
    route = test_meta_lead_ads.route_data(verify_token=[OLD, NEW])
    query = {"hub.mode": "subscribe", "hub.challenge": "4711"}
    rotating = make_client(routes=[route])
    for token in (OLD, NEW):
        answer = rotating.get("/hooks/r", query_string={**query, "hub.verify_token": token})
        assert answer.status_code == 200
        assert answer.data == b"4711"
    rotated = make_client(routes=[test_meta_lead_ads.route_data(verify_token=NEW)])
    old = rotated.get("/hooks/r", query_string={**query, "hub.verify_token": OLD})
    assert old.status_code == 403


def test_meta_proves_the_app_secret_with_the_newest_one():
    # appsecret_proof is made with one secret: the last listed, the one the app holds once the
    # secret is reset in Meta. Requests signed with either are accepted meanwhile.
    graph = harness.FakeApi(prefix="/v23.0")
    graph.answer("1234567890123", 200, test_meta_lead_ads.LEAD_NODE)
    old, new = test_meta_lead_ads.APP_SECRET, "new-app-secret-2c4e6a8b"
    route = test_meta_lead_ads.make_route(api_base_url=graph.url, secret=[old, new])
    source = get_source("meta_lead_ads")
    try:
        with requests.Session() as http:
            for secret in (old, new):
                (webhook_lead,) = harness.leads_of(
                    source, test_meta_lead_ads.signed(secret=secret), route
                )
                event = harness.event_of(source, webhook_lead, route)
                assert source.fetch(event, route, http, 2.0).name == "Meera Iyer"
    finally:
        graph.close()
    proof = hmac.new(new.encode(), test_meta_lead_ads.ACCESS_TOKEN.encode(), hashlib.sha256)
    assert [seen["query"]["appsecret_proof"] for seen in graph.seen] == [[proof.hexdigest()]] * 2


@pytest.mark.parametrize(
    ("module", "header"),
    [(test_leadsquared, "x-api-key"), (test_zoho_crm, "x-bridge-token")],
    ids=["leadsquared", "zoho_crm"],
)
def test_sources_with_their_own_token_places_take_every_listed_token(module, header):
    source = get_source(module.ROUTE_DATA["source"])
    route = module.make_route(token=[OLD, NEW])
    for token in (OLD, NEW):
        source.verify(harness.request(b"{}", {header: token}), route)
    only_new = module.make_route(token=NEW)
    assert harness.reason_of(source, harness.request(b"{}", {header: OLD}), only_new) == "bad_token"


def test_zoho_body_token_rotation():
    source = get_source("zoho_crm")
    route = test_zoho_crm.make_route(token=[OLD, NEW])
    form = {"content-type": "application/x-www-form-urlencoded"}
    for token in (OLD, NEW):
        source.verify(harness.request(f"token={token}&Mobile=9876543210".encode(), form), route)
    only_new = test_zoho_crm.make_route(token=NEW)
    req = harness.request(f"token={OLD}&Mobile=9876543210".encode(), form)
    assert harness.reason_of(source, req, only_new) == "bad_token"


# --- configuration -------------------------------------------------------------------------------


def problems(**keys) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_settings({"routes": [generic_route(**keys)]}, env={})
    return info.value.problems


def test_a_bad_entry_is_named_by_its_place_never_by_its_value():
    assert problems(token=[OLD, ""]) == ["routes[leads].token[1]: must not be empty"]
    assert problems(secret=[7, OLD]) == ["routes[leads].secret[0]: must be a string, not a number"]
    assert problems(basic_auth=["zap:pw", "nocolon-secret"]) == [
        'routes[leads].basic_auth[1]: must be "user:password"'
    ]
    assert problems(token=[]) == [
        "routes[leads].token: must not be an empty list "
        "(one value, or the old and the new while rotating)"
    ]
    assert problems(verify_token={"old": OLD}) == [
        "routes[leads].verify_token: must be a string, or a list of strings while rotating it, "
        "not a table"
    ]
    for text in problems(token=[OLD, ""]) + problems(basic_auth=["nocolon-secret"]):
        assert OLD not in text and "nocolon-secret" not in text


def test_an_unset_variable_in_a_rotation_list_is_named(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        '[[routes]]\nname = "tf"\nsource = "typeform"\naudience_name = "A"\n'
        'secret = ["${TF_OLD}", "${TF_NEW}"]\n'
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={"TF_OLD": OLD})
    assert "routes[tf].secret[1]: environment variable TF_NEW is not set" in info.value.problems

    settings = load_settings(path, env={"TF_OLD": OLD, "TF_NEW": NEW})
    assert settings.routes["tf"].values_of("secret") == (OLD, NEW)
    assert {OLD, NEW} <= set(settings.secrets())
    assert OLD not in repr(settings) and NEW not in repr(settings)


def test_a_whsec_list_names_the_entry_that_is_not_base64():
    good = "whsec_" + base64.b64encode(b"k" * 32).decode()
    with pytest.raises(ConfigError) as info:
        build_settings(
            {
                "routes": [
                    {
                        "name": "sw",
                        "source": "standard_webhooks",
                        "audience_name": "A",
                        "secret": [good, "whsec_***"],
                    }
                ]
            },
            env={},
        )
    assert info.value.problems == [
        "routes[sw].secret[1]: must be the producer's whsec_... secret (base64 after the prefix)"
    ]


def test_every_listed_value_is_redacted_from_what_is_stored(make_client):
    client = make_client(routes=[generic_route(token=[OLD, NEW])])
    body = {**lead("9876543210"), "note": f"old {OLD} and new {NEW}"}
    answer = client.post("/hooks/leads", json=body, headers={"X-Bridge-Token": NEW})
    assert answer.status_code == 202
    delivery = client.store.get(answer.get_json()["deliveryId"])
    stored = repr(delivery.event.fields) + repr(delivery.contact) + repr(client.store.raw(delivery))
    assert OLD not in stored and NEW not in stored
    assert "[redacted]" in stored
