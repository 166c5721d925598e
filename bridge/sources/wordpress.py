"""WordPress form plugins — Gravity Forms, Contact Form 7, WPForms — told apart by body shape.

- Gravity Forms Webhooks Add-On with Request Body "All Fields": the raw entry, keyed by field id
  (``"3"``) and input id (``"1.3"`` first name, ``"1.6"`` last name), plus entry meta (``id``,
  ``form_id``, ``source_url``...). Field ids are what the form editor shows, so they stay the
  keys; the Name field's inputs become first/last hints, the first e-mail-looking and
  phone-looking answers the e-mail and phone hints (ids say nothing about meaning), UTM
  parameters of ``source_url`` are added, and the entry ``id`` is the event id.
- Contact Form 7 (through a webhook add-on): ``get_posted_data()`` keyed by form-tag names
  (``your-name``, ``your-tel``); ``_wpcf7*`` bookkeeping dropped, one-item lists unwrapped.
- Anything else (WPForms key/value bodies, Gravity "Select Fields"): the flat-record contract
  shared with Zapier (``bridge.sources.base.flat_record_lead``).

None of them signs: the route's ``token`` (``X-Bridge-Token`` header or ``?token=``) or
``basic_auth`` guards it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody
from bridge.settings import Route
from bridge.sources.base import MAX_EVENT_ID_CHARS, Source, flat_record_lead
from bridge.values import country_code, text

GRAVITY_KEY = re.compile(r"^(\d+)(?:\.(\d+))?$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PHONE_CHARS = re.compile(r"^\+?[\d\s().\-/]+$")
# Gravity Forms Name field inputs: .2 prefix, .3 first, .4 middle, .6 last, .8 suffix.
# Address inputs use .1 street and .5 postcode, which a Name field never has.
ADDRESS_ONLY_INPUTS = {"1", "5"}
ADDRESS_COUNTRY_INPUT = "6"


class WordPressSource(Source):
    name = "wordpress"
    # The plugins post once, during the visitor's submission, and nobody reads their logs: a 422
    # would lose the lead, a skipped delivery can be fixed and replayed.
    unmappable = "accept"

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if isinstance(payload, list) and len(payload) == 1:
            payload = payload[0]
        if not isinstance(payload, dict):
            raise MalformedBody(
                "expected an object (JSON or form) with the submission's fields, got "
                f"{type(payload).__name__}"
            )
        if is_gravity_entry(payload):
            return [gravity_lead(payload)]
        if any(str(k).startswith(("_wpcf7", "your-")) for k in payload):
            return [flat_record_lead(contact_form_7_fields(payload))]
        return [flat_record_lead(payload)]


def is_gravity_entry(payload: dict[str, Any]) -> bool:
    return (
        "form_id" in payload and "id" in payload and any(GRAVITY_KEY.match(str(k)) for k in payload)
    )


def gravity_lead(entry: dict[str, Any]) -> Lead:
    """A Gravity Forms entry ("All Fields") as a lead."""
    lead = Lead()
    inputs = _gravity_inputs(entry, lead)
    grouped = _gravity_name_and_address(inputs, lead)
    _gravity_contact(lead, grouped)
    _gravity_source_url(entry, lead)
    lead.event_id = text(entry.get("id"))[:MAX_EVENT_ID_CHARS] or None
    return lead


def _gravity_inputs(entry: dict[str, Any], lead: Lead) -> dict[str, dict[str, Any]]:
    """Each field's inputs by sub-input ("" for a plain field); non-empty values go to fields."""
    inputs: dict[str, dict[str, Any]] = {}
    for key, value in entry.items():
        match = GRAVITY_KEY.match(str(key))
        if not match:
            continue
        # Empty inputs still tell a field's kind (a checkbox's .1 .2 .3, an address's .5).
        inputs.setdefault(match.group(1), {})[match.group(2) or ""] = value
        if value not in (None, "", []):
            lead.fields[str(key)] = value
    return inputs


def _gravity_name_and_address(inputs: dict[str, dict[str, Any]], lead: Lead) -> set[str]:
    """Fill name and country from name and address fields; return those fields' ids."""
    grouped: set[str] = set()
    for field_id, parts in inputs.items():
        subs = set(parts) - {""}
        if not subs:
            continue
        if subs & ADDRESS_ONLY_INPUTS:
            if {"5", ADDRESS_COUNTRY_INPUT} <= subs or {"1", "5"} <= subs:
                grouped.add(field_id)
                country = country_code(text(parts.get(ADDRESS_COUNTRY_INPUT)))
                if country and not lead.country:
                    lead.country = country
        elif subs & {"3", "6"} and not (lead.first_name or lead.last_name):
            grouped.add(field_id)
            lead.first_name = text(parts.get("3")) or None
            lead.last_name = text(parts.get("6")) or None
    return grouped


def _gravity_contact(lead: Lead, grouped: set[str]) -> None:
    """The first email-like and phone-like values outside name and address fields."""
    for key, value in lead.fields.items():
        if key.split(".")[0] in grouped or not isinstance(value, str):
            continue
        value = value.strip()
        if not lead.email and EMAIL.match(value):
            lead.email = value
        elif not lead.phone and _looks_like_phone(value):
            lead.phone = value


def _gravity_source_url(entry: dict[str, Any], lead: Lead) -> None:
    """The entry's source_url as a field, and its utm_ query parameters."""
    source_url = text(entry.get("source_url"))
    if not source_url:
        return
    lead.fields["source_url"] = source_url
    try:
        query = urlsplit(source_url).query
    except ValueError:  # not a URL after all ("http://["): keep it as text, no UTM
        query = ""
    for name, value in parse_qsl(query):
        if name.lower().startswith("utm_") and value:
            lead.fields.setdefault(name, value)


def contact_form_7_fields(posted: dict[str, Any]) -> dict[str, Any]:
    """Contact Form 7's posted data without its hidden bookkeeping, one-item lists unwrapped."""
    out: dict[str, Any] = {}
    for key, value in posted.items():
        if str(key).startswith("_"):
            continue
        if isinstance(value, list) and len(value) == 1:
            value = value[0]  # selects and radios post a list even for one choice
        out[str(key)] = value
    return out


def _looks_like_phone(value: str) -> bool:
    # Ten digits at least unless written with +: amounts, dates and postcodes are shorter.
    digits = sum(c.isdigit() for c in value)
    least = 8 if value.startswith("+") else 10
    return least <= digits <= 15 and bool(PHONE_CHARS.match(value))


SOURCE = WordPressSource()
