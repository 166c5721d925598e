"""IndiaMART Lead Manager "Push API": each buyer enquiry is pushed as one JSON document.

IndiaMART neither signs nor authenticates its pushes, so the route requires a ``token`` that
travels in the push URL (``?token=``). The body is ``{"CODE": 200, "STATUS": "SUCCESS",
"RESPONSE": {...}}``; the Pull API's array form of ``RESPONSE`` is accepted too (one lead per
record), so back-filled records can be posted to the same route.
"""

from __future__ import annotations

import html
import re
from typing import Any

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody
from bridge.phone import InvalidPhone, to_e164
from bridge.settings import Route
from bridge.sources.base import Source
from bridge.values import clean_text, country_code, id_text

# Where the buyer's number may be, best first.
PHONE_KEYS = ("SENDER_MOBILE", "SENDER_MOBILE_ALT", "SENDER_PHONE", "SENDER_PHONE_ALT")
EMAIL_KEYS = ("SENDER_EMAIL", "SENDER_EMAIL_ALT")
# The seller's own number on a PNS call: dropped, or the mapping could take it for the buyer's.
SELLER_KEYS = ("RECEIVER_MOBILE",)
LINE_BREAK = re.compile(r"<br\s*/?>", re.I)
TAG = re.compile(r"<[^>]{0,200}>")


class IndiaMartSource(Source):
    name = "indiamart"
    # Integrators report IndiaMART re-pushes until it gets a 2xx and switches the Push API off
    # after ~48 h of failures: an enquiry without a usable number must not block the hook.
    unmappable = "accept"
    # IndiaMART's retry rules are undocumented; a plain 200 is what every integration guide
    # answers, so never risk a 202 being read as a failure.
    answers_200 = True

    def check_route(self, route: Route) -> list[str]:
        if route.token or route.basic_auth:
            return []
        return [
            "token: required for indiamart: IndiaMART does not sign its pushes, so the push URL "
            "must carry ?token=<token>"
        ]

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if not isinstance(payload, dict):
            raise MalformedBody("expected a JSON object with 'RESPONSE'")
        if "RESPONSE" in payload:
            records = payload["RESPONSE"]
        elif "UNIQUE_QUERY_ID" in payload:
            records = payload  # a bare record, as some relays forward it
        else:
            raise MalformedBody("'RESPONSE' is missing: not an IndiaMART push")
        if records is None or records == []:
            return []  # a push without an enquiry (or an empty Pull API window)
        if isinstance(records, dict):
            records = [records]
        if not isinstance(records, list):
            raise MalformedBody("'RESPONSE' must be an object or an array of objects")
        leads = []
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise MalformedBody(f"RESPONSE[{i}] must be an object")
            leads.append(record_lead(record, route))
        return leads


def record_lead(record: dict[str, Any], route: Route) -> Lead:
    fields: dict[str, Any] = {}
    for key, value in record.items():
        if not isinstance(key, str) or key in SELLER_KEYS:
            continue
        if isinstance(value, str):
            value = value.strip()
            if key == "QUERY_MESSAGE":
                value = clean_message(value)
            elif key in EMAIL_KEYS:
                value = value.lower()
        if value is None or value == "" or isinstance(value, (dict, list)):
            continue
        fields[key] = value

    country = country_code(record.get("SENDER_COUNTRY_ISO"))
    return Lead(
        fields=fields,
        event_id=id_text(record.get("UNIQUE_QUERY_ID"), max_chars=None),
        name=clean_text(record.get("SENDER_NAME"), (str, int)),
        phone=best_phone(
            [clean_text(record.get(k), (str, int)) for k in PHONE_KEYS], route.region, country
        ),
        email=next((fields[k] for k in EMAIL_KEYS if isinstance(fields.get(k), str)), None),
        country=country,
    )


def best_phone(candidates: list[str | None], region: str, country: str | None) -> str | None:
    """The first number that parses; else the first one given, so the mapping names the error."""
    present = [c for c in candidates if c]
    for candidate in present:
        try:
            to_e164(candidate, region=region, country_hint=country)
        except InvalidPhone:
            continue
        return candidate
    return present[0] if present else None


def clean_message(text: str) -> str:
    """IndiaMART sends the enquiry as HTML fragments: ``<br>`` → newline, entities decoded."""
    text = LINE_BREAK.sub("\n", text)
    text = TAG.sub("", text)
    return "\n".join(line.strip() for line in html.unescape(text).splitlines()).strip()


SOURCE = IndiaMartSource()
