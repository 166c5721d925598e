"""Freshsales (Freshworks CRM): a workflow's "Trigger Webhook" action.

The admin composes the body (JSON, XML or form) from placeholders such as
``{{contact.mobile_number}}``; the recommended shape wraps the record in ``{"contact": {...}}``
(or ``"lead"``), whose keys are Freshsales field names: ``first_name``, ``last_name``,
``mobile_number``, ``work_number``, ``email``. Freshsales signs nothing; the webhook's
username/password (the route's ``basic_auth``) or a custom header (``X-Bridge-Token``)
authenticates it.
"""

from __future__ import annotations

import re
from typing import Any
from xml.etree.ElementTree import Element

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody
from bridge.parsing import xml_to_data
from bridge.settings import Route
from bridge.sources.base import Source
from bridge.values import clean_text, first_country, first_text

#: Record wrappers of the advanced body; their keys become the lead's fields.
RECORD_KEYS = ("contact", "lead")
#: ``contact[first_name]``-style form keys.
BRACKETED = re.compile(r"^(contact|lead)\[([^\]]+)\]$")
PHONE_FIELDS = ("mobile_number", "work_number", "phone", "mobile", "phone_number")
COUNTRY_FIELDS = ("country_code", "country")


class FreshsalesSource(Source):
    name = "freshsales"
    # Retries are not documented and nothing says a 4xx disables the workflow action: a 422
    # naming the missing phone is the clearest answer for whoever reads the workflow's log.
    unmappable = "reject"

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if isinstance(payload, Element):
            payload = xml_to_data(payload)
        if not isinstance(payload, dict):
            raise MalformedBody(
                f"expected the record as a JSON object, XML or a form, got {type(payload).__name__}"
            )
        fields = record_fields(payload)
        # No event id: Freshsales headers are static, so only the body tells two sends apart.
        return [with_hints(Lead(fields=fields), fields)]


def record_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """The record's fields at the top level, whatever wrapper the admin used."""
    fields: dict[str, Any] = {}
    wrapped: dict[str, Any] = {}
    for key, value in payload.items():
        key = str(key)
        match = BRACKETED.match(key)
        if key in RECORD_KEYS and isinstance(value, dict):
            wrapped.update({str(k): v for k, v in value.items()})
        elif match:
            wrapped[match.group(2)] = value
        else:
            fields[key] = value
    # The record's own fields first; other top-level keys (a static "source", say) after.
    return {k: v for k, v in wrapped.items() if not _blank(v)} | {
        k: v for k, v in fields.items() if not _blank(v) and k not in wrapped
    }


def with_hints(lead: Lead, fields: dict[str, Any]) -> Lead:
    lead.first_name = clean_text(fields.get("first_name"))
    lead.last_name = clean_text(fields.get("last_name"))
    lead.email = clean_text(fields.get("email"))
    lead.phone = first_text(fields, PHONE_FIELDS)
    lead.country = first_country(fields, COUNTRY_FIELDS)
    return lead


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


SOURCE = FreshsalesSource()
