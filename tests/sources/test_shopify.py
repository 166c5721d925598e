"""Shopify ``customers/create`` adapter: one valid signed delivery, one broken thing per test."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json

import pytest

from bridge.exceptions import ConfigError, MalformedBody, Unmappable
from bridge.sources.shopify import SOURCE
from tests.sources import harness

SECRET = "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"
WEBHOOK_ID = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"

CUSTOMER = {
    "id": 706405506930370084,
    "email": "Priya.Nair@example.com",
    "created_at": "2026-01-01T10:00:00+05:30",
    "updated_at": "2026-01-01T10:00:00+05:30",
    "first_name": "Priya",
    "last_name": "Nair",
    "state": "disabled",
    "note": "Came from Instagram",
    "verified_email": True,
    "tax_exempt": False,
    "phone": "+919876543210",
    "tags": "vip, newsletter",
    "currency": "INR",
    "email_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in"},
    "sms_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in"},
    "admin_graphql_api_id": "gid://shopify/Customer/706405506930370084",
    "addresses": [],
    "default_address": {
        "first_name": "Priya",
        "last_name": "Nair",
        "company": "Nair Textiles",
        "address1": "12 MG Road",
        "city": "Kochi",
        "province": "Kerala",
        "country": "India",
        "zip": "682001",
        "phone": "0484 123 4567",
        "province_code": "KL",
        "country_code": "IN",
        "default": True,
    },
}


def customer(**changes):
    data = copy.deepcopy(CUSTOMER)
    for key, value in changes.items():
        data[key] = value
    return data


ROUTE_DATA = {"name": "r", "source": "shopify", "audience_name": "Shop", "secret": SECRET}


def route_data(**extra):
    return harness.route_data(ROUTE_DATA, **extra)


def make_route(**extra):
    return harness.make_route(ROUTE_DATA, **extra)


def signed(payload=None, *, secret=SECRET, body=None, topic="customers/create", **headers):
    """The one valid builder: a delivery signed as Shopify signs it."""
    body = json.dumps(CUSTOMER if payload is None else payload).encode() if body is None else body
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    base = {
        "content-type": "application/json",
        "x-shopify-topic": topic,
        "x-shopify-hmac-sha256": base64.b64encode(mac).decode(),
        "x-shopify-shop-domain": "nair-textiles.myshopify.com",
        "x-shopify-api-version": "2025-07",
        "x-shopify-webhook-id": WEBHOOK_ID,
        "x-shopify-event-id": "98880550-7158-44d4-b7cd-2c97c8a091b5",
        "x-shopify-triggered-at": "2026-01-01T04:30:00.000Z",
    }
    return harness.request(body, harness.with_headers(base, **headers))


def leads_of(req, route=None):
    return harness.leads_of(SOURCE, req, route or make_route())


def contact(lead, route=None):
    return harness.contact_of(SOURCE, lead, route or make_route())


def reason_of(req, route=None):
    return harness.reason_of(SOURCE, req, route or make_route())


# --- valid deliveries ---------------------------------------------------------------------------


def test_customer_becomes_a_lead_keyed_by_the_webhook_id():
    (lead,) = leads_of(signed())
    assert lead.event_id == WEBHOOK_ID
    assert (lead.first_name, lead.last_name) == ("Priya", "Nair")
    assert lead.phone == "+919876543210"
    assert lead.email == "Priya.Nair@example.com"
    assert lead.country == "IN"
    assert lead.fields["customer_id"] == "706405506930370084"
    assert lead.fields["tags"] == "vip, newsletter"
    assert lead.fields["sms_marketing_consent"] == "subscribed"
    assert lead.fields["shop_domain"] == "nair-textiles.myshopify.com"
    assert lead.fields["default_address"]["city"] == "Kochi"
    assert "admin_graphql_api_id" not in lead.fields

    c = contact(lead)
    assert c["name"] == "Priya Nair"
    assert c["phoneNumber"] == "+919876543210"
    assert c["metadata"]["email"] == "Priya.Nair@example.com"
    assert c["metadata"]["default_address.city"] == "Kochi"
    assert c["metadata"]["note"] == "Came from Instagram"


def test_address_phone_is_read_with_the_address_country():
    data = customer(phone=None)
    data["default_address"] = dict(
        CUSTOMER["default_address"], phone="(415) 555-0132", country_code="US", country="US"
    )
    (lead,) = leads_of(signed(data))
    assert lead.phone == "(415) 555-0132"
    assert lead.country == "US"
    assert contact(lead)["phoneNumber"] == "+14155550132"  # not the Indian +914155550132


def test_messy_local_number_falls_back_to_the_route_region():
    data = customer(phone=None)
    data["default_address"] = dict(CUSTOMER["default_address"], phone="098765-43210")
    (lead,) = leads_of(signed(data))
    assert contact(lead)["phoneNumber"] == "+919876543210"


def test_phone_from_another_address_when_default_has_none():
    data = customer(phone=None)
    data["default_address"] = dict(CUSTOMER["default_address"], phone=None)
    data["addresses"] = [
        {"phone": "", "country_code": "IN"},
        {"phone": "07911 123456", "country_code": "GB"},
    ]
    (lead,) = leads_of(signed(data))
    assert (lead.phone, lead.country) == ("07911 123456", "GB")
    assert contact(lead)["phoneNumber"] == "+447911123456"


def test_names_from_the_address_when_the_customer_has_none():
    (lead,) = leads_of(signed(customer(first_name=None, last_name=None)))
    assert contact(lead)["name"] == "Priya Nair"


def test_customer_without_phone_is_unmappable_and_accepted():
    data = customer(phone=None, default_address=None, addresses=[])
    (lead,) = leads_of(signed(data))
    assert lead.phone is None
    with pytest.raises(Unmappable):
        contact(lead)
    assert SOURCE.unmappable == "accept"


def test_other_topics_and_test_pings_are_ignored():
    assert leads_of(signed(topic="customers/update")) == []
    assert leads_of(signed(x_shopify_test="true")) == []


def test_require_sms_consent_skips_customers_without_it():
    route = make_route(require_sms_consent=True)
    data = customer(sms_marketing_consent={"state": "not_subscribed"})
    assert leads_of(signed(data), route) == []
    assert len(leads_of(signed(), route)) == 1


def test_without_webhook_id_the_body_hash_is_used():
    (lead,) = leads_of(signed(x_shopify_webhook_id=None))
    assert lead.event_id is None


def test_kept_headers_hold_no_secret():
    assert "x-shopify-hmac-sha256" not in SOURCE.kept_headers
    assert "x-shopify-webhook-id" in SOURCE.kept_headers


# --- one broken thing each ----------------------------------------------------------------------


def test_flipped_body_byte():
    req = signed()
    body = bytearray(req.body)
    body[5] ^= 0x01
    assert reason_of(harness.request(bytes(body), req.headers)) == "bad_signature"


def test_wrong_secret():
    assert reason_of(signed(secret="shpss_other")) == "bad_signature"


def test_missing_signature_header():
    assert reason_of(signed(x_shopify_hmac_sha256=None)) == "missing_header"


def test_signature_not_base64():
    assert reason_of(signed(x_shopify_hmac_sha256="not base64!")) == "bad_signature"


def test_wrong_token_on_a_secret_plus_token_route():
    route = make_route(token="tok-1")
    assert reason_of(signed(x_bridge_token="tok-2"), route) == "bad_token"
    leads_of(signed(x_bridge_token="tok-1"), route)


def test_token_only_route():
    route = make_route(secret=None, token="tok-1")
    assert reason_of(signed(), route) == "missing_token"
    leads_of(signed(x_shopify_hmac_sha256=None, x_bridge_token="tok-1"), route)


def test_config_needs_a_secret_and_a_boolean_consent_option():
    with pytest.raises(ConfigError):
        make_route(secret=None)
    with pytest.raises(ConfigError) as info:
        make_route(require_sms_consent="yes")
    assert any("require_sms_consent" in p for p in info.value.problems)


@pytest.mark.parametrize("body", [b"[1, 2]", b'"x"', b"{nope"])
def test_malformed_body(body):
    with pytest.raises(MalformedBody):
        leads_of(signed(body=body))


def test_odd_shapes_never_raise_other_errors():
    data = customer(default_address="x", addresses={"a": 1}, sms_marketing_consent=[1], id=True)
    (lead,) = leads_of(signed(data))
    assert lead.country is None


# --- through the real Flask app and Redis -------------------------------------------------------


def test_through_the_app_with_a_retry(make_client):
    client = make_client(routes=[route_data()])
    harness.post_twice(client, signed())
    # A customer without a phone is acknowledged (skipped), never a 4xx that would count
    # towards Shopify removing the subscription.
    data = customer(phone=None, default_address=None)
    nophone = signed(data, x_shopify_webhook_id="c6f1bd1e-0000-4000-8000-000000000001")
    skipped = harness.post(client, nophone)
    assert skipped.status_code == 202
    assert skipped.get_json()["status"] == "skipped"


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload, beside the documented one, for the mutation tests to start from.
MINIMAL = {
    "id": 1,
    "phone": "+919876543210",
    "default_address": {"country_code": "IN", "phone": "98765"},
    "addresses": [{"phone": "9876543210", "country_code": "IN"}],
    "sms_marketing_consent": {"state": "subscribed"},
}
PROPERTY_SAMPLES = [MINIMAL, CUSTOMER]
#: Route options that reach the adapter's other branches.
PROPERTY_OPTIONS = {"require_sms_consent": True}
