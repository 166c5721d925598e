"""Typeform: one ``form_response`` per request, signed with the webhook's optional secret.

Answers are keyed by their question's ``ref``; a ref Typeform generated itself (a UUID or ULID,
which nobody recognises) gives way to the question's title. Hidden fields, calculated values and
variables join the answers flat. ``phone_number`` and ``email`` answers, and text answers whose
question asks for a name, become the lead's typed hints. The response ``token`` is the event id,
so every re-send of one response (retries included) counts once.
"""

from __future__ import annotations

import re
from typing import Any

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody
from bridge.settings import Route
from bridge.signatures import Scheme
from bridge.sources.base import MAX_EVENT_ID_CHARS, Source
from bridge.values import put_field, text

#: ``Typeform-Signature: sha256=<base64 HMAC-SHA256 of the raw body>``; no timestamp.
SCHEME = Scheme(
    header="typeform-signature",
    prefix="sha256=",
    encoding="base64",
    hint="that the route's secret is the webhook's secret",
)

# Refs Typeform assigns when nobody set one: UUIDs (builder) and ULIDs (newer forms).
GENERATED_REF = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$|^[0-9A-HJKMNP-TV-Z]{26}$",
    re.IGNORECASE,
)
FIRST_NAME = re.compile(r"\b(first|given|fore) ?name\b")
LAST_NAME = re.compile(r"\b(last|family|sur) ?name\b")
# A "name" question that asks for something other than the respondent's own name.
NOT_A_PERSON = set(
    "company business organisation organization org brand user username file form page "
    "product city event campaign school pet project team website domain store shop middle "
    "nick nickname".split()
)
# Question types whose text answer may carry a person's name.
TEXT_FIELD_TYPES = ("short_text", "long_text", "contact_info")


class TypeformSource(Source):
    name = "typeform"
    signs = True
    # A 4xx buys ~5 pointless retries and, if it keeps happening, a disabled webhook.
    unmappable = "accept"
    schemes = (SCHEME,)

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if not isinstance(payload, dict):
            raise MalformedBody("expected a Typeform webhook object")
        event_type = payload.get("event_type", "form_response")
        if event_type != "form_response":
            return []  # form_response_partial and anything newer: not a finished submission
        response = payload.get("form_response")
        if not isinstance(response, dict):
            raise MalformedBody("form_response is missing or not an object")
        answers = response.get("answers")
        if answers is None:
            answers = []  # a response where nothing was answered
        if not isinstance(answers, list):
            raise MalformedBody("form_response.answers is not a list")

        questions = _questions(response.get("definition"))
        lead = Lead()
        repeats: dict[str, int] = {}
        for answer in answers:
            if not isinstance(answer, dict):
                continue
            field = answer.get("field") if isinstance(answer.get("field"), dict) else {}
            field_id = field.get("id")
            question = questions.get(field_id, {}) if isinstance(field_id, str) else {}
            ref = text(field.get("ref")) or text(question.get("ref"))
            title = text(question.get("title"))
            key = title if (not ref or GENERATED_REF.match(ref)) and title else ref
            key = key or text(field_id) or "answer"
            value = answer_value(answer)
            put_field(lead.fields, key, value, repeats)
            _hint(lead, answer.get("type"), field.get("type"), (ref, title), value)

        for name in ("hidden", "calculated"):
            extra = response.get(name)
            if isinstance(extra, dict):
                for key, value in extra.items():
                    put_field(lead.fields, str(key), value, repeats)
        variables = response.get("variables")
        if isinstance(variables, list):
            for var in variables:
                if isinstance(var, dict) and isinstance(var.get("key"), str):
                    kind = var.get("type")
                    # The score variable repeats ``calculated.score``: keep one.
                    lead.fields.setdefault(
                        var["key"], var.get(kind) if isinstance(kind, str) else None
                    )

        event_id = text(response.get("token")) or text(payload.get("event_id"))
        lead.event_id = event_id[:MAX_EVENT_ID_CHARS] or None
        return [lead]


def answer_value(answer: dict[str, Any]) -> Any:
    """The respondent's answer: text for a choice, a list of texts for several choices."""
    kind = answer.get("type")
    if not isinstance(kind, str):
        return None
    value = answer.get(kind)
    if kind == "choice" and isinstance(value, dict):
        return value.get("other") or value.get("label")
    if kind == "choices" and isinstance(value, dict):
        labels = value.get("labels")
        out = [v for v in labels if isinstance(v, str)] if isinstance(labels, list) else []
        if isinstance(value.get("other"), str) and value["other"]:
            out.append(value["other"])
        return out
    return value


def _questions(definition: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(definition, dict) or not isinstance(definition.get("fields"), list):
        return {}
    return {
        q["id"]: q
        for q in definition["fields"]
        if isinstance(q, dict) and isinstance(q.get("id"), str)
    }


def _hint(lead: Lead, answer_type: Any, field_type: Any, labels: tuple[str, str], value: Any):
    if not isinstance(value, str) or not value.strip():
        return
    if answer_type == "phone_number":
        lead.phone = lead.phone or value
    elif answer_type == "email":
        lead.email = lead.email or value
    elif answer_type == "text" and (field_type is None or field_type in TEXT_FIELD_TYPES):
        for label in labels:
            part = name_part(label)
            if part:
                attr = {"first": "first_name", "last": "last_name", "name": "name"}[part]
                if not getattr(lead, attr):
                    setattr(lead, attr, value)
                return


def name_part(label: str) -> str | None:
    """Whether a question (title or ref) asks for a first name, last name or full name."""
    words = " ".join(re.sub(r"[^a-z]+", " ", label.lower()).split())
    if not words:
        return None
    if FIRST_NAME.search(words):
        return "first"
    if LAST_NAME.search(words):
        return "last"
    tokens = set(words.split())
    if ("name" in tokens or "fullname" in tokens) and not tokens & NOT_A_PERSON:
        return "name"
    return None


SOURCE = TypeformSource()
