"""Zoho CRM: a workflow rule's "Webhook" instant action, whose body the admin composes.

The body is form-data (key/value pairs of merge fields, sent form-encoded) or raw JSON / XML
with merge fields such as ``${Leads.Mobile}``; its keys are whatever the admin typed, usually the
Zoho API names (``First_Name``, ``Last_Name``, ``Mobile``, ``Phone``, ``Email``). Zoho signs
nothing: the route's token comes as a URL parameter, a custom header, or a ``token`` parameter
in the body (the legacy "custom parameters", meant for exactly this); it is never kept as a
field.
"""

from __future__ import annotations

import re
from typing import Any
from xml.etree.ElementTree import Element

from bridge.event import InboundRequest, Lead
from bridge.exceptions import IngestError, MalformedBody, SignatureInvalid
from bridge.parsing import parse_body, xml_to_data
from bridge.settings import Route
from bridge.signatures import (
    TOKEN_HEADER,
    TOKEN_QUERY,
    check_basic_auth,
    check_shared_credentials,
    check_token_value,
)
from bridge.sources.base import Source
from bridge.values import clean_text, country_code

#: The body parameter that may carry the route's token.
BODY_TOKEN_KEY = "token"
#: Keys (lower-case, letters and digits only) in order of preference for each hint. Zoho's
#: ``Mobile`` comes before ``Phone``: a lead's office line is the worse number to call.
HINT_KEYS = {
    "first_name": ("firstname",),
    "last_name": ("lastname",),
    "name": ("fullname", "name", "leadname", "contactname"),
    "phone": ("mobile", "mobilenumber", "mobilephone", "phone", "phonenumber", "otherphone"),
    "email": ("email", "emailaddress", "secondaryemail"),
    "country": ("countrycode", "country"),
}
#: Keys of Zoho's Notifications API (``/actions/watch``) callbacks, which carry ids only.
NOTIFICATION_KEYS = {"channel_id", "ids", "operation"}


class ZohoCrmSource(Source):
    name = "zoho_crm"
    # Zoho lists failed webhook calls with their answer ("webhook failures") and does not
    # retry them, so a 422 naming the missing phone is where the admin will look.
    unmappable = "reject"

    def verify(self, req: InboundRequest, route: Route) -> None:
        if route.token and not (req.header(TOKEN_HEADER) or req.query.get(TOKEN_QUERY)):
            given = body_token(req)
            if given is None:
                raise SignatureInvalid(
                    "missing token: send it as the X-Bridge-Token header, the ?token= URL "
                    "parameter or a 'token' body parameter",
                    reason="missing_token",
                )
            check_token_value(given, route.values_of("token"))
            if route.basic_auth:
                check_basic_auth(req, route.values_of("basic_auth"))
            return
        check_shared_credentials(req, route)

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        records = records_of(payload)
        secrets = set(route.secrets())
        for credentials in route.values_of("basic_auth"):
            password = credentials.partition(":")[2]
            if password:
                secrets.add(password)
        leads = []
        for record in records:
            fields = {
                str(k): v
                for k, v in record.items()
                if str(k).lower() != BODY_TOKEN_KEY and not (isinstance(v, str) and v in secrets)
            }
            leads.append(with_hints(Lead(fields=fields), fields))
        return leads


def body_token(req: InboundRequest) -> str | None:
    """The ``token`` parameter of a form or JSON body, if there is one."""
    try:
        payload = parse_body(req)
    except IngestError:
        return None  # normalize reports the unreadable body
    if isinstance(payload, dict):
        for key, value in payload.items():
            if str(key).lower() == BODY_TOKEN_KEY and isinstance(value, str) and value:
                return value
    return None


def records_of(payload: Any) -> list[dict[str, Any]]:
    """The records in a body: one object, or a list / ``{"data": [...]}`` of them."""
    if isinstance(payload, Element):
        payload = xml_to_data(payload)
        # <Lead><First_Name>..</First_Name></Lead> inside a wrapper element: unwrap it.
        while isinstance(payload, dict) and len(payload) == 1:
            inner = next(iter(payload.values()))
            if not isinstance(inner, (dict, list)):
                break
            payload = inner
    if isinstance(payload, dict):
        if NOTIFICATION_KEYS <= set(payload):
            raise MalformedBody(
                "this is a Zoho Notifications API callback (record ids only); send the record's "
                "fields from a workflow rule's webhook action instead"
            )
        data = payload.get("data")
        if len(payload) == 1 and isinstance(data, list):
            payload = data
        else:
            return [payload]
    if isinstance(payload, list):
        if not payload or not all(isinstance(item, dict) for item in payload):
            raise MalformedBody("expected a list of record objects")
        return payload
    raise MalformedBody(
        "expected the record's fields as a form, a JSON object or XML, got "
        f"{type(payload).__name__}"
    )


def with_hints(lead: Lead, fields: dict[str, Any]) -> Lead:
    by_key: dict[str, Any] = {}
    for key, value in fields.items():
        squashed = re.sub(r"[^a-z0-9]", "", key.lower())
        if squashed not in by_key and clean_text(value):
            by_key[squashed] = value
    found = {
        hint: next((clean_text(by_key[k]) for k in keys if k in by_key), None)
        for hint, keys in HINT_KEYS.items()
    }
    lead.first_name = found["first_name"]
    lead.last_name = found["last_name"]
    lead.name = found["name"]
    lead.phone = found["phone"]
    lead.email = found["email"]
    # The first country key present decides, valid or not (unlike ``first_country``).
    lead.country = country_code(found["country"])
    return lead


SOURCE = ZohoCrmSource()
