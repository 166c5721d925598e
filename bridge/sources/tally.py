"""Tally: one ``FORM_RESPONSE`` per request, signed with the webhook's optional signing secret.

Each answer is keyed by its question's label (a hidden field's label is its name); a label used
twice gets `` (2)``. Choice answers arrive as option ids and are turned back into the options'
text. ``INPUT_PHONE_NUMBER`` and ``INPUT_EMAIL`` answers become the lead's typed hints. The
response id is the event id, so retries and re-sends of one response count once.
"""

from __future__ import annotations

from typing import Any

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody
from bridge.settings import Route
from bridge.signatures import Scheme
from bridge.sources.base import MAX_EVENT_ID_CHARS, Source
from bridge.values import put_field, text

#: ``Tally-Signature: <base64 HMAC-SHA256 of the raw body>``; no prefix, no timestamp.
SCHEME = Scheme(
    header="tally-signature",
    encoding="base64",
    hint="that the route's secret is the webhook's signing secret",
)

SINGLE_CHOICE = {"MULTIPLE_CHOICE", "DROPDOWN"}
MULTI_CHOICE = {"CHECKBOXES", "MULTI_SELECT", "RANKING"}
FILE_TYPES = {"FILE_UPLOAD", "SIGNATURE"}


class TallySource(Source):
    name = "tally"
    signs = True
    # Tally retries a 4xx five times over a day to no end; the respondent never sees it.
    unmappable = "accept"
    schemes = (SCHEME,)

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if not isinstance(payload, dict):
            raise MalformedBody("expected a Tally webhook object")
        if payload.get("eventType", "FORM_RESPONSE") != "FORM_RESPONSE":
            return []
        data = payload.get("data")
        if not isinstance(data, dict):
            raise MalformedBody("data is missing or not an object")
        items = data.get("fields")
        if not isinstance(items, list):
            raise MalformedBody("data.fields is missing or not a list")

        lead = Lead()
        repeats: dict[str, int] = {}
        for item in items:
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            value = item.get("value")
            if value is None:
                continue  # hidden fields absent from the form URL, unanswered questions
            if kind == "CHECKBOXES" and isinstance(value, bool):
                continue  # one flag per option, repeating the question's own entry
            value = answer_value(item)
            label = text(item.get("label")) or text(item.get("key")) or "field"
            put_field(lead.fields, label, value, repeats)
            if isinstance(value, str) and value.strip():
                if kind == "INPUT_PHONE_NUMBER" and not lead.phone:
                    lead.phone = value
                elif kind == "INPUT_EMAIL" and not lead.email:
                    lead.email = value

        event_id = (
            text(data.get("responseId"))
            or text(data.get("submissionId"))
            or text(payload.get("eventId"))
        )
        lead.event_id = event_id[:MAX_EVENT_ID_CHARS] or None
        return [lead]


def answer_value(item: dict[str, Any]) -> Any:
    """The answer as the respondent saw it: option text for choices, URLs for uploads."""
    kind = item.get("type")
    value = item.get("value")
    if not isinstance(kind, str):
        return value
    if kind in SINGLE_CHOICE or kind in MULTI_CHOICE:
        texts = _option_texts(item.get("options"))
        chosen = value if isinstance(value, list) else [value]
        out = [texts.get(v, v) if isinstance(v, str) else v for v in chosen]
        if kind in SINGLE_CHOICE and len(out) == 1:
            return out[0]
        return out
    if kind in FILE_TYPES and isinstance(value, list):
        return [f.get("url") or f.get("name") if isinstance(f, dict) else f for f in value]
    if kind == "MATRIX" and isinstance(value, dict):
        rows = _option_texts(item.get("rows"))
        cols = _option_texts(item.get("columns"))
        return {
            rows.get(row, row): [cols.get(c, c) if isinstance(c, str) else c for c in picked]
            if isinstance(picked, list)
            else picked
            for row, picked in value.items()
        }
    return value


def _option_texts(options: Any) -> dict[str, Any]:
    if not isinstance(options, list):
        return {}
    return {
        o["id"]: o["text"] if isinstance(o.get("text"), str) and o["text"] else o["id"]
        for o in options
        if isinstance(o, dict) and isinstance(o.get("id"), str)
    }


SOURCE = TallySource()
