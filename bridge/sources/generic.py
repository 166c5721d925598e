"""Any sender that posts the lead itself: Make, n8n, custom code, a plain HTML form.

JSON (an object, or an array holding one object), form-encoded, multipart or XML. The parsed
body is the event's ``fields``; the ``Idempotency-Key`` header, when sent, is the event id.
Authentication is the route's ``token`` (``X-Bridge-Token`` header or ``?token=``) and/or
``basic_auth``.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody
from bridge.parsing import xml_to_data
from bridge.settings import Route
from bridge.sources.base import MAX_EVENT_ID_CHARS, Source


class GenericSource(Source):
    name = "generic"
    kept_headers = ("idempotency-key",)

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if isinstance(payload, Element):
            payload = xml_to_data(payload)
            if not isinstance(payload, dict):
                raise MalformedBody("XML body has no fields")
        if isinstance(payload, list):
            if len(payload) != 1:
                raise MalformedBody(
                    f"a JSON array must hold exactly one lead object, got {len(payload)} items"
                )
            payload = payload[0]
        if not isinstance(payload, dict):
            raise MalformedBody(
                f"expected a JSON object (or a form) with the lead's fields, got "
                f"{type(payload).__name__}"
            )
        key = (req.header("idempotency-key") or "").strip()[:MAX_EVENT_ID_CHARS] or None
        return [Lead(fields=payload, event_id=key)]


SOURCE = GenericSource()
