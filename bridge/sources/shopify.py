"""Shopify ``customers/create`` webhooks: each new customer of a shop becomes a lead.

The body is the REST Customer resource, signed ``X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256>``
with the app's client secret (or, for a webhook made in the shop admin, the signing key shown
there). The ``X-Shopify-Webhook-Id`` header stays the same across retries: it is the event id.
"""

from __future__ import annotations

from typing import Any

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody
from bridge.phone import InvalidPhone, to_e164
from bridge.settings import Route
from bridge.signatures import Scheme
from bridge.sources.base import MAX_EVENT_ID_CHARS, Source
from bridge.values import clean_text, country_code, present

#: ``X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the raw body>``; no timestamp.
SCHEME = Scheme(
    header="x-shopify-hmac-sha256",
    encoding="base64",
    hint="that the route's secret is the app's client secret, or the admin's webhook signing key",
)
LEAD_TOPIC = "customers/create"
# Customer keys kept as fields (the rest is bookkeeping: ids, GraphQL ids, tax flags).
CUSTOMER_KEYS = (
    "first_name",
    "last_name",
    "email",
    "phone",
    "tags",
    "note",
    "currency",
    "state",
    "verified_email",
    "created_at",
)
# Address keys kept under ``default_address``.
ADDRESS_KEYS = (
    "company",
    "address1",
    "address2",
    "city",
    "province",
    "province_code",
    "zip",
    "country",
    "country_code",
    "phone",
)


class ShopifySource(Source):
    name = "shopify"
    signs = True
    # Many customers have no phone at all. Shopify retries non-2xx 8 times over 4 h and then
    # deletes the subscription: such a customer is recorded as skipped and acknowledged.
    unmappable = "accept"
    schemes = (SCHEME,)
    # The event id, X-Shopify-Webhook-Id, is not signed: anyone holding one captured request
    # could mint new ids for it. The signed body (the customer, created once) is deduplicated too.
    dedups_body = True
    kept_headers = (
        "x-shopify-topic",
        "x-shopify-webhook-id",
        "x-shopify-shop-domain",
        "x-shopify-test",
    )

    def check_route(self, route: Route) -> list[str]:
        consent = route.options.get("require_sms_consent")
        if consent is not None and not isinstance(consent, bool):
            return ["require_sms_consent: must be true or false"]
        return []

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        topic = (req.header("x-shopify-topic") or LEAD_TOPIC).strip().lower()
        if topic != LEAD_TOPIC:
            return []  # the app may share this URL with other topics
        if (req.header("x-shopify-test") or "").strip().lower() == "true":
            return []  # "Send test notification" from the admin: sample data, not a customer
        if not isinstance(payload, dict):
            raise MalformedBody("expected the Customer resource as a JSON object")
        if (
            route.options.get("require_sms_consent") is True
            and sms_consent(payload) != "subscribed"
        ):
            return []
        webhook_id = (req.header("x-shopify-webhook-id") or "").strip()[:MAX_EVENT_ID_CHARS]
        return [customer_lead(payload, req, route, webhook_id or None)]


def customer_lead(
    customer: dict[str, Any], req: InboundRequest, route: Route, webhook_id: str | None
) -> Lead:
    fields: dict[str, Any] = {}
    customer_id = customer.get("id")
    if isinstance(customer_id, (int, str)) and not isinstance(customer_id, bool):
        fields["customer_id"] = str(customer_id)
    for key in CUSTOMER_KEYS:
        value = customer.get(key)
        if present(value):
            fields[key] = value
    for key in ("sms_marketing_consent", "email_marketing_consent"):
        consent = customer.get(key)
        if isinstance(consent, dict) and present(consent.get("state")):
            fields[key] = consent["state"]
    shop = (req.header("x-shopify-shop-domain") or "").strip()
    if shop:
        fields["shop_domain"] = shop

    default = customer.get("default_address")
    default = default if isinstance(default, dict) else {}
    address = {k: default[k] for k in ADDRESS_KEYS if present(default.get(k))}
    if address:
        fields["default_address"] = address

    # The customer's own phone is E.164 (validated by Shopify); address phones are free text,
    # read with the country of their own address.
    candidates = [(_text(customer.get("phone")), _country(default))]
    candidates.append((_text(default.get("phone")), _country(default)))
    addresses = customer.get("addresses")
    for item in addresses if isinstance(addresses, list) else []:
        if isinstance(item, dict):
            candidates.append((_text(item.get("phone")), _country(item)))
    phone, country = best_phone(candidates, route.region)
    return Lead(
        fields=fields,
        event_id=webhook_id,
        first_name=_text(customer.get("first_name")) or _text(default.get("first_name")),
        last_name=_text(customer.get("last_name")) or _text(default.get("last_name")),
        phone=phone,
        email=_text(customer.get("email")),
        country=country or _country(default),
    )


def best_phone(
    candidates: list[tuple[str | None, str | None]], region: str
) -> tuple[str | None, str | None]:
    """The first (number, country) that parses; else the first number, so the mapping says why."""
    present = [(n, c) for n, c in candidates if n]
    for number, country in present:
        try:
            to_e164(number, region=region, country_hint=country)
        except InvalidPhone:
            continue
        return number, country
    return present[0] if present else (None, None)


def sms_consent(customer: dict[str, Any]) -> str | None:
    consent = customer.get("sms_marketing_consent")
    state = consent.get("state") if isinstance(consent, dict) else None
    return state.lower() if isinstance(state, str) else None


def _country(address: dict[str, Any]) -> str | None:
    return country_code(address.get("country_code"))


def _text(value: Any) -> str | None:
    # Shopify's typed fields are strings: anything else is no name, phone or e-mail.
    return clean_text(value, (str,))


SOURCE = ShopifySource()
