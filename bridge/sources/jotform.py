"""Jotform: a multipart form per submission whose ``rawRequest`` part holds the answers as JSON.

Answers are keyed ``q<N>_<uniqueName>`` in ``rawRequest``; the event's fields use the unique name
alone (what the form builder shows under "Unique Name"). Full-name answers become first/last
hints, phone answers (``{"full": ...}`` or the older ``{"area", "phone"}``) become one string and
the phone hint. Jotform does not sign: the route's ``token`` goes into the webhook URL
(``?token=``). ``submissionID`` is the event id.
"""

from __future__ import annotations

import re
from typing import Any

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody
from bridge.parsing import parse_json
from bridge.settings import Route
from bridge.sources.base import MAX_EVENT_ID_CHARS, Source
from bridge.values import country_code, text

ANSWER_KEY = re.compile(r"^q\d+_(.+)$")
NAME_PARTS = {"first", "middle", "last", "prefix", "suffix"}
PHONE_PARTS = ("country", "area", "phone")


class JotformSource(Source):
    name = "jotform"
    # Nobody sees Jotform's webhook answers and a failed delivery is not known to be retried:
    # record the submission (replayable) rather than lose it to a 422.
    unmappable = "accept"

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if not isinstance(payload, dict):
            raise MalformedBody("expected Jotform's form post (multipart with rawRequest)")
        raw = payload.get("rawRequest")
        if isinstance(raw, str):
            answers = parse_json(raw, "rawRequest")
            if not isinstance(answers, dict):
                raise MalformedBody("rawRequest is not a JSON object")
        elif isinstance(raw, dict):
            answers = raw  # a relay that re-posted the webhook as JSON
        elif raw is None and any(ANSWER_KEY.match(str(k)) for k in payload):
            answers = payload  # answers posted as plain form fields
        else:
            raise MalformedBody("rawRequest is missing: expected Jotform's webhook post")

        lead = Lead()
        for key, value in answers.items():
            match = ANSWER_KEY.match(str(key))
            if not match:
                continue  # slug, path, event_id and other bookkeeping of the form page
            name = match.group(1)
            if isinstance(value, dict) and _is_phone(value):
                value = _phone_text(value)
                if value and not lead.phone:
                    lead.phone = value
            elif isinstance(value, dict) and _is_name(value):
                if not lead.first_name and not lead.last_name:
                    lead.first_name = text(value.get("first")) or None
                    lead.last_name = text(value.get("last")) or None
            elif isinstance(value, dict) and not lead.country:
                lead.country = country_code(text(value.get("country")))
            lead.fields.setdefault(name, value)

        event_id = text(payload.get("submissionID"))[:MAX_EVENT_ID_CHARS]
        lead.event_id = event_id or None
        return [lead]


def _is_name(value: dict[str, Any]) -> bool:
    return bool(value) and set(value) <= NAME_PARTS and ("first" in value or "last" in value)


def _is_phone(value: dict[str, Any]) -> bool:
    keys = set(value)
    if "full" in value:
        return keys <= {"full", *PHONE_PARTS}
    return "phone" in value and keys <= set(PHONE_PARTS)


def _phone_text(value: dict[str, Any]) -> str:
    full = text(value.get("full"))
    if full:
        return full
    return " ".join(p for p in (text(value.get(k)) for k in PHONE_PARTS) if p)


SOURCE = JotformSource()
