"""Calendly webhook subscriptions: each ``invitee.created`` booking becomes a lead.

Requests are signed ``Calendly-Webhook-Signature: t=<unix s>,v1=<hex HMAC-SHA256>`` over
``"<t>.<raw body>"`` with the subscription's signing key. Calendly has no phone field: the number
comes from an outbound-call location, the SMS reminder number or a custom question.
"""

from __future__ import annotations

import re
from typing import Any

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody
from bridge.settings import Route
from bridge.signatures import Scheme
from bridge.sources.base import Source
from bridge.values import clean_text, present

#: ``Calendly-Webhook-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">``.
SCHEME = Scheme(
    header="calendly-webhook-signature",
    signed="{timestamp}.{body}",
    separator=",",
    prefix="v1=",
    timestamp_prefix="t=",
    timestamp_unit="s",
    # Calendly's guidance: reject a signature timestamp older than three minutes.
    tolerance=180,
    hint="that the route's secret is the subscription's signing key",
)
LEAD_EVENT = "invitee.created"
# Invitee keys kept as fields, in the order a person would read them.
INVITEE_KEYS = (
    "name",
    "first_name",
    "last_name",
    "email",
    "timezone",
    "status",
    "rescheduled",
    "text_reminder_number",
    "cancel_url",
    "reschedule_url",
)
# Scheduled-event keys kept as fields, under the names they get here.
EVENT_KEYS = {"name": "event", "start_time": "start_time", "end_time": "end_time"}
# A custom question whose text contains one of these asks for a phone number.
PHONE_QUESTION = re.compile(r"phone|mobile|whats\s*app|\bcell|\btel\b|contact\s*(no|num)", re.I)


class CalendlySource(Source):
    name = "calendly"
    signs = True
    # A booking without a phone number is not worth a retry: Calendly would repeat it for 24 h
    # and then disable the whole subscription.
    unmappable = "accept"
    schemes = (SCHEME,)

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if not isinstance(payload, dict):
            raise MalformedBody("expected a JSON object with 'event' and 'payload'")
        event = payload.get("event")
        if not isinstance(event, str):
            raise MalformedBody("'event' is missing: not a Calendly webhook")
        if event != LEAD_EVENT:
            return []  # cancellations, no-shows, routing forms: not new leads
        invitee = payload.get("payload")
        if not isinstance(invitee, dict):
            raise MalformedBody("'payload' must be the invitee object")
        return [invitee_lead(invitee)]


def invitee_lead(invitee: dict[str, Any]) -> Lead:
    fields: dict[str, Any] = {}
    for key in INVITEE_KEYS:
        value = invitee.get(key)
        if present(value):
            fields[key] = value
    old = invitee.get("old_invitee")
    if isinstance(old, str) and old:
        fields["rescheduled_from"] = old

    scheduled = invitee.get("scheduled_event")
    scheduled = scheduled if isinstance(scheduled, dict) else {}
    for key, name in EVENT_KEYS.items():
        value = scheduled.get(key)
        if isinstance(value, str) and value:
            fields[name] = value
    location = scheduled.get("location")
    location = location if isinstance(location, dict) else {}
    location_type = location.get("type")
    if isinstance(location_type, str) and location_type:
        fields["location_type"] = location_type
    call_number = None
    if location_type == "outbound_call" and isinstance(location.get("location"), str):
        # The host calls the invitee: the location *is* the invitee's number.
        call_number = location["location"].strip() or None
        if call_number:
            fields["call_number"] = call_number

    question_phone = None
    answers = invitee.get("questions_and_answers")
    for item in answers if isinstance(answers, list) else []:
        if not isinstance(item, dict):
            continue
        question, answer = item.get("question"), item.get("answer")
        if not isinstance(question, str) or not question.strip() or not present(answer):
            continue
        question = question.strip()
        # The question text is the key the user sees; never let it overwrite a built-in field.
        key = question if question not in fields else f"question: {question}"
        fields[key] = answer
        if (
            question_phone is None
            and isinstance(answer, str)
            and PHONE_QUESTION.search(question)
            and sum(c.isdigit() for c in answer) >= 6
        ):
            question_phone = answer.strip()

    tracking = invitee.get("tracking")
    for key, value in tracking.items() if isinstance(tracking, dict) else ():
        if isinstance(key, str) and present(value) and key not in fields:
            fields[key] = value  # utm_source, utm_campaign, ..., salesforce_uuid

    reminder = invitee.get("text_reminder_number")
    reminder = reminder.strip() if isinstance(reminder, str) and reminder.strip() else None
    uri = invitee.get("uri")
    return Lead(
        fields=fields,
        event_id=uri if isinstance(uri, str) and uri else None,
        name=clean_text(invitee.get("name"), (str,)),
        first_name=clean_text(invitee.get("first_name"), (str,)),
        last_name=clean_text(invitee.get("last_name"), (str,)),
        phone=call_number or reminder or question_phone,
        email=clean_text(invitee.get("email"), (str,)),
    )


SOURCE = CalendlySource()
