"""Zapier's "Webhooks by Zapier" action (POST, PUT or Custom Request) — and the flat-record
contract other mapped senders (WordPress form plugins) share with it.

The body is whatever the Zap maps: form-encoded (the default), JSON, XML, or an array of records
("Wrap Request In Array"). Keys are free; the mapping finds ``name`` / ``first_name`` +
``last_name`` / ``phone`` / ``email`` by their names, in any case or spelling Zapier's
"Unflatten" produces. A two-letter ``country`` is the phone's country hint; ``event_id`` (or the
``Idempotency-Key`` header) is the event id and is not kept as a field. Zapier does not sign:
the route's ``token`` (header or ``?token=``) or ``basic_auth`` (Zapier's ``user|pass``) guards it.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element

from bridge.config import Route
from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody
from bridge.mapping import squash, text
from bridge.parsing import xml_to_data
from bridge.sources.base import Source

EVENT_ID_KEYS = ("eventid",)
COUNTRY_KEYS = ("country", "countrycode")
MAX_EVENT_ID_CHARS = 200
MAX_RECORDS = 100


class ZapierSource(Source):
    name = "zapier"
    # The Zap's run history shows our 422 with its message; the user fixes the Zap and replays.
    unmappable = "reject"
    kept_headers = ("idempotency-key",)

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if isinstance(payload, Element):
            payload = xml_to_data(payload)
        key = (req.header("idempotency-key") or "").strip()[:MAX_EVENT_ID_CHARS] or None
        if isinstance(payload, dict):
            return [record_lead(payload, key)]
        if isinstance(payload, list):
            if not payload:
                raise MalformedBody("the JSON array holds no record")
            if len(payload) > MAX_RECORDS:
                raise MalformedBody(
                    f"the JSON array holds {len(payload)} records, more than {MAX_RECORDS}"
                )
            if not all(isinstance(item, dict) for item in payload):
                raise MalformedBody("every item of the JSON array must be an object of fields")
            if len(payload) == 1:
                return [record_lead(payload[0], key)]
            return [
                record_lead(item, f"{key}:{i}" if key else None) for i, item in enumerate(payload)
            ]
        raise MalformedBody(
            f"expected an object (or a form) with the lead's fields, got {type(payload).__name__}"
        )


def record_lead(record: dict[str, Any], event_id: str | None = None) -> Lead:
    """A flat (or "unflattened") record of mapped fields as a lead.

    ``event_id`` in the record wins over the one given; the country hint is read from a top-level
    or ``contact.`` key named ``country`` / ``country_code`` holding an ISO alpha-2 code.
    """
    fields: dict[str, Any] = {}
    for key, value in record.items():
        if squash(str(key)) in EVENT_ID_KEYS:
            event_id = text(value)[:MAX_EVENT_ID_CHARS] or event_id
            continue
        fields[str(key)] = value
    lead = Lead(fields=fields, event_id=event_id)
    for scope in (fields, fields.get("contact")):
        if not isinstance(scope, dict):
            continue
        for key, value in scope.items():
            code = text(value)
            if squash(str(key)) in COUNTRY_KEYS and len(code) == 2 and code.isalpha():
                lead.country = code.upper()
                return lead
    return lead


SOURCE = ZapierSource()
