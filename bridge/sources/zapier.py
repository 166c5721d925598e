"""Zapier's "Webhooks by Zapier" action (POST, PUT or Custom Request), whose flat-record contract
(``bridge.sources.base.flat_record_lead``) other mapped senders (WordPress form plugins) share.

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

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody
from bridge.parsing import xml_to_data
from bridge.settings import Route
from bridge.sources.base import MAX_EVENT_ID_CHARS, Source, flat_record_lead

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
            return [flat_record_lead(payload, key)]
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
                return [flat_record_lead(payload[0], key)]
            return [
                flat_record_lead(item, f"{key}:{i}" if key else None)
                for i, item in enumerate(payload)
            ]
        raise MalformedBody(
            f"expected an object (or a form) with the lead's fields, got {type(payload).__name__}"
        )


SOURCE = ZapierSource()
